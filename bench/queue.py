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

The schema is reset by the scenario's own ``reset`` hook, as a run does. ``python -m bench.queue`` runs this
phase alone; ``python -m bench`` runs it after the others (``--skip-queue`` leaves it out). Nothing happens at
import.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.phase import ROOT, Context, Phase, Row, private_stack, row, run_alone
from toolclash import db
from toolclash.backend import Backend
from toolclash.history import Op, make_op
from toolclash.scenario import get as scenario

TARGET_ROUND_TRIPS = 3.0
SUBMITTERS = (100, 500)
CONSUMERS = 10
UNLIMITED = {"queue_capacity": 10**9, "queue_rate_per_agent": 10**9, "queue_rate_global": 10**9,
             "queue_work_ms": 0.0, "queue_stall_rate": 0.0, "queue_lease_ms": 30_000.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue-seconds", type=float, default=8.0, metavar="S",
                        help="seconds of each queue load step (default 8)")
    parser.add_argument("--queue-jobs", type=int, default=1_000_000, metavar="N",
                        help="jobs in the synthetic history the queue checker is timed on (default 1,000,000)")


def _run_child(mode: str, clients: int, seconds: float, urls: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, **urls}
    proc = subprocess.run([sys.executable, "-m", "bench.queue_child", mode, str(clients), str(seconds)],
                          env=env, capture_output=True, text=True, timeout=seconds + 180, check=False,
                          cwd=ROOT)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"queue bench child ({mode}, {clients}) failed: {tail}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------------------ checker


def synthetic(jobs: int, agents: int = 1000) -> tuple[list[Op], dict[str, Any]]:
    """A valid history of *jobs* admitted, claimed and executed jobs, with its final state."""
    t0 = 1_700_000_000_000_000
    ops: list[Op] = []
    records: dict[str, list[Any]] = {}
    effects: list[list[Any]] = []
    for n in range(jobs):
        agent = f"p1-a{n % agents}"
        admitted = t0 + n * 300  # one job every 300 µs overall: each agent every 300 ms
        job = f"p1-{n + 1}"
        prio = (0, 1, 1, 2)[n % 4]
        ts = admitted / 1e6
        ops.append(make_op(run_id="synthetic", op_id=job, process="p1", agent=agent, tool="submit",
                           strategy="lua", args={"priority": prio}, invoke_ts=ts, complete_ts=ts + 0.001,
                           outcome="ok", attempts=1,
                           result={"job": job, "admitted_us": admitted, "occupancy": 1}))
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


def _reset(urls: dict[str, str]) -> None:
    """The queue scenario's own ``reset`` hook, with limits out of reach (every call a full admission)."""
    queue = scenario("queue")
    ctx = queue.context(Backend(urls, "bench-queue"), queue.options_from(UNLIMITED))
    conn = ctx.backend.pg("bench-admin")
    try:
        queue.reset(ctx, conn)
    finally:
        db.close_quietly(conn)


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """Admissions, consumers, round trips on a private PostgreSQL + Redis; then the checker on synthetic jobs."""
    say = ctx.say
    say.phase(f"queue: admissions/s at {' and '.join(map(str, SUBMITTERS))} submitters, {CONSUMERS} consumers, "
              f"checker on {args.queue_jobs:,} jobs")
    out = ctx.keep({"errors": []})
    seconds = float(args.queue_seconds)
    with private_stack(("postgres", "redis"), say, "PostgreSQL and Redis") as (urls, _stack):
        try:
            for n in reversed(SUBMITTERS):  # 500 first, so that the 100 step leaves the backlog the consumers eat
                _reset(urls)
                say(f"queue: {n} submitters, {seconds:g} s")
                res = _run_child("submit", n, seconds, urls)
                ok = res["outcomes"].get("ok", 0)
                res["admissions_per_s"] = round(ok / res["seconds"], 1)
                res["round_trips_per_admission"] = round(res["round_trips"] / ok, 3) if ok else None
                out[f"submit_{n}"] = res
                say(f"  {res['admissions_per_s']:,} admissions/s, {res['round_trips_per_admission']} round trips "
                    f"each, outcomes {res['outcomes']}")
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
    say(f"queue: checker on a synthetic valid history of {args.queue_jobs:,} jobs")
    out["checker"] = ck = checker(int(args.queue_jobs))
    say(f"  check_all {ck['check_all_s']} s ({ck['jobs_per_s']:,} jobs/s), figures {ck['figures_s']} s"
        + (f"; INVALID: {ck['invalid']}" if ck["invalid"] else ""))
    if ck["invalid"]:
        out["errors"].append(f"the checker rejected a valid synthetic history: {ck['invalid']}")
    return out


def rows(out: dict[str, Any]) -> list[Row]:
    table: list[Row] = []
    for n in SUBMITTERS:
        res = out.get(f"submit_{n}") or {}
        table.append(row(f"queue admissions/s, {n} submitters", f"{res.get('admissions_per_s', '-')}"))
    con = out.get("consume") or {}
    table.append(row(f"queue consumer throughput, {CONSUMERS} consumers (jobs/s)",
                     f"{con.get('executions_per_s', '-')}"))
    table.append(row("queue Redis round trips per job (submit+claim+ack)", f"{out.get('round_trips_per_job', '-')}",
                     f"<= {TARGET_ROUND_TRIPS:g}", out.get("round_trips_target_met")))
    ck = out.get("checker") or {}
    table.append(row(f"queue checker time, {ck.get('jobs', 0):,} jobs (s)", f"{ck.get('check_all_s', '-')}"))
    return table


PHASE = Phase(name="queue", help="skip the queue phase (bench/queue.py)", run=run, rows=rows,
              add_arguments=add_arguments)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_alone(PHASE, parser.parse_args(argv), "queue")


if __name__ == "__main__":
    sys.exit(main())
