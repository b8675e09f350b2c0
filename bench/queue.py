"""Queue phase of ``make bench``: admissions/s, consumer throughput, Redis round trips per job, checker speed.

On a private PostgreSQL + Redis (``toolclash.stack``, non-durable defaults):

1. **Admissions/s** at 100 and at 500 submitters: a child process (gevent, one Redis connection per
   submitter, as under Locust) calls the ``submit`` tool in a loop for ``--queue-seconds``; capacity and
   rate limits are set out of reach so every call is a full admission (Lua script, one round trip).
2. **Consumer throughput**: 10 consumers (gevent, one Redis and one PostgreSQL connection each, work time 0)
   claim, write the effect and ack the jobs the 100-submitter step left, for ``--queue-seconds``.
3. **Redis round trips per job**: commands each client actually sent (counted in redis-py's
   ``execute_command``, so a NOSCRIPT reload would count) per admitted job plus per executed job;
   target ≤ 3 (submit + claim + ack).
4. **Checker time** on a synthetic valid history of ``--queue-jobs`` jobs (1,000,000 by default):
   ``checks.queue.check_all`` and ``figures`` on data in memory.

``python -m bench.queue`` runs this phase alone; ``python -m bench`` runs it after the others
(``--skip-queue`` leaves it out). Nothing happens at import.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGET_ROUND_TRIPS = 3.0
SUBMITTERS = (100, 500)
CONSUMERS = 10
UNLIMITED = {"queue_capacity": 10**9, "queue_rate_per_agent": 10**9, "queue_rate_global": 10**9,
             "queue_work_ms": 0.0, "queue_stall_rate": 0.0, "queue_lease_ms": 30_000.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-queue", action="store_true", help="skip the queue phase (bench/queue.py)")
    parser.add_argument("--queue-seconds", type=float, default=8.0, metavar="S",
                        help="seconds of each queue load step (default 8)")
    parser.add_argument("--queue-jobs", type=int, default=1_000_000, metavar="N",
                        help="jobs in the synthetic history the queue checker is timed on (default 1,000,000)")


# ------------------------------------------------------------------------------------------ child (gevent)


def _child(mode: str, clients: int, seconds: float) -> dict[str, Any]:
    """Runs in a child process: gevent-patched agents driving the tools; returns counts as a dict."""
    from gevent import monkey

    monkey.patch_all()
    import random

    import gevent
    import gevent.event

    from toolclash import db
    from toolclash.backend import Backend
    from toolclash.retry import RetryPolicy
    from toolclash.settings import Settings
    from toolclash.tools import Call
    from toolclash.tools import queue as q

    db.patch_gevent()
    opts = Settings.from_mapping(UNLIMITED, ["queue"]).options_of("queue")
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


def _run_child(mode: str, clients: int, seconds: float, urls: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, **urls}
    proc = subprocess.run([sys.executable, "-m", "bench.queue", "--child", mode, str(clients), str(seconds)],
                          env=env, capture_output=True, text=True, timeout=seconds + 180, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"queue bench child ({mode}, {clients}) failed: {tail}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------------------ checker


def synthetic(jobs: int, agents: int = 1000) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A valid history of *jobs* admitted, claimed and executed jobs, with its final state."""
    t0 = 1_700_000_000_000_000
    ops: list[dict[str, Any]] = []
    records: dict[str, list[Any]] = {}
    effects: list[list[Any]] = []
    for n in range(jobs):
        agent = f"p1-a{n % agents}"
        admitted = t0 + n * 300  # one job every 300 µs overall: each agent every 300 ms
        job = f"p1-{n + 1}"
        prio = (0, 1, 1, 2)[n % 4]
        ts = admitted / 1e6
        ops.append({"op_id": job, "tool": "submit", "agent": agent, "args": {"priority": prio}, "outcome": "ok",
                    "reason": None, "invoke_ts": ts, "complete_ts": ts + 0.001,
                    "result": {"job": job, "admitted_us": admitted, "occupancy": 1}})
        records[job] = [agent, prio, admitted, admitted + 10, admitted + 200, 1, "d"]
        effects.append([n + 1, job, job, 1, prio, "c1"])
    config = {"queue_capacity": 50, "queue_rate_per_agent": 4, "queue_rate_global": 10**6,
              "queue_rate_window_s": 1.0, "queue_inversion_tolerance_ms": 100.0}
    final = {"meta": {"marker": "m", "redis_run_id": "r", "config": config}, "effects": effects,
             "redis": {"marker": "m", "server_run_id": "r", "hwm": 1, "ready": 0, "inflight": 0, "jobs": records,
                       "ready_jobs": [], "inflight_jobs": [], "drain": None}}
    return ops, final


def checker(jobs: int) -> dict[str, Any]:
    from checks import gc_paused
    from checks import queue as cq

    with gc_paused():
        t = time.perf_counter()
        ops, final = synthetic(jobs)
        built = time.perf_counter() - t
        t = time.perf_counter()
        results = cq.check_all(ops, final)
        check_s = time.perf_counter() - t
        t = time.perf_counter()
        cq.figures(ops, final)
        figures_s = time.perf_counter() - t
    invalid = [r.name for r in results if r.valid is not True]
    return {"jobs": jobs, "build_s": round(built, 2), "check_all_s": round(check_s, 2),
            "figures_s": round(figures_s, 2), "jobs_per_s": round(jobs / check_s), "invalid": invalid}


