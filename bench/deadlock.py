"""Bench phase of the deadlock scenario: detection time of 200 three-way cycles, cascade recovery time.

Two headless runs of ``locustfiles/deadlock.py`` on one private PostgreSQL (``deadlock_timeout``
100 ms, priority roles at 100 ms / 400 ms / 1 s):

1. *cycles*: 15 agents = 5 three-way cycles per round, no think time, until at least
   ``CYCLES`` cycles were resolved; the first ``CYCLES`` of them (by completion time) give the
   detection-time histogram (client-side: last member's blocking request → victim's 40P01);
2. *cascade*: 50 agents on private rows, and every 3 s all of them form 25 two-way cycles at once;
   recovery = cascade start → ok-throughput back to >= 90 % of the second before.

Figures only (timings belong here, never in unit tests); seed SLAs: detection < 500 ms (target
p99 < 150 ms), recovery < 2 s (target < 0.5 s). Nothing happens at import.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from bench.children import clean_env, run_child
from bench.phase import ROOT, Context, Phase, Row, private_stack
from bench.runners import locust_bin, verdict_of
from checks import deadlock as cd
from toolclash.history import read_history

CYCLES = 200
LOCUSTFILE = "locustfiles/deadlock.py"
TARGET_DETECTION_P99_MS = 150.0
SLA_DETECTION_MS = 500.0
TARGET_RECOVERY_S = 0.5
SLA_RECOVERY_S = 2.0


def _run(url: str, workdir: Path, run_id: str, args: list[str], say: Any) -> dict[str, Any]:
    argv = [str(locust_bin()), "-f", LOCUSTFILE, "--headless", "--profile", "stress", "--reports-dir", str(workdir),
            "--run-id", run_id, "--loglevel", "WARNING", *args]
    say(f"locust: {' '.join(argv[1:])}")
    child = run_child(argv, env=clean_env({"DATABASE_URL": url}), cwd=ROOT, log=workdir / f"{run_id}.log",
                      timeout=180)
    out: dict[str, Any] = {"argv": argv[1:], "exit_code": child.returncode, "seconds": round(child.seconds, 1),
                           "log": str(child.log), "run_dir": str(workdir / run_id)}
    verdict = verdict_of(workdir / run_id)
    if verdict is None:
        out["error"] = f"no verdict written (exit {child.returncode}); see {child.log}"
        return out
    out["verdict_exit_code"] = verdict["exit_code"]
    out["checks"] = {c["name"]: c["valid"] for c in verdict["checks"]}
    out["figures"] = verdict["figures"]["deadlock"]
    return out


def first_cycles_detection(run_dir: Path, n: int) -> dict[str, Any]:
    """Detection figures of the first *n* resolved cycles of the run (by the time they closed)."""
    ops = [op for op in read_history(run_dir).ops if op["tool"] == cd.TOOL]
    cycles = sorted((c for c in cd.find_cycles(ops) if c["detection_ms"] is not None), key=lambda c: c["t_complete"])
    first = cycles[:n]
    out = cd.detection(first)
    out["lowest_priority_victims"] = sum(1 for c in first if int(c["victims"][0]["args"]["priority"]) == 0)
    return out


def run_deadlock(url: str, workdir: Path, ts: str, say: Any) -> dict[str, Any]:
    report: dict[str, Any] = {"cycles": CYCLES}
    cyc = _run(url, workdir, f"bench-{ts}-deadlock-cycles", ["-u", "15", "-r", "15", "-t", "12s"], say)
    report["cycles_run"] = cyc
    if "error" not in cyc:
        report["detection"] = first_cycles_detection(Path(cyc["run_dir"]), CYCLES)
    cas = _run(url, workdir, f"bench-{ts}-deadlock-cascade",
               ["-u", "50", "-r", "50", "-t", "14s", "--deadlock-mode", "cascade", "--cascade-every-s", "3"], say)
    report["cascade_run"] = cas
    if "error" not in cas:
        fig = cas["figures"]
        report["cascades"] = [{k: c.get(k) for k in ("cascade", "cycles", "victims", "baseline_ok_per_s", "window_s",
                                                      "recovery_s", "note")} for c in fig["cascades"]]
        report["recovery_max_s"] = fig["cascade_recovery_max_s"]
    return report


def rows(report: dict[str, Any]) -> list[Row]:
    """Table rows (figure, value, target, met) for bench's summary."""
    out: list[Row] = []
    det = report.get("detection")
    if det:
        out.append((f"deadlock detection, first {det['n']} 3-way cycles p50 / p95 / p99 / max ms",
                    f"{det['p50_ms']:.1f} / {det['p95_ms']:.1f} / {det['p99_ms']:.1f} / {det['max_ms']:.1f}",
                    f"p99 < {TARGET_DETECTION_P99_MS:g}", det["p99_ms"] < TARGET_DETECTION_P99_MS))
        out.append(("  histogram ms", " ".join(f"{k}:{v}" for k, v in det["histogram_ms"].items() if v), "", None))
        out.append(("  victim = lowest priority", f"{det['lowest_priority_victims']}/{det['n']}", "", None))
    for c in report.get("cascades") or []:
        rec = c.get("recovery_s")
        value = "-" if rec is None else ("never" if math.isinf(rec) else f"{rec:.2f} s")
        out.append((f"cascade {c['cascade']}: {c['cycles']} cycles, recovery", value,
                    f"< {TARGET_RECOVERY_S:g} s", None if rec is None else rec < TARGET_RECOVERY_S))
    for key in ("cycles_run", "cascade_run"):
        run = report.get(key) or {}
        if "error" in run:
            out.append((f"deadlock {key}", "FAILED", run["error"], False))
        elif run:
            bad = [n for n, v in run["checks"].items() if v is not True]
            out.append((f"deadlock {key} exit code", str(run["exit_code"]), "checks all true", not bad))
    return out


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """Start a private PostgreSQL, run both, stop it."""
    ctx.say.phase(f"deadlock: detection time of {CYCLES} three-way cycles, cascade recovery (50 agents)")
    with private_stack(("postgres",), ctx.say) as (urls, _stack):
        return run_deadlock(urls["DATABASE_URL"], ctx.workdir, ctx.ts, ctx.say)


def errors(report: dict[str, Any]) -> list[str]:
    return [f"deadlock {k}: {v['error']}" for k, v in report.items() if isinstance(v, dict) and "error" in v]


PHASE = Phase(name="deadlock", help="skip the deadlock phase (detection time of 200 cycles, cascade recovery)",
              run=run, rows=rows, errors=errors)
