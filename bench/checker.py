"""Checker-speed phase: a synthetic, valid credits run directory, then the checker timed on it.

The run directory is written with the project's own writers (``create_run_dir`` with the options a
run records, ``HistoryWriter`` of records made by ``make_op``, ``write_json``), so its format is the
real one. The history is what agents of the ``pessimistic`` strategy would have recorded: ok
deductions on ``accounts`` accounts, one poor account that runs dry (``fail`` /
``insufficient-funds``), a few calls ok after a deadlock retry, a few that gave up after retries,
and a few in doubt (``unknown``, interrupted during COMMIT) of which half took effect. The final
state matches: every account balances, and the ledger holds one row per applied call, chained per
account in ``seq`` order.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.phase import ROOT, BenchError, Context, Phase, Row, num, positive_int, row
from checks import credits as credit_checks
from checks import gates
from checks.verdict import evaluate
from toolclash.history import FAIL, OK, UNKNOWN, HistoryWriter, make_op, read_history
from toolclash.run import create_run_dir, read_json, write_final, write_json
from toolclash.scenario import get as scenario
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
FLUSH_EVERY = 50_000
TARGET_OPS_PER_S = 200_000


def generate(parent: Path, *, ops: int, accounts: int, seed: int, say: Say) -> Path:
    """Write a synthetic run directory under *parent*; return its path."""
    rng = random.Random(seed)
    run_id = f"synthetic-{ops}"
    settings = Settings.from_mapping({**GATES, "strategy": "pessimistic", "accounts": accounts}, ["credits"])
    run = create_run_dir(parent, run_id, {"scenarios": ["credits"], "settings": settings.public(),
                                          "synthetic": {"ops": ops, "accounts": accounts, "seed": seed}})
    procs = [f"synth-{k + 1}" for k in range(PROCESSES)]
    writers = [HistoryWriter(run / "history", run_id=run_id, process=p).start() for p in procs]
    balance = {a: RICH_BALANCE for a in range(1, accounts + 1)}
    balance[accounts] = POOR_BALANCE
    initial = dict(balance)
    version = dict.fromkeys(balance, 0)
    ledger: list[dict[str, Any]] = []
    base = time.time() - ops / 5000.0 - 60.0
    kinds = {"ok": 0, "retried_ok": 0, "insufficient_funds": 0, "gave_up": 0, "unknown_applied": 0,
             "unknown_not_applied": 0}
    for i in range(ops):
        k = i % PROCESSES
        w = writers[k]
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
            outcome, error_class, reason, attempts = FAIL, "40P01", "retries-exhausted", 10
            result = {"retries": {"deadlock": 9}, "backoff_s": 0.35, "sqlstates": ["40P01"] * 9}
            kinds["gave_up"] += 1
        elif before < amount:
            outcome, reason, result = FAIL, "insufficient-funds", {"before": before}
            kinds["insufficient_funds"] += 1
        else:
            outcome, applied = OK, True
            result = {"before": before, "after": before - amount}
            if rng.random() < RETRIED_SHARE:
                attempts = 2
                result.update(retries={"deadlock": 1}, backoff_s=0.0011, sqlstates=["40P01"])
                kinds["retried_ok"] += 1
            else:
                kinds["ok"] += 1
        if applied:
            balance[acct] = before - amount
            version[acct] += 1
            ledger.append({"seq": len(ledger) + 1, "op_id": op_id, "account_id": acct, "amount": amount,
                           "balance_before": before, "balance_after": before - amount, "agent": agent})
        w.record(make_op(run_id=run_id, op_id=op_id, process=w.process, agent=agent, tool=credit_checks.TOOL,
                         strategy="pessimistic", args={"account": acct, "amount": amount}, invoke_ts=invoke,
                         complete_ts=complete, outcome=outcome, attempts=attempts, error_class=error_class,
                         reason=reason, result=result))
        if (i + 1) % FLUSH_EVERY == 0:
            for wr in writers:
                wr.flush()
        if (i + 1) % 250_000 == 0:
            say(f"  generated {i + 1} operations")
    for wr in writers:
        wr.close()
    final = {"credit_accounts": [{"id": a, "balance": balance[a], "initial_balance": initial[a],
                                  "version": version[a]} for a in sorted(balance)],
             "credit_ledger": ledger}
    write_final(run / "final" / "credits.json", final)
    write_json(run / "final" / "server.json", {"sessions": [], "prepared_xacts": [], "server_version": "synthetic",
                                               "waited_s": 0.0})
    write_json(run / "synthetic.json", {"kinds": kinds, "ledger_rows": len(ledger)})
    return run


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _invalid(results: list[dict[str, Any]]) -> list[str]:
    return [f"{c['name']}={c['valid']} ({c.get('summary', '')})" for c in results if c["valid"] is not True]


def run_checker(*, ops: int, accounts: int, repeat: int, seed: int, say: Say,
                keep_dir: Path | None = None) -> dict[str, Any]:
    """Generate, time evaluate() and check_all() *repeat* times each; return the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="toolclash-bench-checker-"))
    try:
        say(f"checker: generating a synthetic valid run of {ops} operations on {accounts} accounts")
        gen_s, run = _timed(lambda: generate(tmp, ops=ops, accounts=accounts, seed=seed, say=say))
        size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
        synthetic = read_json(run / "synthetic.json")
        say(f"  written in {gen_s:.1f} s: {run} ({size / 1e6:.0f} MB), {synthetic['ledger_rows']} ledger rows")

        eval_times: list[float] = []
        for n in range(repeat):
            seconds, verdict = _timed(lambda: evaluate(run))
            eval_times.append(seconds)
            if verdict["exit_code"] != 0:
                why = "; ".join(_invalid(verdict["checks"])) or str(verdict["gates"])
                raise BenchError(f"the checker judged the synthetic valid run exit code {verdict['exit_code']} "
                                 f"({verdict['meaning']}): {why}")
            say(f"  evaluate() #{n + 1}: {seconds:.2f} s = {ops / seconds:,.0f} ops/s (verdict exit code 0)")
            del verdict

        say("checker: timing the parts (read_history, final state, check_all and each check, SLA figures)")
        read_s, history = _timed(lambda: read_history(run))
        final_s, final = _timed(lambda: read_json(run / "final" / "credits.json"))
        filter_s, deducts = _timed(lambda: [op for op in history.ops if op["tool"] == credit_checks.TOOL])
        rejections = gates.BUSINESS_REJECTIONS | scenario("credits").rejections
        figures_s, _ = _timed(lambda: gates.figures(deducts, rejections))
        check_times: list[float] = []
        for n in range(repeat):
            seconds, results = _timed(lambda: credit_checks.check_all(history.ops, final))
            check_times.append(seconds)
            bad = _invalid([r.to_dict() for r in results])
            if bad:
                raise BenchError(f"check_all judged the synthetic valid history invalid: {'; '.join(bad)}")
            say(f"  check_all() #{n + 1}: {seconds:.2f} s = {ops / seconds:,.0f} ops/s (every check valid)")
        parts: dict[str, float] = {}
        parts["view (CreditsView indexes)"], view = _timed(lambda: credit_checks.CreditsView(history.ops, final))
        for name in ("conservation", "no_negative", "ledger_matches_history", "lost_updates"):
            check: Callable[[credit_checks.CreditsView], Any] = getattr(credit_checks, name)
            parts[name], _ = _timed(partial(check, view))
        evaluate_s = statistics.median(eval_times)
        check_all_s = statistics.median(check_times)
        return {
            "ops": ops, "accounts": accounts, "seed": seed, "repeat": repeat,
            "run_dir_mb": round(size / 1e6, 1), "generate_s": round(gen_s, 3), "synthetic": synthetic,
            "evaluate_s": [round(t, 3) for t in eval_times], "evaluate_median_s": round(evaluate_s, 3),
            "evaluate_ops_per_s": ops / evaluate_s,
            "check_all_s": [round(t, 3) for t in check_times], "check_all_median_s": round(check_all_s, 3),
            "check_all_ops_per_s": ops / check_all_s,
            "parts_s": {"read_history": round(read_s, 3), "read_final_state": round(final_s, 3),
                        "filter_by_tool": round(filter_s, 3), "sla_figures": round(figures_s, 3),
                        **{f"check_all: {k}": round(v, 3) for k, v in parts.items()}},
            "note": "files were just written, so they are read from the page cache: read_history is parse "
                    "time, not disk time",
        }
    finally:
        if keep_dir is not None and tmp.exists():
            keep_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp), str(keep_dir / tmp.name))
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ phase


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", type=positive_int, default=1_000_000, metavar="N",
                        help="operations in the synthetic history of the checker phase (default 1,000,000)")
    parser.add_argument("--checker-accounts", type=positive_int, default=100, metavar="N",
                        help="accounts of the synthetic history (default 100)")
    parser.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                        help="timed repetitions of evaluate() and check_all(); the median counts (default 3)")
    parser.add_argument("--keep-synthetic", action="store_true",
                        help="keep the synthetic run directory under reports/bench-<ts>/ (for profiling)")


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    ctx.say.phase(f"checker speed on a synthetic valid history of {args.ops} operations")
    keep = ROOT / "reports" / f"bench-{ctx.ts}" if args.keep_synthetic else None
    return run_checker(ops=args.ops, accounts=args.checker_accounts, repeat=args.repeat, seed=1, say=ctx.say,
                       keep_dir=keep)


def rows(ck: dict[str, Any]) -> list[Row]:
    if "error" in ck:
        return [row("checker", "FAILED")]
    out = [row(f"checker evaluate() ops/s ({ck['ops']:,} ops)", num(ck["evaluate_ops_per_s"], ",.0f"),
               f">= {TARGET_OPS_PER_S:,}", ck["evaluate_ops_per_s"] >= TARGET_OPS_PER_S),
           row("checker check_all() ops/s (in memory)", num(ck["check_all_ops_per_s"], ",.0f"),
               f">= {TARGET_OPS_PER_S:,}", ck["check_all_ops_per_s"] >= TARGET_OPS_PER_S)]
    out += [row(f"  {part} s", f"{secs:.2f}") for part, secs in ck["parts_s"].items()]
    return out


PHASE = Phase(name="checker", help="skip the checker-speed phase", run=run, rows=rows, add_arguments=add_arguments)
