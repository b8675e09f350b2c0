"""``python -m bench.queue_child MODE CLIENTS SECONDS``: the queue phase's load, in its own gevent process.

*MODE* ``submit``: CLIENTS submitters (one Redis connection each, as under Locust) call the ``submit`` tool in a
loop; ``consume``: CLIENTS consumers (one Redis and one PostgreSQL connection each) claim, write the effect and
ack. Redis commands are counted in redis-py's ``execute_command``. The URLs come from ``DATABASE_URL`` and
``REDIS_URL``; prints one JSON line of counts. Started by :mod:`bench.queue`.
"""

from gevent import monkey

monkey.patch_all()

import contextlib  # noqa: E402 - after monkey patching, as gevent asks
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from bench.queue import UNLIMITED  # noqa: E402
from toolclash import db  # noqa: E402
from toolclash.backend import Backend  # noqa: E402
from toolclash.retry import RetryPolicy  # noqa: E402
from toolclash.scenario import get as scenario  # noqa: E402
from toolclash.tools import Call  # noqa: E402
from toolclash.tools import queue as q  # noqa: E402


def run(mode: str, clients: int, seconds: float) -> dict[str, Any]:
    """gevent agents driving the tools for *seconds*; returns counts as a dict."""
    db.patch_gevent()
    opts = scenario("queue").options_from(UNLIMITED)
    backend = Backend({k: os.environ[k] for k in ("DATABASE_URL", "REDIS_URL")}, "bench")
    sent = [0]
    outcomes: dict[str, int] = {}
    go = gevent.event.Event()
    stop_at = [0.0]
    policy = RetryPolicy()
    resources: list[Any] = []

    def client() -> Any:
        c = q.redis_client(backend.url("REDIS_URL"))
        original = c.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            sent[0] += 1
            return original(*args, **kwargs)

        c.execute_command = counted
        resources.append(c)
        return c

    def submitter(i: int) -> None:
        tool = q.QueueTool(client(), agent=f"bench-s{i}", opts=opts, rng=random.Random(i))
        rng = random.Random(i)
        n = 0
        go.wait()
        while time.monotonic() < stop_at[0]:
            n += 1
            call = Call(op_id=f"b{i}-{n}", policy=policy, rng=rng)
            tool.submit(call, rng.choice((0, 1, 1, 2)))
            key = f"fail:{call.reason}" if call.outcome == "fail" else str(call.outcome)
            outcomes[key] = outcomes.get(key, 0) + 1

    def consumer(i: int) -> None:
        conn = backend.pg(f"bench-c{i}")
        resources.append(conn)
        tool = q.QueueTool(client(), conn, agent=f"bench-c{i}", opts=opts, rng=random.Random(i))
        n = 0
        go.wait()
        while time.monotonic() < stop_at[0]:
            job = tool.claim()
            if job is None:
                outcomes["empty"] = outcomes.get("empty", 0) + 1
                return
            n += 1
            call = tool.execute(Call(op_id=f"c{i}-{n}", policy=policy, rng=random.Random()), job, stall=False)
            key = "executed" if call.outcome == "ok" and call.result.get("ack") == "ok" else f"other:{call.outcome}"
            outcomes[key] = outcomes.get(key, 0) + 1

    worker = submitter if mode == "submit" else consumer
    greenlets = [gevent.spawn(worker, i) for i in range(clients)]
    gevent.sleep(0)
    deadline = time.monotonic() + 60
    while len(resources) < clients * (1 if mode == "submit" else 2) and time.monotonic() < deadline:
        gevent.sleep(0.05)  # every connection open before the clock starts
    before = sent[0]
    started = time.monotonic()
    stop_at[0] = started + seconds
    go.set()
    gevent.joinall(greenlets)
    elapsed = time.monotonic() - started
    for r in resources:
        with contextlib.suppress(Exception):
            r.close()
    return {"mode": mode, "clients": clients, "seconds": round(elapsed, 3), "round_trips": sent[0] - before,
            "outcomes": outcomes}


def main(argv: list[str] | None = None) -> int:
    mode, clients, seconds = list(sys.argv[1:] if argv is None else argv)
    print(json.dumps(run(mode, int(clients), float(seconds))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
