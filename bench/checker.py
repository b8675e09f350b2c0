"""Checker-speed phase: synthetic, valid credits run directories of 1M and 10M operations, and the verdict timed on
them in fresh processes (wall time, CPU time, peak memory), beside the reference in the same run: the same 1M
history as JSON lines judged over Python records (how every verdict was computed before the columnar path).

The run directories are written with the project's own writers (``create_run_dir`` with the options a run records,
``HistoryWriter`` of records made by ``make_op``, ``write_final``), so their format is the real one. The history is
what agents of the ``pessimistic`` strategy would have recorded: ok deductions on ``accounts`` accounts, one poor
account that runs dry (``fail`` / ``insufficient-funds``), a few calls ok after a deadlock retry, a few that gave up
after retries, and a few in doubt (``unknown``, interrupted during COMMIT) of which half took effect. The final
state matches: every account balances, and the ledger holds one row per applied call, chained per account in
``seq`` order.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.phase import ROOT, BenchError, Context, Phase, Row, num, positive_int, row
from checks import credits as credit_checks
from toolclash.history import FAIL, OK, UNKNOWN, HistoryWriter, Roster, history_files, iter_records, make_op
from toolclash.run import create_run_dir, read_json, write_final, write_json
from toolclash.settings import Settings

Say = Callable[[str], None]

PROCESSES = 4
AGENTS_PER_PROCESS = 25
RICH_BALANCE = 10**12
POOR_BALANCE = 1_000
"""The last account starts here and runs dry after about 180 deductions."""
RETRIED_SHARE = 0.01
"""ok after one deadlock retry."""
GAVE_UP_SHARE = 0.0002
"""fail after exhausting retries (counts against the success-rate gate: keep it under 0.1 %)."""
UNKNOWN_SHARE = 0.0004
"""in doubt (interrupted during COMMIT); half of them took effect."""
GATES = {"gate_conflict_rate": 0.05, "gate_p95_ms": 2000.0, "gate_success_rate": 0.999}
CHUNK = 100_000
TARGET_OPS_PER_S = 1_000_000


def generate(parent: Path, *, ops: int, accounts: int, seed: int, say: Say) -> Path:
    """Write a synthetic run directory under *parent*; return its path."""
    import pyarrow as pa

    rng = random.Random(seed)
    run_id = f"synthetic-{ops}"
    settings = Settings.from_mapping({**GATES, "strategy": "pessimistic", "accounts": accounts}, ["credits"])
    run = create_run_dir(parent, run_id, {"scenarios": ["credits"], "settings": settings.public(),
                                          "synthetic": {"ops": ops, "accounts": accounts, "seed": seed}})
    procs = [f"synth-{k + 1}" for k in range(PROCESSES)]
    roster = Roster(run, run_id)  # the processes that took part, as a live run lists them
    for p in procs:
        roster.join(p, process=p, role="local")
    writers = [HistoryWriter(run / "history", run_id=run_id, process=p).start() for p in procs]
    balance = {a: RICH_BALANCE for a in range(1, accounts + 1)}
    balance[accounts] = POOR_BALANCE
    initial = dict(balance)
    version = dict.fromkeys(balance, 0)
    ledger: list[pa.Table] = []
    applied_rows = 0
    base = time.time() - ops / 5000.0 - 60.0
    kinds = {"ok": 0, "retried_ok": 0, "insufficient_funds": 0, "gave_up": 0, "unknown_applied": 0,
             "unknown_not_applied": 0}
    retried = {"retries": {"deadlock": 1}, "backoff_s": 0.0011, "sqlstates": ["40P01"]}
    gave_up = {"retries": {"deadlock": 9}, "backoff_s": 0.35, "sqlstates": ["40P01"] * 9}
    for start in range(0, ops, CHUNK):
        cols: dict[str, list[Any]] = {k: [] for k in ("seq", "op_id", "account_id", "amount", "balance_before",
                                                      "balance_after", "agent")}
        for i in range(start, min(ops, start + CHUNK)):
            w = writers[i % PROCESSES]
            op_id = w.new_op_id()
            agent = f"{w.process}-a{1 + (i // PROCESSES) % AGENTS_PER_PROCESS}"
            acct, amount = rng.randint(1, accounts), rng.randint(1, 10)
            invoke = base + i / 5000.0
            complete = invoke + rng.uniform(0.001, 0.060)
            attempts, error_class, reason = 1, None, None
            result: dict[str, Any] = {}
            before = balance[acct]
            applied = False
            r = rng.random()
            if r < UNKNOWN_SHARE:
                outcome, error_class, reason = UNKNOWN, "interrupted", "interrupted-during-commit"
                applied = before >= amount and rng.random() < 0.5
                kinds["unknown_applied" if applied else "unknown_not_applied"] += 1
            elif r < UNKNOWN_SHARE + GAVE_UP_SHARE:
                outcome, error_class, reason, attempts, result = FAIL, "40P01", "retries-exhausted", 10, dict(gave_up)
                kinds["gave_up"] += 1
            elif before < amount:
                outcome, reason, result = FAIL, "insufficient-funds", {"before": before}
                kinds["insufficient_funds"] += 1
            else:
                outcome, applied = OK, True
                result = {"before": before, "after": before - amount}
                if rng.random() < RETRIED_SHARE:
                    attempts = 2
                    result.update(retried)
                    kinds["retried_ok"] += 1
                else:
                    kinds["ok"] += 1
            if applied:
                balance[acct] = before - amount
                version[acct] += 1
                applied_rows += 1
                for key, value in (("seq", applied_rows), ("op_id", op_id), ("account_id", acct), ("amount", amount),
                                   ("balance_before", before), ("balance_after", before - amount), ("agent", agent)):
                    cols[key].append(value)
            w.record(make_op(run_id=run_id, op_id=op_id, process=w.process, agent=agent, tool=credit_checks.TOOL,
                             strategy="pessimistic", args={"account": acct, "amount": amount}, invoke_ts=invoke,
                             complete_ts=complete, outcome=outcome, attempts=attempts, error_class=error_class,
                             reason=reason, result=result))
        for wr in writers:
            wr.flush()
        ledger.append(pa.table(cols))
        if (start + CHUNK) % 1_000_000 == 0:
            say(f"  generated {start + CHUNK:,} operations")
    for wr in writers:
        wr.close()
    final = {"credit_accounts": [{"id": a, "balance": balance[a], "initial_balance": initial[a],
                                  "version": version[a]} for a in sorted(balance)],
             "credit_ledger": pa.concat_tables(ledger)}
    write_final(run / "final" / "credits.json", final)
    write_json(run / "final" / "server.json", {"sessions": [], "prepared_xacts": [], "server_version": "synthetic",
                                               "waited_s": 0.0, "servers": {"DATABASE_URL": {
                                                   "prepared_xacts": [], "prepared_at_start": []}}})
    write_json(run / "synthetic.json", {"kinds": kinds, "ledger_rows": applied_rows})
    return run


def as_json_lines(run: Path, parent: Path) -> Path:
    """A copy of *run* as an older toolclash wrote it: the history as JSON lines, the final state as JSON only."""
    import orjson

    copy = parent / f"{run.name}-jsonl"
    (copy / "history").mkdir(parents=True)
    (copy / "final").mkdir()
    for name in ("options.json", "processes.json", "final/credits.json", "final/server.json"):
        shutil.copyfile(run / name, copy / name)
    for process, path in history_files(run):
        records = list(iter_records(path))
        (copy / "history" / f"{process}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        shutil.copyfile(path.with_suffix(".done.json"), copy / "history" / f"{process}.done.json")
    return copy


CHILD = """
import json, logging, resource, sys, time
t0 = time.perf_counter()
import numpy, orjson, pandas, pyarrow, pyarrow.compute, pyarrow.ipc, pyarrow.json  # pyarrow imports pandas anyway
from checks import columns, credits, credits_fast, parse
import importlib
from checks.verdict import evaluate, spec_of
for name in json.load(open(sys.argv[1] + "/options.json"))["scenarios"]:
    importlib.import_module(spec_of(name)[1].columnar or "checks")
