"""``python -m bench``: toolclash's speed figures, as ratios against references measured in the same run.

Each phase (``bench/<phase>.py``, one :class:`bench.phase.Phase` each) runs on private servers it starts
and stops itself; ``--skip-<phase>`` leaves one out. Results: one table on stdout and
``reports/bench-<ts>.json``.

Exit codes: 0 every phase produced its figures (targets met or not: the table says) ·
1 a phase failed or measured something invalid (pgbench error, a Locust run without a verdict
or with an unexpected one, the checker rejecting a valid history) · 2 could not run (bad option,
a private server did not start) · 130 interrupted (Ctrl-C / SIGTERM; a partial report is written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from bench import Progress
from bench import checker as checker_phase
from bench import config as config_phase
from bench import crossservice as crossservice_phase
from bench import deadlock as deadlock_phase
from bench import distributed as distributed_phase
from bench import faults as faults_phase
from bench import http as http_phase
from bench import isolation as isolation_phase
from bench import observability as observability_phase
from bench import pool as pool_phase
from bench import queue as queue_phase
from bench import throughput as throughput_phase
from bench import workspace as workspace_phase
from bench.cpu import machine_busy_s
from bench.phase import ROOT, BenchError, CannotRun, Context, Phase, Row, non_negative_float, positive_int, table
from toolclash.run import write_json

PHASES: tuple[Phase, ...] = (throughput_phase.PHASE, distributed_phase.PHASE, checker_phase.PHASE,
                             isolation_phase.PHASE, config_phase.PHASE, deadlock_phase.PHASE,
                             crossservice_phase.PHASE, queue_phase.PHASE, pool_phase.PHASE, workspace_phase.PHASE,
                             http_phase.PHASE, faults_phase.PHASE, observability_phase.PHASE)
"""Every phase, in the order they run."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
OTHER_LOAD_WARN = 0.2
"""Cores busy on the machine before the bench above which its figures are flagged."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"python -m bench: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="phases, in order: " + ", ".join(p.name for p in PHASES))
    parser.add_argument("--duration", type=positive_int, default=20, metavar="S",
                        help="seconds of each load run: pgbench -T and locust -t (default 20)")
    parser.add_argument("--clients", type=positive_int, default=50, metavar="N",
                        help="pgbench clients and Locust users (default 50)")
    parser.add_argument("--accounts", type=positive_int, default=1000, metavar="N",
                        help="credit accounts of the load runs (default 1000: low contention)")
    parser.add_argument("--ramp", type=non_negative_float, default=2.0, metavar="S",
                        help="seconds left out at the start of a Locust run's steady window (default 2)")
    parser.add_argument("--rounds", type=positive_int, default=1, metavar="N",
                        help="repeat pgbench, floor and the Locust runs N times, alternating; the median of "
                        "each figure and ratio counts (default 1; use 3+ on a noisy machine)")
    for phase in PHASES:
        parser.add_argument(phase.option, action="store_true", help=phase.help)
        phase.add_arguments(parser)
    return parser


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------- facts


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(),
                             "platform": platform.platform()}
    with contextlib.suppress(AttributeError):
        facts["cpus_usable"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["mem_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    for dist in ("locust", "gevent", "psycopg2-binary", "orjson"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            facts[dist] = importlib.metadata.version(dist)
    return facts


def busy_cores(seconds: float) -> float:
    """Cores busy on the whole machine over the next *seconds* (other load that would skew the figures)."""
    before = machine_busy_s()
    time.sleep(seconds)
    return (machine_busy_s() - before) / seconds


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"duration": args.duration, "clients": args.clients, "rounds": args.rounds,
            "pgbench_threads": min(2, args.clients),
            "accounts": args.accounts, "initial_balance": throughput_phase.INITIAL_BALANCE,
            "strategy": throughput_phase.STRATEGY, "profile": "stress", "ramp": args.ramp,
            "pgbench_protocol": "simple", "locust_processes": [1, 2], "ops": args.ops,
            "checker_accounts": args.checker_accounts, "checker_big_ops": args.checker_big_ops, "repeat": args.repeat,
            "skip_pgbench_ratio": args.skip_pgbench_ratio, "skip_floor": args.skip_floor,
            "locust_throughput": "ok operations of the run's history (toolclash.history.read_history) "
            "whose complete_ts lies in [first invoke_ts + ramp, min(first invoke_ts + duration, last ok "
            "complete_ts)], divided by that window; Locust's own whole-run totals are a cross-check",
            "skip_checker": args.skip_checker}


# -------------------------------------------------------------------------------------------- output


def render(report: dict[str, Any]) -> str:
    """One table of every phase that ran, then notes (definitions, warnings) and errors."""
    m = report["machine"]
    s = report["settings"]
    rows: list[Row] = []
    notes: list[str] = []
    errors: list[str] = []
    for phase in PHASES:
        result = report.get(phase.name)
        if not isinstance(result, dict):
            continue
        rows += phase.rows(result)
        if phase.notes is not None:
            notes += phase.notes(result, s)
        errors += phase.errors(result)
    head = (f"toolclash bench {report['bench']}: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), "
            f"PostgreSQL {m.get('postgresql', '-')}, {s['clients']} clients, {s['duration']} s, "
            f"strategy {s['strategy']}")
    lines = [head, "", *table(rows)]
    notes += [f"ERROR: {e}" for e in errors]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def run_phases(args: argparse.Namespace, selected: list[Phase], ctx: Context, report: dict[str, Any]) -> int:
    """Run *selected* one after the other, each result into ``report[phase.name]``; the exit code so far."""
    for phase in selected:
        ctx.partial = None
        try:
            report[phase.name] = phase.run(args, ctx)
        except BenchError as exc:
            report[phase.name] = {**(ctx.partial or {}), "error": str(exc)}
            ctx.say(f"  FAILED: {exc}")
        except KeyboardInterrupt:
            report[phase.name] = ctx.partial
            report["interrupted"] = True
            ctx.say("interrupted: servers and child processes stopped; writing a partial report")
            return EXIT_INTERRUPTED
        except CannotRun as exc:
            report[phase.name] = ctx.partial
            report["error"] = f"python -m bench: {exc}"
            print(report["error"], file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:  # noqa: BLE001 - report what broke, keep the figures measured so far
            report[phase.name] = ctx.partial
            report["error"] = f"{type(exc).__name__}: {exc}"
            report["traceback"] = traceback.format_exc(limit=8)
            print(f"python -m bench: {report['error']}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ramp >= args.duration:
        parser.error(f"--ramp ({args.ramp:g}) must be shorter than --duration ({args.duration})")
    selected = [phase for phase in PHASES if phase.selected(args)]
    if not selected:
        parser.error(", ".join(p.option for p in PHASES if not p.opt_in) + " together leave nothing to measure")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    ts = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    say = Progress(phases=sum(phase.steps(args) for phase in selected))
    report: dict[str, Any] = {
        "bench": ts, "settings": settings_of(args),
        "targets": {"locust_vs_pgbench": throughput_phase.TARGET_RATIO,
                    "checker_ops_per_s": checker_phase.TARGET_OPS_PER_S},
        "machine": machine_facts(), "ratios": {}, **{phase.name: None for phase in PHASES},
    }
    path = ROOT / "reports" / f"bench-{ts}.json"
    say(f"bench {ts}: report will be {path.relative_to(ROOT)}")
    code = EXIT_OK
    try:
        busy = busy_cores(1.0)
        report["machine"]["busy_cores_before"] = round(busy, 2)
        if busy > OTHER_LOAD_WARN:
            say(f"WARNING: the machine is not quiet ({busy:.2f} cores busy before the bench): figures will be "
                "skewed")
        code = run_phases(args, selected, Context(ts, say, report["machine"], report["ratios"]), report)
    except KeyboardInterrupt:  # before the first phase
        report["interrupted"] = True
        code = EXIT_INTERRUPTED
    if code == EXIT_OK and any(phase.errors(report[phase.name]) for phase in selected
                               if isinstance(report.get(phase.name), dict)):
        code = EXIT_FAILED
    report["exit_code"] = code
    write_json(path, report)
    print("\n" + render(report), flush=True)
    print(f"\nreport: {path.relative_to(ROOT)}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
