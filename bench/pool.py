"""Pool phase: 1,000 agents through PgBouncer in transaction mode, with zero connection errors.

One private PostgreSQL and PgBouncer (``toolclash.stack``: ``default_pool_size = 20``); the pool
locustfile with ``--pool pgbouncer --pgbouncer-mode transaction``, ``--agents`` agents (each keeps
one client connection), normal think time, and a small aggregate (``--scan-rows 100``) so that the
figure is PgBouncer's queueing rather than the server's CPU. Figures, from the run's history:

* ``ok_per_s`` — ok calls whose complete_ts lies after the spawn ramp, per second of that window;
* ``wait_p95_ms`` / ``wait_p50_ms`` — the agents' acquire wait (the transaction's first statement,
  which waits in PgBouncer for a server connection);
* ``connection_errors`` — calls that failed to connect, lost their connection or timed out in the
  queue (target 0), and ``clients_max`` — the most client connections PgBouncer held at once.

    python -m bench.pool --duration 20          # alone; `python -m bench` runs it as its last phase
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.children import clean_env, run_child
from bench.phase import ROOT, Context, Phase, Row, private_stack, result_errors, row, run_alone
from bench.runners import last_lines, locust_bin, verdict_of
from toolclash.history import OK, read_history
from toolclash.run import read_json

LOCUSTFILE = "locustfiles/pool.py"
AGENTS = 1000
SPAWN_RATE = 200
CONNECTION_REASONS = frozenset({"connect-failed", "connection-lost", "pool-timeout", "pool-closed"})


def run_pool_bench(duration: int, *, agents: int = AGENTS, spawn_rate: int = SPAWN_RATE,
                   say: Any = print, reports_dir: Path | None = None) -> dict[str, Any]:
    """Start a private stack, run the agents through PgBouncer, return the figures."""
    with private_stack(("postgres", "pgbouncer"), say, "PostgreSQL and PgBouncer") as (env, _stack), \
            tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        reports = reports_dir or Path(tmp)
        run_id = "bench-pool"
        argv = [str(locust_bin()), "-f", LOCUSTFILE, "--headless", "-u", str(agents), "-r", str(spawn_rate),
                "-t", f"{duration}s", "--stop-timeout", "5", "--pool", "pgbouncer", "--pgbouncer-mode",
                "transaction", "--facts-rows", "100000", "--scan-rows", "100", "--pool-acquire-timeout-s", "30",
                "--connect-timeout-s", "30", "--reports-dir", str(reports), "--run-id", run_id,
                "--loglevel", "WARNING"]
        say(f"pool: {agents} agents through PgBouncer (transaction mode), {duration} s")
        child = run_child(argv, env=clean_env(env), cwd=ROOT, log=reports / "locust.log",
                          timeout=duration + 180,
                          tick=lambda elapsed, _log: say(f"  pool bench: {elapsed:4.0f} s"))
        return _figures(reports / run_id, child.returncode, agents, spawn_rate, duration,
                        child.output() if child.returncode not in (0, 4) else "")


def _figures(run_dir: Path, code: int, agents: int, spawn_rate: int, duration: int, output: str) -> dict[str, Any]:
    verdict = verdict_of(run_dir)
    if verdict is None:
        return {"error": f"no verdict (exit {code}): {last_lines(output)}", "exit_code": code}
    fig = verdict["figures"]["pool"]
    ops = [op for op in read_history(run_dir).ops if op["tool"] == "analyze"]
    first = min((op["invoke_ts"] for op in ops), default=0.0)
    ramp = agents / spawn_rate
    start, end = first + ramp, first + duration
    ok_window = sum(1 for op in ops if op["outcome"] == OK and start <= op["complete_ts"] <= end)
    errors = sum(1 for op in ops if op["outcome"] != OK and op.get("reason") in CONNECTION_REASONS)
    final = read_json(run_dir / "final" / "pool.json")
    per_t: dict[float, int] = defaultdict(int)
    for s in final.get("bouncer_samples", []):
        per_t[s["t"]] += int(s.get("cl_active") or 0) + int(s.get("cl_waiting") or 0)
    return {
        "exit_code": code, "agents": agents, "calls": len(ops), "ok": fig["ok"],
        "ok_per_s": round(ok_window / max(1e-9, end - start), 1), "window_s": round(end - start, 1),
        "wait_p50_ms": fig["wait_p50_ms"], "wait_p95_ms": fig["wait_p95_ms"], "wait_max_ms": fig["wait_max_ms"],
        "call_p95_ms": fig["p95_ms"], "connection_errors": errors,
        "unknown_at_stop": fig["unknown"], "clients_max": max(per_t.values(), default=None),
        "bouncer_cl_waiting_max": fig["bouncer_cl_waiting_max"], "bouncer_sv_active_max": fig["bouncer_sv_active_max"],
        "checks_valid": all(c["valid"] is True for c in verdict["checks"]),
        "target_zero_connection_errors_met": errors == 0,
    }


def render(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"pool phase: {res['error']}"
    return (f"pool phase: {res['agents']} agents via PgBouncer transaction mode: {res['ok_per_s']} ok calls/s "
            f"(window {res['window_s']} s), wait p50 {res['wait_p50_ms']} ms, p95 {res['wait_p95_ms']} ms, "
            f"max {res['wait_max_ms']} ms; connection errors {res['connection_errors']} (target 0: "
            f"{'met' if res['target_zero_connection_errors_met'] else 'MISSED'}); clients at once max "
            f"{res['clients_max']}; checks valid {res['checks_valid']}; locust exit {res['exit_code']}")


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    ctx.say.phase(f"pool: {AGENTS} agents through PgBouncer in transaction mode, {args.duration} s")
    res = run_pool_bench(args.duration, say=ctx.say)
    ctx.say(render(res))
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    if "error" in res:
        return [row("pool", "FAILED")]
    return [row(f"pool ok calls/s, {res['agents']} agents via PgBouncer (transaction)", f"{res['ok_per_s']}"),
            row("  acquire wait p50 / p95 / max ms", f"{res['wait_p50_ms']} / {res['wait_p95_ms']} / "
                f"{res['wait_max_ms']}"),
            row("  connection errors", str(res["connection_errors"]), "0", res["target_zero_connection_errors_met"]),
            row("  clients at once max; checks valid", f"{res['clients_max']}; {res['checks_valid']}")]


PHASE = Phase(name="pool", help="skip the pool phase (bench/pool.py)", run=run, rows=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load (default 20)")
    parser.add_argument("--agents", type=int, default=AGENTS, help=f"agents (default {AGENTS})")
    args = parser.parse_args(argv)
    alone = Phase(name="pool", help="", rows=rows,  # alone, a missed target is exit code 1 too
                  run=lambda a, ctx: run_pool_bench(a.duration, agents=a.agents, say=ctx.say),
                  errors=lambda r: result_errors(r) or ([] if r.get("target_zero_connection_errors_met")
                                                        else ["connection errors: target 0 missed"]))
    return run_alone(alone, args, "pool")


if __name__ == "__main__":
    sys.exit(main())
