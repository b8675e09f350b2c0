"""Bench phase of the crossservice slice: what atomicity across two databases costs, and recovery speed.

* ``grant_tool_access`` ops/s with ``--xs-clients`` agents (threads, one tool each) for 2PC, saga, and a
  single-database transaction doing the same writes (debit, outbox, grant in main) — the baseline;
  the outbox relay runs alongside, and the analytics lag (outbox → ClickHouse, P95 and max) is read
  from the outbox afterwards;
* seconds for :func:`toolclash.recover.recover` to resolve 100 in-doubt transactions left by
  coordinators crashed at every point between the first PREPARE and the last COMMIT PREPARED.

Private servers (main and auth PostgreSQL, ClickHouse) are started for the phase and stopped after. The
schema is reset and the outbox read by the scenario's own ``reset`` and ``snapshot`` hooks, as a run does.
``python -m bench.crossservice [--duration S] [--xs-clients N]`` runs this phase alone.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from typing import Any

from bench.phase import Context, Phase, Row, num, positive_int, private_stack, row, run_alone
from checks.gates import percentile
from toolclash import db
from toolclash.backend import Backend
from toolclash.recover import prepared, recover
from toolclash.retry import RetryPolicy
from toolclash.scenario import get as scenario
from toolclash.tools import Call
from toolclash.tools.crossservice import CRASH_POINTS, CrossServiceTool, Relay

ACCOUNTS = 100
IN_DOUBT = 100
MODES = ("single", "2pc", "saga")


def _hook(backend: Backend, hook: str, **options: Any) -> Any:
    """Call the crossservice scenario's ``reset`` or ``snapshot`` hook with *options* (the rest at their defaults)."""
    xs = scenario("crossservice")
    ctx = xs.context(backend, xs.options_from(options))
    conn = backend.pg("admin")
    try:
        return xs.reset(ctx, conn) if hook == "reset" else xs.snapshot(ctx, conn)
    finally:
        db.close_quietly(conn)


def _call(op_id: str) -> Call:
    return Call(op_id=op_id, policy=RetryPolicy(max_tries=10, base_s=0.002, cap_s=0.2, deadline_s=5.0),
                rng=random.Random())


