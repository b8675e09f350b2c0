"""Config phase of ``make bench``: writes/s and conflict rate of ``versioned`` vs ``field_atomic``.

One private PostgreSQL; ``locustfiles/config.py`` runs each strategy at 15 and 50 agents on one
record with as many fields as agents (every agent owns a different field, the seed's test case 3),
under the normal profile (agents think 0.5–1.5 s between calls) and under ``--profile stress`` (no
think time). Figures per run, from the run's own verdict and history:

* conflict rate after start — the same ratio over calls invoked after the first 2 s (all agents start
  at once, so their first calls all collide): shown next to the gate's figure, never instead of it;
* writes/s — ok writes whose ``complete_ts`` lies in the steady window (``bench.throughput.steady_window``);
* conflict rate — version conflicts / attempts, exactly the SLA gate's figure (``checks.gates``), and
  conflicts per acknowledged write; P95 including retries; success after retries; conflict-exhausted.

The seed's targets (conflict rate < 5 % normal, < 20 % stress) are shown against the figures, never
bent: the table says met or not. ``python -m bench.config`` runs this phase alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import Progress
from bench.children import clean_env, run_child
from bench.phase import ROOT, BenchError, Context, Phase, Row, private_stack, row, run_alone
from bench.runners import locust_bin, steady_window, verdict_of
from toolclash.history import read_history

STRATEGIES = ("versioned", "field_atomic")
AGENTS = (15, 50)
PROFILES = ("normal", "stress")
TARGETS = {"normal": 0.05, "stress": 0.20}
STOP_TIMEOUT_S = 3
RAMP_S = 2.0


def one_run(url: str, workdir: Path, *, strategy: str, agents: int, profile: str, duration: int,
            say: Progress) -> dict[str, Any]:
    run_id = f"config-{strategy}-{agents}-{profile}"
    argv = [str(locust_bin()), "-f", "locustfiles/config.py", "--headless", "-u", str(agents), "-r", str(agents),
            "-t", f"{duration}s", "--stop-timeout", str(STOP_TIMEOUT_S), "--strategy", strategy, "--profile", profile,
            "--fields", str(agents), "--reports-dir", str(workdir), "--run-id", run_id, "--loglevel", "WARNING"]
    say(f"config: {strategy}, {agents} agents, {profile} profile, {duration} s")
    child = run_child(argv, env=clean_env({"DATABASE_URL": url}), cwd=ROOT, log=workdir / f"{run_id}.log",
                      timeout=duration + STOP_TIMEOUT_S + 120)
    run_dir = workdir / run_id
    out: dict[str, Any] = {"strategy": strategy, "agents": agents, "profile": profile, "duration_s": duration,
                           "exit_code": child.returncode, "run_dir": str(run_dir)}
    verdict = verdict_of(run_dir)
    if verdict is None:
        out["error"] = f"no verdict written (exit {child.returncode})"
        return out
    out.update(figures_of(run_dir, verdict, duration=duration, profile=profile))
    return out


def figures_of(run_dir: Path, verdict: dict[str, Any], *, duration: int, profile: str) -> dict[str, Any]:
    """The phase's figures from a finished run directory (its verdict and history)."""
    fig = verdict["figures"]["config"]
    ops = [op for op in read_history(run_dir).ops if op["tool"] == "update_config"]
    window = steady_window(ops, duration=duration, ramp=RAMP_S)
    # The same ratio over calls invoked after the first RAMP_S seconds: every agent starts at once and its
    # first call meets all the others' first calls; shown next to the gate's whole-run figure, never instead.
    t0 = min((op["invoke_ts"] for op in ops), default=0.0)
    later = [op for op in ops if op["invoke_ts"] >= t0 + RAMP_S]
    later_attempts = sum(int(op.get("attempts") or 0) for op in later)
    later_conflicts = sum(sum(((op.get("result") or {}).get("retries") or {}).values()) for op in later)
    return {
        "checks_valid": all(c["valid"] is True for c in verdict["checks"]),
        "writes_per_s": round(window["tps"], 1), "writes": fig["ok"], "attempts": fig["attempts"],
        "conflicts": fig["conflicts"], "conflict_rate": fig["conflict_rate"],
        "conflict_rate_after_start": later_conflicts / later_attempts if later_attempts else None,
        "conflicts_per_write": fig.get("conflicts_per_write"), "retries_per_success": fig.get("retries_per_success"),
        "p95_ms": fig["p95_ms"], "success_rate": fig["success_rate"],
        "conflict_exhausted": fig.get("conflict_exhausted"), "backoff_s": fig.get("backoff_s"),
        "target_conflict_rate": TARGETS[profile],
        "conflict_target_met": fig["conflict_rate"] < TARGETS[profile],
        "gates_missed": [f"{g['scope']}.{g['gate']}" for g in verdict["gates"] if not g["met"]],
    }


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """Run every (profile, agents, strategy) once on one private PostgreSQL; the rows go to ``rows``."""
    ctx.say.phase(f"config: versioned vs field_atomic at {' and '.join(map(str, AGENTS))} agents, normal "
                  f"({args.config_normal_s} s) and stress ({args.config_stress_s} s)")
    runs: list[dict[str, Any]] = []
    out = ctx.keep({"rows": runs, "targets": TARGETS})
    with private_stack(("postgres",), ctx.say) as (urls, _stack):
        for profile in PROFILES:
            duration = args.config_normal_s if profile == "normal" else args.config_stress_s
            for agents in AGENTS:
                for strategy in STRATEGIES:
                    try:
                        runs.append(one_run(urls["DATABASE_URL"], ctx.workdir, strategy=strategy, agents=agents,
                                            profile=profile, duration=duration, say=ctx.say))
                    except BenchError as exc:
                        runs.append({"strategy": strategy, "agents": agents, "profile": profile, "error": str(exc)})
    ctx.say("config phase:\n" + render(runs))
    return out


