"""``python -m bench``: pgbench vs Locust on one private server, and the checker's speed.

Exit codes: 0 every phase produced its figures (targets met or not: the table says) ·
1 a phase failed or measured something invalid (pgbench error, a Locust run without a verdict
or with an unexpected one, the checker rejecting a valid history) · 2 could not run (bad option,
the private server did not start) · 130 interrupted (Ctrl-C / SIGTERM; a partial report is written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlsplit

from bench import Progress
from bench import config as config_bench
from bench.cpu import machine_busy_s
from bench.deadlock import deadlock_phase
from bench.deadlock import rows as deadlock_rows
from bench.pool import pool_phase
from bench.queue import add_arguments as add_queue_arguments
from bench.queue import queue_phase
from bench.throughput import (
    ROOT,
    STRATEGY,
    BenchError,
    LocustSpec,
    reset_schema,
    run_floor,
    run_locust,
    run_pgbench,
    server_version,
)
from bench.workspace import add_arguments as add_workspace_arguments
from bench.workspace import workspace_phase
from toolclash.run import write_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TARGET_RATIO = 0.8
TARGET_CHECKER_OPS = 200_000
INITIAL_BALANCE = 10**12
EXPECTED_LOCUST_CODES = (0, 4)
SKIP_FLAGS = ("skip_pgbench_ratio", "skip_checker", "skip_distributed", "skip_config", "skip_deadlock",
              "skip_crossservice", "skip_queue", "skip_pool", "skip_workspace")
"""Every phase's skip flag: skipping all of them leaves nothing to measure."""
OTHER_LOAD_WARN = 0.2
"""Cores busy outside client, server and softirq above which a phase is flagged."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"python -m bench: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=_positive_int, default=20, metavar="S",
                        help="seconds of each load run: pgbench -T and locust -t (default 20)")
    parser.add_argument("--clients", type=_positive_int, default=50, metavar="N",
                        help="pgbench clients and Locust users (default 50)")
    parser.add_argument("--accounts", type=_positive_int, default=1000, metavar="N",
                        help="credit accounts of the load runs (default 1000: low contention)")
    parser.add_argument("--ramp", type=_non_negative_float, default=2.0, metavar="S",
                        help="seconds left out at the start of a Locust run's steady window (default 2)")
    parser.add_argument("--rounds", type=_positive_int, default=1, metavar="N",
                        help="repeat pgbench, floor and the Locust runs N times, alternating; the median of "
                        "each figure and ratio counts (default 1; use 3+ on a noisy machine)")
    parser.add_argument("--skip-pgbench-ratio", action="store_true",
                        help="skip the throughput phase (no server is started)")
    parser.add_argument("--skip-floor", action="store_true",
                        help="skip the reference run of psycopg2 + gevent alone (no Locust, no toolclash)")
    parser.add_argument("--skip-checker", action="store_true", help="skip the checker-speed phase")
    parser.add_argument("--skip-distributed", action="store_true",
                        help="skip the distributed phase (one process vs master + 2 and + 4 workers)")
    parser.add_argument("--distributed-users", type=_positive_int, default=100, metavar="N",
                        help="agents of the distributed phase (default 100)")
    parser.add_argument("--skip-deadlock", action="store_true",
                        help="skip the deadlock phase (detection time of 200 cycles, cascade recovery)")
    parser.add_argument("--skip-pool", action="store_true", help="skip the pool phase (bench/pool.py)")
    parser.add_argument("--observability", action="store_true",
                        help="also measure throughput with the exporter on vs off and its scrape time")
    parser.add_argument("--ops", type=_positive_int, default=1_000_000, metavar="N",
                        help="operations in the synthetic history of the checker phase (default 1,000,000)")
    parser.add_argument("--checker-accounts", type=_positive_int, default=100, metavar="N",
                        help="accounts of the synthetic history (default 100)")
    parser.add_argument("--repeat", type=_positive_int, default=3, metavar="N",
                        help="timed repetitions of evaluate() and check_all(); the median counts (default 3)")
    parser.add_argument("--skip-crossservice", action="store_true",
                        help="skip the crossservice phase (2PC vs saga vs one database; recovery time)")
    parser.add_argument("--xs-clients", type=_positive_int, default=25, metavar="N",
                        help="agents of the crossservice phase (default 25)")
    parser.add_argument("--keep-synthetic", action="store_true",
                        help="keep the synthetic run directory under reports/bench-<ts>/ (for profiling)")
    parser.add_argument("--skip-config", action="store_true", help="skip the config phase (bench/config.py)")
    config_bench.add_arguments(parser)
    add_queue_arguments(parser)
    add_workspace_arguments(parser)
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


# -------------------------------------------------------------------------------------------- phases


def throughput_phase(args: argparse.Namespace, ts: str, report: dict[str, Any], say: Progress) -> None:
    from toolclash.stack.core import Stack
    from toolclash.stack.process import StackError

    out: dict[str, Any] = {"rounds": [], "summary": {}, "errors": []}
    report["throughput"] = out
    bench_dir = ROOT / "reports" / f"bench-{ts}"
    bench_dir.mkdir(parents=True, exist_ok=True)
    out["reports_dir"] = str(bench_dir)
    stack = Stack(services=("postgres",))
    try:
        say("stack: starting a private PostgreSQL on 127.0.0.1 (toolclash.stack, non-durable defaults)")
        try:
            url = stack.up(timeout=120)["DATABASE_URL"]
        except StackError as exc:
            raise SystemExit(f"python -m bench: {exc}") from None
        if urlsplit(url).hostname != "127.0.0.1":  # the bench only loads servers it started itself
            raise SystemExit("python -m bench: the private server is not on 127.0.0.1; refusing to load it")
        report["machine"]["postgresql"] = server_version(url)
        postmaster = stack.status()["postgres"]["pid"]
        cores = report["machine"].get("cpus_usable") or os.cpu_count() or 1
        say(f"stack: PostgreSQL {report['machine']['postgresql']} up at {stack.status()['postgres']['url']}")
        for r in range(1, args.rounds + 1):
            rnd: dict[str, Any] = {"round": r, "pgbench": None, "floor": None, "locust": {}, "ratios": {}}
            out["rounds"].append(rnd)
            workdir = bench_dir if args.rounds == 1 else bench_dir / f"round-{r}"
            workdir.mkdir(parents=True, exist_ok=True)
            one_round(args, ts, r, rnd, out["errors"], workdir=workdir, url=url, postmaster=postmaster,
                      cores=cores, say=say)
    finally:
        say("stack: stopping the private PostgreSQL")
        with contextlib.suppress(StackError):
            stack.down()
    summarize(out, report)


def one_round(args: argparse.Namespace, ts: str, r: int, rnd: dict[str, Any], errors: list[str], *, workdir: Path,
              url: str, postmaster: int | None, cores: int, say: Progress) -> None:
    """pgbench, the floor, Locust with 1 and 2 processes: one after the other on the same server."""
    tag = "" if args.rounds == 1 else f"round {r}: "
    say.phase(f"{tag}pgbench, {args.clients} clients, {args.duration} s, {args.accounts} accounts")
    reset_schema(url, accounts=args.accounts, initial_balance=INITIAL_BALANCE)
    try:
        rnd["pgbench"] = pg = run_pgbench(url, workdir=workdir, clients=args.clients, threads=min(2, args.clients),
                                          duration=args.duration, accounts=args.accounts, ramp=args.ramp,
                                          postmaster=postmaster, cores=cores, say=say)
        say(f"  pgbench: {pg['tps']:,.1f} tps, {pg.get('transactions')} transactions, "
            f"{pg.get('ledger_rows')} ledger rows")
    except BenchError as exc:
        errors.append(f"{tag}{exc}")
        say(f"  FAILED: {exc}")

    if not args.skip_floor:
        say.phase(f"{tag}floor: psycopg2 + gevent alone (no Locust, no toolclash), {args.clients} greenlets, "
                  f"{args.duration} s")
        reset_schema(url, accounts=args.accounts, initial_balance=INITIAL_BALANCE)
        try:
            rnd["floor"] = run_floor(url, workdir=workdir, clients=args.clients, duration=args.duration,
                                     accounts=args.accounts, ramp=args.ramp, postmaster=postmaster, cores=cores,
                                     say=say)
            say(f"  floor: {rnd['floor']['tps']:,.1f} commits/s")
        except BenchError as exc:
            errors.append(f"{tag}{exc}")
            say(f"  FAILED: {exc}")

    for procs in (1, 2):
        label = f"p{procs}"
        say.phase(f"{tag}Locust credits locustfile, {procs} process{'es' if procs > 1 else ''}, "
                  f"{args.clients} users, {args.duration} s")
        reset_schema(url, accounts=args.accounts, initial_balance=INITIAL_BALANCE)
        run_id = f"bench-{ts}-{label}" if args.rounds == 1 else f"bench-{ts}-r{r}-{label}"
        spec = LocustSpec(url=url, users=args.clients, duration=args.duration, processes=procs,
                          accounts=args.accounts, initial_balance=INITIAL_BALANCE, reports_dir=workdir,
                          run_id=run_id, ramp=args.ramp, postmaster=postmaster, cores=cores)
        res = run_locust(spec, say=say)
        rnd["locust"][label] = res
        if "error" in res:
            errors.append(f"{tag}locust {label}: {res['error']}; see {res['log']}")
            say(f"  FAILED: {res['error']}")
            continue
        code = res.get("verdict_exit_code")
        if res["exit_code"] not in EXPECTED_LOCUST_CODES or code != res["exit_code"]:
            errors.append(f"{tag}locust {label}: exit code {res['exit_code']}, verdict {code} "
                          f"({res.get('verdict_meaning')}); expected {EXPECTED_LOCUST_CODES}")
        steady = res["steady"]
        say(f"  locust {label}: {res['tps']:,.1f} ok/s over {steady['window_s']} s "
            f"({steady['ok_in_window']} ok ops), exit code {res['exit_code']} "
            f"(verdict {code}: {res.get('verdict_meaning')})")

    pg_tps = (rnd["pgbench"] or {}).get("tps")
    floor_tps = (rnd["floor"] or {}).get("tps")
    if pg_tps and floor_tps:
        rnd["ratios"]["floor_vs_pgbench"] = floor_tps / pg_tps
    for label, res in rnd["locust"].items():
        if pg_tps and res.get("tps") is not None:
            rnd["ratios"][f"locust_{label}_vs_pgbench"] = res["tps"] / pg_tps
        if floor_tps and res.get("tps") is not None:
            rnd["ratios"][f"locust_{label}_vs_floor"] = res["tps"] / floor_tps


def summarize(out: dict[str, Any], report: dict[str, Any]) -> None:
    """Headline figures: the median over rounds of each throughput and of each per-round ratio."""
    series: dict[str, list[float]] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, int | float):
            series.setdefault(key, []).append(float(value))

    for rnd in out["rounds"]:
        add("pgbench_tps", (rnd["pgbench"] or {}).get("tps"))
        add("floor_tps", (rnd["floor"] or {}).get("tps"))
        for label, res in rnd["locust"].items():
            add(f"locust_{label}_tps", res.get("tps"))
        for key, value in rnd["ratios"].items():
            add(f"ratio:{key}", value)
    for key, values in series.items():
        if key.startswith("ratio:"):
            report["ratios"][key[len("ratio:"):]] = statistics.median(values)
        else:
            out["summary"][key] = statistics.median(values)
        out["summary"].setdefault("per_round", {})[key] = values


def distributed_phase(args: argparse.Namespace, ts: str, report: dict[str, Any], say: Progress) -> None:
    from bench import distributed
    from toolclash.stack.core import Stack
    from toolclash.stack.process import StackError

    bench_dir = ROOT / "reports" / f"bench-{ts}"
    bench_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(services=("postgres",))
    try:
        say("stack: starting a private PostgreSQL on 127.0.0.1 for the distributed phase")
        try:
            url = stack.up(timeout=120)["DATABASE_URL"]
        except StackError as exc:
            raise SystemExit(f"python -m bench: {exc}") from None
        cores = report["machine"].get("cpus_usable") or os.cpu_count() or 1
        report["distributed"] = distributed.run(
            url=url, workdir=bench_dir, ts=ts, users=args.distributed_users, duration=args.duration,
            accounts=args.accounts, ramp=args.ramp, postmaster=stack.status()["postgres"]["pid"], cores=cores,
            say=say)
    except BenchError as exc:
        report["distributed"] = {"error": str(exc)}
        say(f"  FAILED: {exc}")
    finally:
        with contextlib.suppress(StackError):
            stack.down()


def checker_phase(args: argparse.Namespace, ts: str, report: dict[str, Any], say: Progress) -> None:
    from bench.checker import run_checker

    say.phase(f"checker speed on a synthetic valid history of {args.ops} operations")
    keep = ROOT / "reports" / f"bench-{ts}" if args.keep_synthetic else None
    try:
        report["checker"] = run_checker(ops=args.ops, accounts=args.checker_accounts, repeat=args.repeat, seed=1,
                                        say=say, keep_dir=keep)
    except BenchError as exc:
        report["checker"] = {"error": str(exc)}
        say(f"  FAILED: {exc}")


# -------------------------------------------------------------------------------------------- output


def _num(value: Any, fmt: str = ",.1f") -> str:
    return "-" if value is None else format(value, fmt)


def _cpu_row(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "-"
    return (f"{cpu['client_cores']:.2f} / {cpu['server_cores']:.2f} cores "
            f"(softirq {cpu['irq_cores']:.2f}, other {cpu['other_cores']:.2f}, idle {cpu['idle_cores']:.2f}), "
            f"{_num(cpu['client_us_per_tx'], '.0f')} / {_num(cpu['server_us_per_tx'], '.0f')} us/tx")


def distributed_target() -> float:
    from bench.distributed import TARGET_VERDICT_DELAY_S

    return TARGET_VERDICT_DELAY_S


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["settings"]
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, value: str, target: str = "", met: bool | None = None) -> None:
        rows.append((name, value, target, "" if met is None else ("yes" if met else "NO")))

    tp = report.get("throughput")
    rounds: list[dict[str, Any]] = (tp or {}).get("rounds", [])
    summary: dict[str, Any] = (tp or {}).get("summary", {})
    per_round: dict[str, list[float]] = summary.get("per_round", {})
    many = len(rounds) > 1

    def headline(name: str, key: str, fmt: str = ",.1f") -> None:
        value = _num(summary.get(key), fmt)
        if many and key in per_round:
            value = f"{value}  (rounds: {', '.join(format(v, fmt) for v in per_round[key])})"
        row(name + (" (median)" if many else ""), value)

    def ratio_row(name: str, key: str, target: float | None = None) -> None:
        ratio = report["ratios"].get(key)
        value = "-" if ratio is None else f"{ratio:.2f}x"
        if many and f"ratio:{key}" in per_round:
            value = f"{value}  (rounds: {', '.join(f'{v:.2f}x' for v in per_round[f'ratio:{key}'])})"
        if target is None:
            row(name, value)
        else:
            row(name, value, f">= {target}x", None if ratio is None else ratio >= target)

    def per_round_rows(get: Any) -> None:
        for rnd in rounds:
            res = get(rnd)
            if res:
                detail_rows(res, f"  r{rnd['round']} " if many else "  ")

    def detail_rows(res: dict[str, Any], prefix: str) -> None:
        if "latency_avg_ms" in res:
            row(f"{prefix}latency avg ms / transactions", f"{_num(res.get('latency_avg_ms'), '.2f')} / "
                f"{res.get('transactions')}")
        if "latency_ms" in res:
            lat = res.get("latency_ms") or {}
            row(f"{prefix}p50 / p95 ms (history)", f"{_num(lat.get('p50_ms'), '.1f')} / "
                f"{_num(lat.get('p95_ms'), '.1f')}")
        row(f"{prefix}CPU client / server", _cpu_row(res.get("cpu")))
        if "verdict_exit_code" in res or "error" in res:
            stats = res.get("locust_stats") or {}
            row(f"{prefix}whole-run ok/s (Locust's own totals)", _num(stats.get("ok_per_s")))
            code = res.get("exit_code")
            row(f"{prefix}exit code (verdict)", f"{code} ({res.get('verdict_exit_code')})", "0 or 4",
                code in EXPECTED_LOCUST_CODES and code == res.get("verdict_exit_code"))

    if tp:
        headline("pgbench tps (pessimistic script)", "pgbench_tps")
        per_round_rows(lambda rnd: rnd.get("pgbench"))
        if any(rnd.get("floor") for rnd in rounds):
            headline("psycopg2+gevent floor commits/s", "floor_tps")
            ratio_row("  ratio to pgbench", "floor_vs_pgbench")
            per_round_rows(lambda rnd: rnd.get("floor"))
        for label in ("p1", "p2"):
            if not any(label in rnd["locust"] for rnd in rounds):
                continue
            n = label[1:]
            headline(f"locust {n} process{'es' if n != '1' else ''} ok ops/s", f"locust_{label}_tps")
            ratio_row("  ratio to pgbench", f"locust_{label}_vs_pgbench", TARGET_RATIO)
            ratio_row("  ratio to the psycopg2+gevent floor", f"locust_{label}_vs_floor")
            per_round_rows(lambda rnd, lb=label: rnd["locust"].get(lb))
    ds = report.get("distributed")
    if ds:
        if "error" in ds:
            row("distributed", "FAILED")
        else:
            for label, fig in ds["runs"].items():
                who = "1 process" if label == "p1" else f"master + {label[1:]} workers"
                row(f"{ds['users']} agents, {who}: ok ops/s", _num(fig["tps"]))
                row("  records/s handed to the master", _num(fig["records_per_s"], ",.0f"))
                if fig.get("master_cpu_share") is not None and label != "p1":
                    row("  master's share of Locust CPU", f"{fig['master_cpu_share']:.0%}")
            row("  ratio master + 2 workers to 1 process", _num(ds["ratio_p2_vs_p1"], ".2f") + "x")
            row("verdict delay after -t, 4 workers (s)", _num(ds["verdict_delay_p4_s"], ".2f"),
                f"< {distributed_target()}", ds["verdict_delay_target_met"])
    for dl_row in deadlock_rows(report.get("deadlock") or {}):
        row(*dl_row)
    ck = report.get("checker")
    if ck:
        if "error" in ck:
            row("checker", "FAILED")
        else:
            row(f"checker evaluate() ops/s ({ck['ops']:,} ops)", _num(ck["evaluate_ops_per_s"], ",.0f"),
                f">= {TARGET_CHECKER_OPS:,}", ck["evaluate_ops_per_s"] >= TARGET_CHECKER_OPS)
            row("checker check_all() ops/s (in memory)", _num(ck["check_all_ops_per_s"], ",.0f"),
                f">= {TARGET_CHECKER_OPS:,}", ck["check_all_ops_per_s"] >= TARGET_CHECKER_OPS)
            for part, secs in ck["parts_s"].items():
                row(f"  {part} s", f"{secs:.2f}")
    head = (f"toolclash bench {report['bench']}: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), "
            f"PostgreSQL {m.get('postgresql', '-')}, {s['clients']} clients, {s['duration']} s, "
            f"strategy {s['strategy']}")
    widths = [max(len(r[i]) for r in [("figure", "value", "target", "met"), *rows]) for i in range(4)]
    lines = [head, ""]
    for r in [("figure", "value", "target", "met"), *rows]:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
        if r[0] == "figure":
            lines.append("-" * (sum(widths) + 6))
    notes = []
    if tp:
        notes.append(f"Locust ok ops/s = ok operations of the history whose complete_ts lies in "
                     f"[first invoke + {s['ramp']} s, min(first invoke + {s['duration']} s, last ok)], "
                     "divided by that window (history-based); CPU = cores busy in the same window, from /proc")
    for rnd in rounds:
        tag = f"round {rnd['round']} " if many else ""
        phases = [(f"{tag}pgbench", rnd.get("pgbench")), (f"{tag}floor", rnd.get("floor"))]
        phases += [(f"{tag}locust {k}", v) for k, v in rnd["locust"].items()]
        for name, res in phases:
            cpu = (res or {}).get("cpu") or {}
            other = cpu.get("other_cores")
            if other is not None and other > OTHER_LOAD_WARN:
                who = ", ".join(f"{p['cmd'][:60]} {p['cores']:.2f}" for p in cpu.get("other_processes", []))
                notes.append(f"WARNING: {other:.2f} cores busy outside client, server and softirq during {name} "
                             f"(other load: {who or 'no single process'}): its figures are skewed")
    errors = (tp or {}).get("errors", []) + ([ck["error"]] if ck and "error" in ck else [])
    notes += [f"ERROR: {e}" for e in errors]
    if notes:
        lines.append("")
        lines += notes
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ramp >= args.duration:
        build_parser().error(f"--ramp ({args.ramp:g}) must be shorter than --duration ({args.duration})")
    if all(getattr(args, flag) for flag in SKIP_FLAGS):
        build_parser().error(", ".join("--" + f.replace("_", "-") for f in SKIP_FLAGS)
                             + " together leave nothing to measure")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    load_phases = 0 if args.skip_pgbench_ratio else (3 if args.skip_floor else 4) * args.rounds
    load_phases += 0 if args.skip_distributed else 3
    load_phases += sum(not getattr(args, flag) for flag in ("skip_checker", "skip_deadlock", "skip_crossservice",
                                                            "skip_queue", "skip_pool"))
    load_phases += 0 if args.skip_workspace else 2
    say = Progress(phases=load_phases)
    ts = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "bench": ts,
        "settings": {"duration": args.duration, "clients": args.clients, "rounds": args.rounds,
                     "pgbench_threads": min(2, args.clients),
                     "accounts": args.accounts, "initial_balance": INITIAL_BALANCE, "strategy": STRATEGY,
                     "profile": "stress", "ramp": args.ramp, "pgbench_protocol": "simple",
                     "locust_processes": [1, 2], "ops": args.ops, "checker_accounts": args.checker_accounts,
                     "repeat": args.repeat, "skip_pgbench_ratio": args.skip_pgbench_ratio,
                     "skip_floor": args.skip_floor,
                     "locust_throughput": "ok operations of the run's history (toolclash.history.read_history) "
                     "whose complete_ts lies in [first invoke_ts + ramp, min(first invoke_ts + duration, last ok "
                     "complete_ts)], divided by that window; Locust's own whole-run totals are a cross-check",
                     "skip_checker": args.skip_checker},
        "targets": {"locust_vs_pgbench": TARGET_RATIO, "checker_ops_per_s": TARGET_CHECKER_OPS},
        "machine": machine_facts(), "ratios": {}, "throughput": None, "checker": None,
    }
    path = ROOT / "reports" / f"bench-{ts}.json"
    code = EXIT_OK
    say(f"bench {ts}: report will be {path.relative_to(ROOT)}")
    busy = busy_cores(1.0)
    report["machine"]["busy_cores_before"] = round(busy, 2)
    if busy > OTHER_LOAD_WARN:
        say(f"WARNING: the machine is not quiet ({busy:.2f} cores busy before the bench): figures will be skewed")
    try:
        if not args.skip_pgbench_ratio:
            throughput_phase(args, ts, report, say)
        if not args.skip_distributed:
            distributed_phase(args, ts, report, say)
        if not args.skip_checker:
            checker_phase(args, ts, report, say)
        if not args.skip_config:
            config_bench.config_phase(args, ts, report, say)
        if not args.skip_deadlock:
            say.phase("deadlock: detection time of 200 three-way cycles, cascade recovery (50 agents)")
            report["deadlock"] = deadlock_phase(ts, say)
        if not args.skip_crossservice:
            from bench.crossservice import phase as crossservice_phase

            crossservice_phase(args, ts, report, say)
        queue_phase(args, report, say)
        pool_phase(args, report, say)
        if not args.skip_workspace:
            workspace_phase(args, ts, report, say)
        if args.observability:
            from bench import observability
            report["observability"] = observability.phase(duration=args.duration, rounds=args.rounds, say=say)
    except KeyboardInterrupt:
        report["interrupted"] = True
        say("interrupted: servers and child processes stopped; writing a partial report")
        code = EXIT_INTERRUPTED
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            report["error"] = exc.code
            code = EXIT_USAGE
        else:
            raise
    except Exception as exc:  # noqa: BLE001 - report what broke, keep the figures measured so far
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc(limit=8)
        print(f"python -m bench: {report['error']}", file=sys.stderr)
        code = EXIT_FAILED
    tp_errors = (report.get("throughput") or {}).get("errors") or []
    dl_errors = [k for k, v in (report.get("deadlock") or {}).items() if isinstance(v, dict) and "error" in v]
    if code == EXIT_OK and (tp_errors or dl_errors or "error" in (report.get("checker") or {})
                            or "error" in (report.get("distributed") or {})
                            or (report.get("workspace") or {}).get("errors")):
        code = EXIT_FAILED
    report["exit_code"] = code
    write_json(path, report)
    print("\n" + render(report), flush=True)
    print(f"\nreport: {path.relative_to(ROOT)}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
