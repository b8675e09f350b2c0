"""Throughput phase: pgbench and the credits locustfile, same transaction, same private server.

One private PostgreSQL (``toolclash.stack``) on 127.0.0.1; pgbench runs the ``pessimistic`` credit
deduction (``SELECT … FOR UPDATE``, ``UPDATE``, ledger ``INSERT``) as a custom script; the *floor*
(``bench.floor``) runs it through psycopg2 + gevent alone; then the credits locustfile runs it through
the whole agent path (tool client, history, checks) with one Locust process and with ``--processes 2``.
The figures are ok operations per second, their ratios to pgbench's tps, and the CPU each side (load
generator, server) spent per transaction (``bench.cpu``). ``--rounds N`` alternates the four runs N
times and keeps medians. The runs themselves are in :mod:`bench.runners`.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.phase import BenchError, Context, Phase, Row, num, private_stack, row
from bench.runners import STRATEGY, LocustSpec, reset_credits, run_floor, run_locust, run_pgbench, server_version

TARGET_RATIO = 0.8
INITIAL_BALANCE = 10**12
EXPECTED_LOCUST_CODES = (0, 4)
OTHER_LOAD_WARN = 0.2
"""Cores busy outside client, server and softirq above which a run is flagged."""
LABELS = ("p1", "p2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-floor", action="store_true",
                        help="skip the reference run of psycopg2 + gevent alone (no Locust, no toolclash)")


def steps(args: argparse.Namespace) -> int:
    return (3 if args.skip_floor else 5) * args.rounds


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    out = ctx.keep({"rounds": [], "summary": {}, "errors": [], "reports_dir": str(ctx.workdir)})
    try:
        with private_stack(("postgres",), ctx.say) as (urls, stack):
            url = urls["DATABASE_URL"]
            ctx.machine["postgresql"] = server_version(url)
            postmaster = stack.status()["postgres"]["pid"]
            ctx.say(f"stack: PostgreSQL {ctx.machine['postgresql']} up at {stack.status()['postgres']['url']}")
            for r in range(1, args.rounds + 1):
                rnd: dict[str, Any] = {"round": r, "pgbench": None, "floor": None, "floor_p2": None, "locust": {},
                                       "ratios": {}}
                out["rounds"].append(rnd)
                workdir = ctx.workdir if args.rounds == 1 else ctx.workdir / f"round-{r}"
                workdir.mkdir(parents=True, exist_ok=True)
                one_round(args, ctx, r, rnd, out["errors"], workdir=workdir, url=url, postmaster=postmaster)
    finally:
        summarize(out, ctx.ratios)
    return out


def one_round(args: argparse.Namespace, ctx: Context, r: int, rnd: dict[str, Any], errors: list[str], *,
              workdir: Path, url: str, postmaster: int | None) -> None:
    """pgbench, the floor, Locust with 1 and 2 processes: one after the other on the same server."""
    say, cores = ctx.say, ctx.cores
    tag = "" if args.rounds == 1 else f"round {r}: "
    say.phase(f"{tag}pgbench, {args.clients} clients, {args.duration} s, {args.accounts} accounts")
    reset_credits(url, accounts=args.accounts, initial_balance=INITIAL_BALANCE)
    try:
        rnd["pgbench"] = pg = run_pgbench(url, workdir=workdir, clients=args.clients, threads=min(2, args.clients),
                                          duration=args.duration, accounts=args.accounts, ramp=args.ramp,
                                          postmaster=postmaster, cores=cores, say=say)
        say(f"  pgbench: {pg['tps']:,.1f} tps, {pg.get('transactions')} transactions, "
            f"{pg.get('ledger_rows')} ledger rows")
    except BenchError as exc:
        errors.append(f"{tag}{exc}")
        say(f"  FAILED: {exc}")

    for procs in () if args.skip_floor else (1, 2):
        key = "floor" if procs == 1 else f"floor_p{procs}"
        say.phase(f"{tag}floor: psycopg2 + gevent alone (no Locust, no toolclash), {args.clients} greenlets in "
                  f"{procs} process{'es' if procs > 1 else ''}, {args.duration} s")
        reset_credits(url, accounts=args.accounts, initial_balance=INITIAL_BALANCE)
        try:
            rnd[key] = run_floor(url, workdir=workdir, clients=args.clients, duration=args.duration,
                                 accounts=args.accounts, ramp=args.ramp, postmaster=postmaster, cores=cores,
                                 say=say, processes=procs)
            say(f"  floor, {procs} process{'es' if procs > 1 else ''}: {rnd[key]['tps']:,.1f} commits/s")
        except BenchError as exc:
            errors.append(f"{tag}{exc}")
            say(f"  FAILED: {exc}")

    for procs in (1, 2):
        label = f"p{procs}"
        say.phase(f"{tag}Locust credits locustfile, {procs} process{'es' if procs > 1 else ''}, "
                  f"{args.clients} users, {args.duration} s")
        reset_credits(url, accounts=args.accounts, initial_balance=INITIAL_BALANCE)
        run_id = f"bench-{ctx.ts}-{label}" if args.rounds == 1 else f"bench-{ctx.ts}-r{r}-{label}"
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
    floors = {label: (rnd["floor" if label == "p1" else f"floor_{label}"] or {}).get("tps") for label in LABELS}
    for label, floor_tps in floors.items():
        if pg_tps and floor_tps:
            rnd["ratios"]["floor_vs_pgbench" if label == "p1" else f"floor_{label}_vs_pgbench"] = floor_tps / pg_tps
    for label, res in rnd["locust"].items():
        if pg_tps and res.get("tps") is not None:
            rnd["ratios"][f"locust_{label}_vs_pgbench"] = res["tps"] / pg_tps
        floor_tps = floors.get(label)  # each Locust run against the floor with as many processes
        if floor_tps and res.get("tps") is not None:
            rnd["ratios"][f"locust_{label}_vs_floor"] = res["tps"] / floor_tps


def summarize(out: dict[str, Any], ratios: dict[str, float]) -> None:
    """Headline figures: the median over rounds of each throughput (``out["summary"]``) and of each per-round
    ratio (*ratios*: the report's headline ratios)."""
    series: dict[str, list[float]] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, int | float):
            series.setdefault(key, []).append(float(value))

    for rnd in out["rounds"]:
        add("pgbench_tps", (rnd["pgbench"] or {}).get("tps"))
        add("floor_tps", (rnd["floor"] or {}).get("tps"))
        add("floor_p2_tps", (rnd.get("floor_p2") or {}).get("tps"))
        for label, res in rnd["locust"].items():
            add(f"locust_{label}_tps", res.get("tps"))
        for key, value in rnd["ratios"].items():
            add(f"ratio:{key}", value)
    for key, values in series.items():
        if key.startswith("ratio:"):
            name = key[len("ratio:"):]
            ratios[name] = out.setdefault("ratios", {})[name] = statistics.median(values)
        else:
            out["summary"][key] = statistics.median(values)
        out["summary"].setdefault("per_round", {})[key] = values