def render(rows: list[dict[str, Any]]) -> str:
    head = (f"{'profile':<7} {'agents':>6} {'strategy':<13} {'writes/s':>9} {'conflict rate':>13} {'target':>7} "
            f"{'met':<4} {'after start':>11} {'confl/write':>11} {'p95 ms':>8} {'success':>8} {'exhausted':>9} checks")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['profile']:<7} {r['agents']:>6} {r['strategy']:<13} ERROR: {r['error']}")
            continue
        lines.append(f"{r['profile']:<7} {r['agents']:>6} {r['strategy']:<13} {r['writes_per_s']:>9.1f} "
                     f"{r['conflict_rate']:>13.1%} {r['target_conflict_rate']:>7.0%} "
                     f"{'yes' if r['conflict_target_met'] else 'NO':<4} {_pct(r['conflict_rate_after_start']):>11} "
                     f"{r['conflicts_per_write']:>11.2f} "
                     f"{r['p95_ms']:>8.1f} {r['success_rate']:>8.2%} {r['conflict_exhausted']:>9} "
                     f"{'valid' if r['checks_valid'] else 'NOT VALID'}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-normal-s", type=int, default=30, metavar="S",
                        help="seconds of each config run under the normal profile (default 30)")
    parser.add_argument("--config-stress-s", type=int, default=15, metavar="S",
                        help="seconds of each config run under --profile stress (default 15)")


def rows(out: dict[str, Any]) -> list[Row]:
    table: list[Row] = []
    for r in out.get("rows", []):
        name = f"config {r['profile']}, {r['agents']} agents, {r['strategy']}"
        if "error" in r:
            table.append(row(name, "FAILED", r["error"], False))
            continue
        table.append(row(f"{name}: conflict rate", f"{r['conflict_rate']:.1%}", f"< {r['target_conflict_rate']:.0%}",
                         r["conflict_target_met"]))
        table.append(row("  writes/s, p95 ms, success, checks", f"{r['writes_per_s']:.1f}, {r['p95_ms']:.1f}, "
                         f"{r['success_rate']:.2%}, {'valid' if r['checks_valid'] else 'NOT VALID'}"))
    return table


def errors(out: dict[str, Any]) -> list[str]:
    """A run without a verdict, or whose checks found the data wrong."""
    return [f"config {r['profile']} {r['agents']} {r['strategy']}: "
            + r.get("error", "checks not valid") for r in out.get("rows", [])
            if "error" in r or not r.get("checks_valid")]


PHASE = Phase(name="config", help="skip the config phase (bench/config.py)", run=run, rows=rows,
              add_arguments=add_arguments, errors=errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_alone(PHASE, parser.parse_args(argv), "config")


if __name__ == "__main__":
    sys.exit(main())