def throughput(backend: Backend, mode: str, clients: int, duration: float) -> dict[str, Any]:
    """ok ops/s of *mode* (2pc, saga or single) with *clients* threads, the relay running alongside."""
    _hook(backend, "reset", xs_agents=ACCOUNTS, xs_initial_credits=10**12)
    relay = Relay(backend, interval_s=0.1, min_age_s=5.0).start()
    ok = [0] * clients
    outcomes: dict[str, int] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def agent(i: int) -> None:
        rng = random.Random(i)
        tool = CrossServiceTool(lambda var: backend.pg(f"bench-{i}", var), mode="saga" if mode == "single" else mode,
                                rng=rng)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                call = _call(f"{mode}-{i}-{n}")
                who = f"agent-{rng.randint(1, ACCOUNTS)}"
                if mode == "single":
                    tool.single_db(call, who, "browser", rng.randint(1, 10))
                else:
                    tool.grant_tool_access(call, who, "browser", rng.randint(1, 10))
                with lock:
                    outcomes[str(call.outcome)] = outcomes.get(str(call.outcome), 0) + 1
                if call.outcome == "ok":
                    ok[i] += 1
        finally:
            tool.close()

    threads = [threading.Thread(target=agent, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - started
    drained = relay.drain(30.0)
    relay.close()
    outbox = _hook(backend, "snapshot", xs_agents=ACCOUNTS)["outbox"]
    lags = sorted((r["relayed_at"] - r["created_at"]) * 1000.0 for r in outbox if r["relayed_at"] is not None)
    return {"mode": mode, "clients": clients, "seconds": round(elapsed, 2), "ok": sum(ok),
            "ops_per_s": round(sum(ok) / elapsed, 1), "outcomes": outcomes, "relay_drained": drained,
            "analytics_lag_p95_ms": round(percentile(lags, 95), 1) if lags else None,
            "analytics_lag_max_ms": round(lags[-1], 1) if lags else None}


class _Crash(random.Random):
    def __init__(self, point: str) -> None:
        super().__init__(0)
        self.point = point

    def random(self) -> float:
        return 0.0

    def choice(self, seq: Any) -> Any:
        return self.point


def recovery_time(backend: Backend, n: int = IN_DOUBT) -> dict[str, Any]:
    """Seconds for recovery to resolve *n* operations left in doubt by crashed coordinators."""
    _hook(backend, "reset", xs_agents=n, xs_initial_credits=1000)
    admin = backend.pg("admin")
    auth = backend.pg("admin", "AUTH_DATABASE_URL")
    try:
        for i in range(n):
            tool = CrossServiceTool(lambda var: backend.pg("bench-crash", var), mode="2pc",
                                    inject="coordinator_crash", inject_rate=1.0,
                                    rng=_Crash(CRASH_POINTS[i % len(CRASH_POINTS)]))
            tool.grant_tool_access(_call(f"crash-{i}"), f"agent-{i + 1}", "browser", 1)
            tool.close()
        before = len(prepared(admin)) + len(prepared(auth))
        started = time.perf_counter()
        counts = recover(admin, auth, who="bench")
        seconds = time.perf_counter() - started
        after = len(prepared(admin)) + len(prepared(auth))
    finally:
        admin.close()
        auth.close()
    return {"in_doubt_ops": n, "prepared_branches_before": before, "prepared_after": after,
            "seconds": round(seconds, 3), "counts": counts}


def run_all(duration: float, clients: int, urls: dict[str, str], say: Any = print) -> dict[str, Any]:
    out: dict[str, Any] = {"duration_s": duration, "clients": clients, "accounts": ACCOUNTS, "modes": {}}
    backend = Backend(urls, "bench-xs")
    for mode in MODES:
        res = throughput(backend, mode, clients, duration)
        out["modes"][mode] = res
        say(f"  {mode}: {res['ops_per_s']:,.1f} ok ops/s ({res['outcomes']}), analytics lag p95 "
            f"{res['analytics_lag_p95_ms']} ms, max {res['analytics_lag_max_ms']} ms")
    base = out["modes"]["single"]["ops_per_s"] or float("nan")
    out["ratios"] = {f"{m}_vs_single": round(out["modes"][m]["ops_per_s"] / base, 3) for m in ("2pc", "saga")}
    out["recovery"] = rec = recovery_time(backend)
    say(f"  recovery of {rec['in_doubt_ops']} in-doubt ops ({rec['prepared_branches_before']} prepared "
        f"branches): {rec['seconds']} s, left {rec['prepared_after']}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--xs-clients", type=positive_int, default=25, metavar="N",
                        help="agents of the crossservice phase (default 25)")


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    ctx.say.phase(f"crossservice: 2PC vs saga vs single-database, {args.xs_clients} agents, {args.duration} s each; "
                  f"recovery of {IN_DOUBT} in-doubt operations")
    with private_stack(("postgres", "auth_postgres", "clickhouse"), ctx.say,
                       "main + auth PostgreSQL and ClickHouse") as (urls, _stack):
        try:
            return run_all(float(args.duration), args.xs_clients, urls, ctx.say)
        except Exception as exc:  # noqa: BLE001 - the report says what broke; the next phase runs
            return {"error": f"{type(exc).__name__}: {exc}"}


def rows(out: dict[str, Any]) -> list[Row]:
    if "error" in out:
        return [row("crossservice", "FAILED")]
    table: list[Row] = []
    for mode in MODES:
        res = out["modes"][mode]
        table.append(row(f"crossservice {mode} ok ops/s ({out['clients']} agents)", num(res["ops_per_s"])))
        table.append(row("  analytics lag p95 / max ms",
                         f"{num(res['analytics_lag_p95_ms'])} / {num(res['analytics_lag_max_ms'])}"))
    for key, ratio in out["ratios"].items():
        table.append(row(f"  ratio {key.replace('_vs_', ' to ')}", f"{ratio:.2f}x"))
    rec = out["recovery"]
    table.append(row(f"crossservice recovery of {rec['in_doubt_ops']} in-doubt ops (s)", f"{rec['seconds']:.3f}"))
    table.append(row("  prepared branches before / left after", f"{rec['prepared_branches_before']} / "
                     f"{rec['prepared_after']}"))
    return table


PHASE = Phase(name="crossservice", help="skip the crossservice phase (2PC vs saga vs one database; recovery time)",
              run=run, rows=rows, add_arguments=add_arguments)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crossservice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each mode's load (default 10)")
    add_arguments(parser)
    return run_alone(PHASE, parser.parse_args(argv), "crossservice")


if __name__ == "__main__":
    sys.exit(main())
