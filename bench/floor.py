"""``python -m bench.floor``: the same transaction through psycopg2 + gevent alone — no Locust, no toolclash.

A reference between pgbench and Locust: N greenlets in one process, each with its own
connection (psycogreen's wait callback, as Locust agents use), run the ``pessimistic`` credit
deduction (``SELECT … FOR UPDATE``, balance check, absolute ``UPDATE``, ledger ``INSERT``,
``COMMIT``) in a loop, in the same two round trips the agents' pipelined transactions take
(``BEGIN; SELECT … FOR UPDATE``, then ``UPDATE; INSERT; COMMIT``). The gap between this and
pgbench is the price of the Python driver under gevent (and of the round trips saved); the gap
between this and Locust is what Locust and toolclash add per call.

``--processes N`` runs N such processes side by side, the clients shared out between them (what Locust's
``--processes N`` does, without its master): the floor for N processes of Python on this machine.

Prints one JSON line: ``{"tps", "ok_in_window", "window_start", "window_end", ...}``.
The database URL comes from ``DATABASE_URL``.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey patching, as gevent asks
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import psycopg2  # noqa: E402
from psycogreen.gevent import patch_psycopg  # noqa: E402

_SELECT = "SELECT balance, version FROM toolclash.credit_accounts WHERE id = %s FOR UPDATE"
_UPDATE = "UPDATE toolclash.credit_accounts SET balance = %s, version = version + 1 WHERE id = %s"
_LEDGER = ("INSERT INTO toolclash.credit_ledger (op_id, account_id, amount, balance_before, balance_after, agent) "
           "VALUES (%s, %s, %s, %s, %s, %s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--ramp", type=float, default=2.0)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=1, help="processes side by side (default 1)")
    parser.add_argument("--first-client", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes > 1:
        return side_by_side(args)
    patch_psycopg()
    url = os.environ["DATABASE_URL"]
    done: list[float] = []
    stopping = False

    def agent(k: int) -> None:
        conn: Any = psycopg2.connect(url, application_name=f"bench:floor:{k}")
        conn.autocommit = True  # BEGIN and COMMIT are sent with the statements, as the agents do
        rng = random.Random(k)
        n = 0
        try:
            while not stopping:
                account, amount = rng.randint(1, args.accounts), rng.randint(1, 10)
                n += 1
                with conn.cursor() as cur:
                    cur.execute(b"BEGIN; " + cur.mogrify(_SELECT, (account,)))
                    before = int(cur.fetchone()[0])
                    if before < amount:
                        cur.execute("ROLLBACK")
                        continue
                    cur.execute(b"; ".join((cur.mogrify(_UPDATE, (before - amount, account)),
                                            cur.mogrify(_LEDGER, (f"floor-{k}-{n}", account, amount, before,
                                                                  before - amount, "floor")), b"COMMIT")))
                done.append(time.time())
        finally:
            conn.close()

    started = time.time()
    greenlets = [gevent.spawn(agent, k) for k in range(args.first_client, args.first_client + args.clients)]
    try:
        gevent.sleep(args.duration)
    finally:
        stopping = True
        gevent.joinall(greenlets, timeout=10)
    failed = [g for g in greenlets if g.exception is not None]
    if failed:
        print(f"python -m bench.floor: {len(failed)} agent(s) failed: {failed[0].exception!r}", file=sys.stderr)
        return 1
    start, end = started + args.ramp, started + args.duration
    in_window = sum(1 for t in done if start <= t < end)
    print(json.dumps({"tps": in_window / (end - start), "ok_in_window": in_window, "ok_total": len(done),
                      "window_start": start, "window_end": end, "clients": args.clients}))
    return 0


def side_by_side(args: argparse.Namespace) -> int:
    """Start ``--processes`` floors with the clients shared out, wait for them, sum their commits in the window."""
    n = args.processes
    shares = [args.clients // n + (1 if i < args.clients % n else 0) for i in range(n)]
    children = []
    first = 0
    for share in shares:
        argv = [sys.executable, "-m", "bench.floor", "--clients", str(share), "--duration", str(args.duration),
                "--ramp", str(args.ramp), "--accounts", str(args.accounts), "--first-client", str(first)]
        children.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
        first += share
    got: list[dict[str, Any] | None] = []
    for child in children:
        lines = child.communicate()[0].split("\n")
        last = [ln for ln in lines if ln.strip()][-1:]
        got.append(json.loads(last[0]) if child.returncode == 0 and last else None)
    outs = [out for out in got if out is not None]
    if len(outs) < n:
        print(f"python -m bench.floor: {n - len(outs)} of {n} processes failed", file=sys.stderr)
        return 1
    start, end = max(o["window_start"] for o in outs), min(o["window_end"] for o in outs)
    print(json.dumps({"tps": sum(o["tps"] for o in outs), "ok_in_window": sum(o["ok_in_window"] for o in outs),
                      "ok_total": sum(o["ok_total"] for o in outs), "window_start": start, "window_end": end,
                      "clients": args.clients, "processes": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
