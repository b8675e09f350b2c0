"""Workspace phase: event appends/s and projection lag at 50 agents, and rebuild-and-compare of 1M events.

1. **Load** — one private PostgreSQL (``toolclash.stack``); the workspace locustfile with ``--workspace-agents``
   agents (default 50), ``--profile stress``, ``expected_version``, two master-side projectors, for
   ``--workspace-duration`` seconds. Figures from the run's own verdict (``checks.json``): events appended
   per second (events / span of their commit times), projection lag P50/P95/max (append to applied),
   conflict rate, and the verdict's exit code (0 or 4 expected: the data must be valid).
2. **Rebuild and compare** — a synthetic, valid final state of ``--workspace-events`` events (default
   1,000,000) over 200 streams with the read models a correct projector leaves (tracked while generating,
   independently of the checker's fold) and the operations that appended them. Timed: ``orjson`` load
   of the captured state, the projection check alone (fold every stream from scratch, compare every
   read-model row), and all seven workspace checks. Target: rebuild and compare < 30 s.

``python -m bench.workspace`` runs this phase alone.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.children import clean_env, run_child
from bench.phase import ROOT, BenchError, Context, Phase, Row, num, private_stack, row, run_alone
from bench.runners import locust_bin, verdict_of
from toolclash.history import Op, make_op

Say = Callable[[str], None]
TARGET_REBUILD_S = 30.0
STREAMS = 200
PRINCIPALS, PERMS, PATHS, KEYS = 8, ("read", "write", "admin"), 50, 20
EXPECTED_CODES = (0, 4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace-agents", type=int, default=50, metavar="N",
                        help="agents of the workspace load run (default 50)")
    parser.add_argument("--workspace-duration", type=int, default=15, metavar="S",
                        help="seconds of the workspace load run (default 15)")
    parser.add_argument("--workspace-events", type=int, default=1_000_000, metavar="N",
                        help="events of the synthetic rebuild-and-compare (default 1,000,000)")


# ------------------------------------------------------------------------------------------------ load


def load_run(*, agents: int, duration: int, workdir: Path, run_id: str, say: Say,
             strategy: str = "expected_version") -> dict[str, Any]:
    with private_stack(("postgres",), say) as (urls, _stack):
        argv = [str(locust_bin()), "-f", "locustfiles/workspace.py", "--headless", "-u", str(agents), "-r",
                str(agents), "-t", f"{duration}s", "--profile", "stress", "--stop-timeout", "3", "--reports-dir",
                str(workdir), "--run-id", run_id, "--loglevel", "WARNING", "--strategy", strategy]
        res = run_child(argv, env=clean_env({"DATABASE_URL": urls["DATABASE_URL"]}), log=workdir / f"{run_id}.log",
                        timeout=duration + 120, cwd=ROOT)
    verdict = verdict_of(workdir / run_id)
    if verdict is None:
        raise BenchError(f"the workspace run wrote no verdict (exit {res.returncode}); see {res.log}")
    fig = verdict["figures"]["workspace"]
    out = {"strategy": strategy, "agents": agents, "duration_s": duration, "exit_code": res.returncode,
           "verdict_exit_code": verdict["exit_code"], "meaning": verdict["meaning"], "events": fig["events"],
           "appends_per_s": fig["appends_per_s"], "lag_p50_ms": fig["lag_p50_ms"], "lag_p95_ms": fig["lag_p95_ms"],
           "lag_max_ms": fig["lag_max_ms"], "conflict_rate": fig["conflict_rate"], "calls": fig["calls"],
           "call_p95_ms": fig["p95_ms"], "success_rate": fig["success_rate"],
           "invalid_checks": [c["name"] for c in verdict["checks"] if c["valid"] is not True], "log": str(res.log)}
    if res.returncode not in EXPECTED_CODES or out["invalid_checks"]:
        out["error"] = f"exit {res.returncode}, checks not valid: {out['invalid_checks']}"
    return out


# ------------------------------------------------------------------------------------- rebuild/compare


def synthesize(events: int, seed: int = 1) -> tuple[list[Op], dict[str, Any]]:
    """A valid history and final state of *events* appended events; read models tracked while generating."""
    rng = random.Random(seed)
    heads = [0] * (STREAMS + 1)
    files: dict[tuple[int, str], list[Any]] = {}
    config: dict[tuple[int, str], list[Any]] = {}
    perms: dict[tuple[int, str, str], list[Any]] = {}
    evs: list[dict[str, Any]] = []
    ops: list[Op] = []
    applied: list[dict[str, Any]] = []
    t0 = time.time() - events / 2000.0
    for i in range(events):
        sid = rng.randint(1, STREAMS)
        seq = heads[sid] = heads[sid] + 1
        agent = f"synth-{i % 4}-a{i % 50}"
        op_id = f"synth-{i % 4}-{i // 4 + 1}"
        corr = f"{agent}-t{i // 20}"
        ts = t0 + i / 2000.0
        r = rng.random()
        if r < 0.4:
            path = f"/files/{rng.randint(1, PATHS)}.txt"
            size = rng.randint(1, 1 << 20)
            payload: dict[str, Any] = {"path": path, "size": size, "sha256": f"{i:064x}"}
            tool, etype = "upload_file", "FileUploaded"
            old = files.get((sid, path))
            files[(sid, path)] = [size, payload["sha256"], agent, seq, (old[4] if old else 0) + 1]
        elif r < 0.7:
            key = f"key-{rng.randint(1, KEYS)}"
            payload = {"key": key, "value": {"n": i}}
            tool, etype = "set_config", "ConfigSet"
            oldc = config.get((sid, key))
            config[(sid, key)] = [payload["value"], seq, (oldc[2] if oldc else 0) + 1]
        else:
            principal, perm = f"user-{rng.randint(1, PRINCIPALS)}", rng.choice(PERMS)
            oldp = perms.get((sid, principal, perm))
            granting = not (oldp and oldp[0])
            tool, etype = ("grant", "PermissionGranted") if granting else ("revoke", "PermissionRevoked")
            payload = {"principal": principal, "perm": perm}
            perms[(sid, principal, perm)] = [granting, seq, (oldp[2] if oldp else 0) + 1]
        evs.append({"position": i + 1, "stream_id": sid, "seq": seq, "type": etype, "payload": payload,
                    "agent": agent, "op_id": op_id, "causation_id": op_id, "correlation_id": corr,
                    "decided_version": seq - 1, "committed_at": ts + 0.004})
        ops.append(make_op(run_id="synthetic", op_id=op_id, process=f"synth-{i % 4}", agent=agent, tool=tool,
                           strategy="expected_version", args={"workspace": sid, **payload, "correlation_id": corr},
                           invoke_ts=ts, complete_ts=ts + 0.005, outcome="ok", attempts=1,
                           result={"seq": seq, "decided_version": seq - 1}))
        applied.append({"stream_id": sid, "seq": seq, "projector": f"projector-{1 + i % 2}",
                        "applied_at": ts + 0.004 + rng.uniform(0.001, 0.05)})
    final = {
        "streams": [{"stream_id": s, "version": heads[s]} for s in range(1, STREAMS + 1)],
        "events": evs,
        "checkpoints": [{"stream_id": s, "position": heads[s], "projector": "projector-1"}
                        for s in range(1, STREAMS + 1)],
        "files": [{"stream_id": k[0], "path": k[1], "size": v[0], "sha256": v[1], "uploaded_by": v[2], "seq": v[3],
                   "uploads": v[4]} for k, v in files.items()],
        "config": [{"stream_id": k[0], "key": k[1], "value": v[0], "seq": v[1], "changes": v[2]}
                   for k, v in config.items()],
        "permissions": [{"stream_id": k[0], "principal": k[1], "perm": k[2], "granted": v[0], "seq": v[1],
                         "changes": v[2]} for k, v in perms.items()],
        "applied": applied,
    }
    return ops, final


def rebuild_and_compare(events: int, say: Say) -> dict[str, Any]:
    from checks import gc_paused
    from checks import workspace as wc

    say(f"  generating a valid synthetic workspace state of {events:,} events over {STREAMS} streams")
    with gc_paused():
        ops, final = synthesize(events)
        blob = orjson.dumps(final)
        del final
    gc.collect()
    timed: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def clock(name: str, fn: Callable[[], Any]) -> Any:
        wall, proc = time.perf_counter(), time.process_time()
        out = fn()
        timed[name], cpu[name] = time.perf_counter() - wall, time.process_time() - proc
        return out

    with gc_paused():
        final = clock("load", lambda: orjson.loads(blob))
        projection = clock("rebuild_compare", lambda: wc.projection(wc.WorkspaceView([], final)))
        results = clock("check_all", lambda: wc.check_all(ops, final))
    invalid = [r.name for r in results if r.valid is not True]
    out = {"events": events, "streams": STREAMS, "state_mb": round(len(blob) / 1e6, 1), "load_s": timed["load"],
           "rebuild_compare_s": timed["rebuild_compare"],
           "load_and_rebuild_compare_s": timed["load"] + timed["rebuild_compare"],
           "check_all_s": timed["check_all"], "cpu_s": cpu, "target_s": TARGET_REBUILD_S,
           "projection_valid": projection.valid, "invalid_checks": invalid}
    if projection.valid is not True or invalid:
        out["error"] = f"the checker rejected a valid synthetic state: {invalid or [projection.name]}"
    return out


# ----------------------------------------------------------------------------------------------- phase


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    say = ctx.say
    out = ctx.keep({})
    say.phase(f"workspace: {args.workspace_agents} agents, stress, {args.workspace_duration} s, "
              f"expected_version then locked_head")
    for strategy in ("expected_version", "locked_head"):
        key = f"load_{strategy}"
        try:
            load = out[key] = load_run(agents=args.workspace_agents, duration=args.workspace_duration,
                                       workdir=ctx.workdir, run_id=f"bench-{ctx.ts}-workspace-{strategy}", say=say,
                                       strategy=strategy)
            say(f"  {strategy}: {load['events']:,} events, {load['appends_per_s']:,.0f} appends/s, projection lag "
                f"p50 {load['lag_p50_ms']:.1f} / p95 {load['lag_p95_ms']:.1f} / max {load['lag_max_ms']:.1f} ms, "
                f"conflict rate {load['conflict_rate']:.3f}, success after retries {load['success_rate']:.4f}, "
                f"call p95 {load['call_p95_ms']:.0f} ms, exit {load['exit_code']} ({load['meaning']})")
        except BenchError as exc:
            out[key] = {"error": str(exc)}
            say(f"  FAILED: {exc}")
    say.phase(f"workspace: rebuild and compare {args.workspace_events:,} events")
    rb = out["rebuild"] = rebuild_and_compare(args.workspace_events, say)
    met = rb["load_and_rebuild_compare_s"] < TARGET_REBUILD_S
    say(f"  load {rb['load_s']:.2f} s + rebuild and compare {rb['rebuild_compare_s']:.2f} s = "
        f"{rb['load_and_rebuild_compare_s']:.2f} s (target < {TARGET_REBUILD_S:.0f} s: {'met' if met else 'MISSED'});"
        f" all seven checks {rb['check_all_s']:.2f} s; CPU seconds {rb['cpu_s']}; state {rb['state_mb']} MB")
    errors = [f"workspace {k}: {v['error']}" for k, v in out.items() if isinstance(v, dict) and "error" in v]
    if errors:
        out["errors"] = errors
    return out


def rows(out: dict[str, Any]) -> list[Row]:
    table: list[Row] = []
    for strategy in ("expected_version", "locked_head"):
        load = out.get(f"load_{strategy}")
        if not load:
            continue
        name = f"workspace {strategy}, {load.get('agents', '?')} agents: appends/s"
        if "events" not in load:
            table.append(row(name, "FAILED", load.get("error", ""), False))
            continue
        table.append(row(name, num(load["appends_per_s"], ",.0f")))
        table.append(row("  projection lag p50 / p95 / max ms", f"{load['lag_p50_ms']:.1f} / "
                         f"{load['lag_p95_ms']:.1f} / {load['lag_max_ms']:.1f}"))
        table.append(row("  conflict rate; exit code (verdict)", f"{load['conflict_rate']:.3f}; {load['exit_code']} "
                         f"({load['verdict_exit_code']})", "0 or 4", "error" not in load))
    rb = out.get("rebuild")
    if rb:
        table.append(row(f"workspace load + rebuild and compare, {rb['events']:,} events (s)",
                         f"{rb['load_and_rebuild_compare_s']:.2f}", f"< {TARGET_REBUILD_S:g}",
                         rb["load_and_rebuild_compare_s"] < TARGET_REBUILD_S))
        table.append(row("  all seven checks (s)", f"{rb['check_all_s']:.2f}"))
    return table


PHASE = Phase(name="workspace", help="skip the workspace phase", run=run, rows=rows, add_arguments=add_arguments,
              steps=lambda args: 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workspace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_alone(PHASE, parser.parse_args(argv), "workspace")


if __name__ == "__main__":
    sys.exit(main())