imports = time.perf_counter() - t0
steps = {}
class H(logging.Handler):
    def emit(self, record):
        msg = record.getMessage()
        if ": done in " in msg:
            what, _, rest = msg.partition(": done in ")
            steps[what] = float(rest.split(" s")[0])
        elif msg.startswith("read ") and " in " in msg:
            steps["read the history"] = float(msg.split(" in ", 1)[1].split(" s")[0])
log = logging.getLogger("toolclash.checks"); log.addHandler(H()); log.setLevel(logging.INFO)
run, columnar = sys.argv[1], sys.argv[2] == "columnar"
c0, w0 = time.process_time(), time.perf_counter()
verdict = evaluate(run, columnar=columnar)
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
bad = [f"{c['name']}={c['valid']}" for c in verdict["checks"] if c["valid"] is not True]
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "exit_code": verdict["exit_code"], "bad": bad, "imports_s": imports,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": steps}))
"""


def judge_in_child(run: Path, columnar: bool) -> dict[str, Any]:
    """evaluate() of *run* in a fresh Python process: its wall and CPU seconds (imports excluded: they are timed
    apart, once per process whatever the history) and peak RSS."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(run), "columnar" if columnar else "records"],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise BenchError(f"evaluate() of {run.name} failed: {done.stderr.strip().splitlines()[-1:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if out["exit_code"] != 0:
        raise BenchError(f"the checker judged the synthetic valid run {run.name} exit code {out['exit_code']}: "
                         f"{'; '.join(out['bad'])}")
    return out


def measure(run: Path, ops: int, columnar: bool, repeat: int, say: Say, label: str) -> dict[str, Any]:
    runs = []
    for n in range(repeat):
        got = judge_in_child(run, columnar)
        runs.append(got)
        say(f"  {label} #{n + 1}: {got['wall_s']:.2f} s wall = {ops / got['wall_s']:,.0f} ops/s, "
            f"{got['cpu_s']:.2f} s CPU, peak {got['max_rss_mb']:,.0f} MB")
    wall = statistics.median(r["wall_s"] for r in runs)
    cpu = statistics.median(r["cpu_s"] for r in runs)
    return {"wall_s": [round(r["wall_s"], 3) for r in runs], "cpu_s": [round(r["cpu_s"], 3) for r in runs],
            "ops_per_s": ops / wall, "ops_per_cpu_s": ops / cpu, "median_wall_s": round(wall, 3),
            "median_cpu_s": round(cpu, 3), "max_rss_mb": round(max(r["max_rss_mb"] for r in runs)),
            "imports_s": round(statistics.median(r["imports_s"] for r in runs), 3),
            "steps_s": min(runs, key=lambda r: r["wall_s"])["steps"]}


def run_checker(*, ops: int, big_ops: int, accounts: int, repeat: int, seed: int, say: Say,
                keep_dir: Path | None = None, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate, then time evaluate() (columnar, and the reference over records) in fresh processes."""
    out = {} if out is None else out
    tmp = Path(tempfile.mkdtemp(prefix="toolclash-bench-checker-"))
    try:
        for label, n in (("1M", ops), ("10M", big_ops)):
            if not n:
                continue
            say(f"checker: generating a synthetic valid run of {n:,} operations on {accounts} accounts")
            started = time.perf_counter()
            run = generate(tmp, ops=n, accounts=accounts, seed=seed, say=say)
            size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
            say(f"  written in {time.perf_counter() - started:.0f} s ({size / 1e6:,.0f} MB)")
            fig: dict[str, Any] = {"ops": n, "run_dir_mb": round(size / 1e6), "synthetic": read_json(
                run / "synthetic.json")}
            fig["columnar"] = measure(run, n, True, repeat if label == "1M" else 1, say, "evaluate() columnar")
            if label == "1M":
                reference = as_json_lines(run, tmp)
                say("  the reference: the same history as JSON lines, judged over Python records")
                fig["reference"] = measure(reference, n, False, 1, say, "evaluate() reference")
                fig["speedup_wall"] = fig["reference"]["median_wall_s"] / fig["columnar"]["median_wall_s"]
                fig["speedup_cpu"] = fig["reference"]["median_cpu_s"] / fig["columnar"]["median_cpu_s"]
                shutil.rmtree(reference, ignore_errors=True)
            out[label] = fig
            if keep_dir is not None:
                keep_dir.mkdir(parents=True, exist_ok=True)
                shutil.move(str(run), str(keep_dir / run.name))
            else:
                shutil.rmtree(run, ignore_errors=True)
        out["note"] = ("each evaluate() runs in a fresh process (imports not timed; peak RSS includes them); files "
                       "were just written, so they are read from the page cache")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ phase


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", type=positive_int, default=1_000_000, metavar="N",
                        help="operations in the synthetic history of the checker phase (default 1,000,000)")
    parser.add_argument("--checker-big-ops", type=int, default=10_000_000, metavar="N",
                        help="operations in its second, big history (default 10,000,000; 0: none)")
    parser.add_argument("--checker-accounts", type=positive_int, default=100, metavar="N",
                        help="accounts of the synthetic history (default 100)")
    parser.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                        help="timed repetitions of evaluate() on the 1M history; the median counts (default 3)")
    parser.add_argument("--keep-synthetic", action="store_true",
                        help="keep the synthetic run directories under reports/bench-<ts>/ (for profiling)")


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    ctx.say.phase(f"checker speed on synthetic valid histories of {args.ops:,} and {args.checker_big_ops:,} "
                  "operations")
    keep = ROOT / "reports" / f"bench-{ctx.ts}" if args.keep_synthetic else None
    return run_checker(ops=args.ops, big_ops=args.checker_big_ops, accounts=args.checker_accounts,
                       repeat=args.repeat, seed=1, say=ctx.say, keep_dir=keep, out=ctx.keep({}))


def rows(ck: dict[str, Any]) -> list[Row]:
    if "error" in ck or "1M" not in ck:
        return [row("checker", "FAILED", str(ck.get("error", "interrupted")), False)]
    out = []
    for label in ("1M", "10M"):
        fig = ck.get(label)
        if not fig or "columnar" not in fig:
            continue
        col = fig["columnar"]
        out.append(row(f"checker evaluate() ops/s ({fig['ops']:,} ops, wall)", num(col["ops_per_s"], ",.0f"),
                       f">= {TARGET_OPS_PER_S:,}", col["ops_per_s"] >= TARGET_OPS_PER_S))
        out.append(row(f"  CPU s (ops per CPU s {col['ops_per_cpu_s']:,.0f})", f"{col['median_cpu_s']:.2f}"))
        out.append(row("  peak memory of the process, MB", f"{col['max_rss_mb']:,}"))
        out += [row(f"  {step} s", f"{secs:.2f}") for step, secs in col["steps_s"].items()]
        ref = fig.get("reference")
        if ref:
            out.append(row("  reference: JSON lines + checks over records, ops/s", num(ref["ops_per_s"], ",.0f")))
            out.append(row("  reference CPU s / peak MB", f"{ref['median_cpu_s']:.2f} / {ref['max_rss_mb']:,}"))
            out.append(row("  speedup (wall / CPU)", f"{fig['speedup_wall']:.1f}× / {fig['speedup_cpu']:.1f}×"))
    return out


PHASE = Phase(name="checker", help="skip the checker-speed phase", run=run, rows=rows, add_arguments=add_arguments)

if __name__ == "__main__":
    from bench.phase import run_alone

    parser = argparse.ArgumentParser(prog="python -m bench.checker", description=__doc__)
    add_arguments(parser)
    sys.exit(run_alone(PHASE, parser.parse_args(), "checker"))