# --------------------------------------------------------------------------------------------- output


def _cpu_value(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "-"
    return (f"{cpu['client_cores']:.2f} / {cpu['server_cores']:.2f} cores "
            f"(softirq {cpu['irq_cores']:.2f}, other {cpu['other_cores']:.2f}, idle {cpu['idle_cores']:.2f}), "
            f"{num(cpu['client_us_per_tx'], '.0f')} / {num(cpu['server_us_per_tx'], '.0f')} us/tx")


def _detail_rows(res: dict[str, Any], prefix: str) -> list[Row]:
    out: list[Row] = []
    if "latency_avg_ms" in res:
        out.append(row(f"{prefix}latency avg ms / transactions",
                       f"{num(res.get('latency_avg_ms'), '.2f')} / {res.get('transactions')}"))
    if "latency_ms" in res:
        lat = res.get("latency_ms") or {}
        out.append(row(f"{prefix}p50 / p95 ms (history)",
                       f"{num(lat.get('p50_ms'), '.1f')} / {num(lat.get('p95_ms'), '.1f')}"))
    out.append(row(f"{prefix}CPU client / server", _cpu_value(res.get("cpu"))))
    if "verdict_exit_code" in res and (res.get("processes") or 1) > 1 and res.get("cpu"):
        out.append(row(f"{prefix}of which the master (runs no agent)",
                       f"{num(res['cpu'].get('client_root_us_per_tx'), '.0f')} us/tx"))
    if "verdict_exit_code" in res or "error" in res:
        stats = res.get("locust_stats") or {}
        out.append(row(f"{prefix}whole-run ok/s (Locust's own totals)", num(stats.get("ok_per_s"))))
        code = res.get("exit_code")
        out.append(row(f"{prefix}exit code (verdict)", f"{code} ({res.get('verdict_exit_code')})", "0 or 4",
                       code in EXPECTED_LOCUST_CODES and code == res.get("verdict_exit_code")))
    return out


def rows(out: dict[str, Any]) -> list[Row]:
    rounds: list[dict[str, Any]] = out.get("rounds", [])
    summary: dict[str, Any] = out.get("summary", {})
    ratios: dict[str, float] = out.get("ratios", {})
    per_round: dict[str, list[float]] = summary.get("per_round", {})
    many = len(rounds) > 1
    table: list[Row] = []

    def headline(name: str, key: str, fmt: str = ",.1f") -> None:
        value = num(summary.get(key), fmt)
        if many and key in per_round:
            value = f"{value}  (rounds: {', '.join(format(v, fmt) for v in per_round[key])})"
        table.append(row(name + (" (median)" if many else ""), value))

    def ratio_row(name: str, key: str, target: float | None = None) -> None:
        ratio = ratios.get(key)
        value = "-" if ratio is None else f"{ratio:.2f}x"
        if many and f"ratio:{key}" in per_round:
            value = f"{value}  (rounds: {', '.join(f'{v:.2f}x' for v in per_round[f'ratio:{key}'])})"
        if target is None:
            table.append(row(name, value))
        else:
            table.append(row(name, value, f">= {target}x", None if ratio is None else ratio >= target))

    def per_round_rows(kind: str, label: str = "") -> None:
        for rnd in rounds:
            res = rnd["locust"].get(label) if kind == "locust" else rnd.get(kind)
            if res:
                table.extend(_detail_rows(res, f"  r{rnd['round']} " if many else "  "))

    if not rounds:
        return table
    headline("pgbench tps (pessimistic script)", "pgbench_tps")
    per_round_rows("pgbench")
    if any(rnd.get("floor") for rnd in rounds):
        headline("psycopg2+gevent floor commits/s", "floor_tps")
        ratio_row("  ratio to pgbench", "floor_vs_pgbench")
        per_round_rows("floor")
    if any(rnd.get("floor_p2") for rnd in rounds):
        headline("psycopg2+gevent floor, 2 processes, commits/s", "floor_p2_tps")
        ratio_row("  ratio to pgbench", "floor_p2_vs_pgbench")
        per_round_rows("floor_p2")
    for label in LABELS:
        if not any(label in rnd["locust"] for rnd in rounds):
            continue
        n = label[1:]
        headline(f"locust {n} process{'es' if n != '1' else ''} ok ops/s", f"locust_{label}_tps")
        ratio_row("  ratio to pgbench", f"locust_{label}_vs_pgbench", TARGET_RATIO)
        ratio_row(f"  ratio to the psycopg2+gevent floor in {n} process{'es' if n != '1' else ''}",
                  f"locust_{label}_vs_floor")
        per_round_rows("locust", label)
    return table


def notes(out: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """How Locust's ok ops/s is defined, and a warning for each run that other load on the machine skewed."""
    lines = [f"Locust ok ops/s = ok operations of the history whose complete_ts lies in "
             f"[first invoke + {settings['ramp']} s, min(first invoke + {settings['duration']} s, last ok)], "
             "divided by that window (history-based); CPU = cores busy in the same window, from /proc"]
    rounds = out.get("rounds", [])
    for rnd in rounds:
        tag = f"round {rnd['round']} " if len(rounds) > 1 else ""
        runs = [(f"{tag}pgbench", rnd.get("pgbench")), (f"{tag}floor", rnd.get("floor")),
                (f"{tag}floor, 2 processes", rnd.get("floor_p2"))]
        runs += [(f"{tag}locust {k}", v) for k, v in rnd["locust"].items()]
        for name, res in runs:
            cpu = (res or {}).get("cpu") or {}
            other = cpu.get("other_cores")
            if other is not None and other > OTHER_LOAD_WARN:
                who = ", ".join(f"{p['cmd'][:60]} {p['cores']:.2f}" for p in cpu.get("other_processes", []))
                lines.append(f"WARNING: {other:.2f} cores busy outside client, server and softirq during {name} "
                             f"(other load: {who or 'no single process'}): its figures are skewed")
    return lines


PHASE = Phase(name="throughput", flag="skip-pgbench-ratio", help="skip the throughput phase (no server is started)",
              run=run, rows=rows, add_arguments=add_arguments, steps=steps, notes=notes)

__all__ = ["INITIAL_BALANCE", "PHASE", "STRATEGY", "TARGET_RATIO"]