# ------------------------------------------------------------------------------------------ phase


def queue_phase(args: argparse.Namespace, report: dict[str, Any], say: Any) -> None:
    """Run the queue phase unless ``--skip-queue``; figures go to ``report["queue"]`` and are printed."""
    if getattr(args, "skip_queue", False):
        return
    from toolclash.backend import Backend
    from toolclash.settings import Settings
    from toolclash.stack.core import Stack
    from toolclash.stack.process import StackError
    from toolclash.tools import queue as q

    out: dict[str, Any] = {"errors": []}
    report["queue"] = out
    seconds = float(args.queue_seconds)
    stack = Stack(services=("postgres", "redis"))
    say("queue: starting a private PostgreSQL and Redis")
    try:
        try:
            urls = stack.up(timeout=120)
        except StackError as exc:
            out["errors"].append(str(exc))
            say(f"  FAILED: {exc}")
            return
        backend = Backend(urls, "bench-queue")
        opts = Settings.from_mapping(UNLIMITED, ["queue"]).options_of("queue")

        def reset() -> None:
            conn = backend.pg("bench-admin")
            try:
                q.reset(conn, backend=backend, **vars(opts))
            finally:
                conn.close()

        for n in reversed(SUBMITTERS):  # 500 first, so that the 100 step leaves the backlog the consumers eat
            reset()
            say(f"queue: {n} submitters, {seconds:g} s")
            res = _run_child("submit", n, seconds, urls)
            ok = res["outcomes"].get("ok", 0)
            res["admissions_per_s"] = round(ok / res["seconds"], 1)
            res["round_trips_per_admission"] = round(res["round_trips"] / ok, 3) if ok else None
            out[f"submit_{n}"] = res
            say(f"  {res['admissions_per_s']:,} admissions/s, {res['round_trips_per_admission']} round trips each, "
                f"outcomes {res['outcomes']}")
        say(f"queue: {CONSUMERS} consumers on the backlog, {seconds:g} s")
        res = _run_child("consume", CONSUMERS, seconds, urls)
        done = res["outcomes"].get("executed", 0)
        res["executions_per_s"] = round(done / res["seconds"], 1)
        res["round_trips_per_execution"] = round(res["round_trips"] / done, 3) if done else None
        out["consume"] = res
        say(f"  {res['executions_per_s']:,} jobs/s executed (claim + effect + ack), "
            f"{res['round_trips_per_execution']} round trips each")
        per_admission = out["submit_100"]["round_trips_per_admission"]
        per_execution = res["round_trips_per_execution"]
        if per_admission is not None and per_execution is not None:
            out["round_trips_per_job"] = round(per_admission + per_execution, 3)
            out["round_trips_target_met"] = out["round_trips_per_job"] <= TARGET_ROUND_TRIPS
    except RuntimeError as exc:
        out["errors"].append(str(exc))
        say(f"  FAILED: {exc}")
    finally:
        with contextlib.suppress(StackError):
            stack.down()
    say(f"queue: checker on a synthetic valid history of {args.queue_jobs:,} jobs")
    out["checker"] = ck = checker(int(args.queue_jobs))
    say(f"  check_all {ck['check_all_s']} s ({ck['jobs_per_s']:,} jobs/s), figures {ck['figures_s']} s"
        + (f"; INVALID: {ck['invalid']}" if ck["invalid"] else ""))
    if ck["invalid"]:
        out["errors"].append(f"the checker rejected a valid synthetic history: {ck['invalid']}")
    print("\n" + render(out), flush=True)
    if out["errors"]:  # python -m bench turns this into exit code 1 with the report written
        raise RuntimeError("queue phase: " + "; ".join(out["errors"]))


def render(out: dict[str, Any]) -> str:
    rows = [("figure", "value", "target")]
    for n in SUBMITTERS:
        res = out.get(f"submit_{n}") or {}
        rows.append((f"queue admissions/s, {n} submitters", f"{res.get('admissions_per_s', '-')}", ""))
    con = out.get("consume") or {}
    rows.append((f"queue consumer throughput, {CONSUMERS} consumers (jobs/s)", f"{con.get('executions_per_s', '-')}",
                 ""))
    rows.append(("queue Redis round trips per job (submit+claim+ack)", f"{out.get('round_trips_per_job', '-')}",
                 f"<= {TARGET_ROUND_TRIPS:g}"))
    ck = out.get("checker") or {}
    rows.append((f"queue checker time, {ck.get('jobs', 0):,} jobs (s)", f"{ck.get('check_all_s', '-')}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}".rstrip() for a, b, c in rows]
    lines.insert(1, "-" * (sum(widths) + 4))
    lines += [f"ERROR: {e}" for e in out.get("errors", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(_child(argv[1], int(argv[2]), float(argv[3]))), flush=True)
        return 0
    from bench import Progress
    from toolclash.run import write_json

    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    with contextlib.suppress(RuntimeError):  # the errors are in the report and decide the exit code
        queue_phase(args, report, Progress(phases=1))
    path = Path("reports") / f"bench-queue-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(path, report)
    print(f"report: {path}", flush=True)
    return 1 if report.get("queue", {}).get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
