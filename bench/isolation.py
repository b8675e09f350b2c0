"""Isolation-checker phase: a synthetic, valid register run directory, then the dependency-graph checks timed on it.

The history is what register agents at SERIALIZABLE would have recorded, generated as a serial execution: short
transactions of 2 to 4 reads and writes over ``keys`` keys (each read sees the value last written, each value
written unique), a share aborted on purpose (``fail`` / ``aborted-by-agent``, never logged), and a few in doubt
(``unknown``, interrupted during COMMIT) of which half committed. The final state holds every register and the
write log in commit order. The run directory is written with the project's own writers (``create_run_dir``,
``HistoryWriter`` of records made by ``make_op``, ``write_json``), so its format is the real one; the verdict must
be valid (exit code 0), else the phase fails.
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
from pathlib import Path
from typing import Any

from bench.phase import Context, Phase, Row, num, positive_int, row
from checks import register as register_checks
from checks.graph import analyse
from toolclash.history import FAIL, OK, UNKNOWN, HistoryWriter, Roster, make_op, read_history
from toolclash.run import create_run_dir, read_json, write_final, write_json
from toolclash.settings import Settings

Say = Callable[[str], None]

PROCESSES = 4
AGENTS_PER_PROCESS = 25
ABORT_SHARE = 0.05
UNKNOWN_SHARE = 0.0004
FLUSH_EVERY = 50_000
TARGET_OPS_PER_S = 200_000
GATES = {"gate_conflict_rate": 0.05, "gate_p95_ms": 2000.0, "gate_success_rate": 0.999}


def generate(parent: Path, *, ops: int, keys: int, seed: int, say: Say) -> Path:
    """Write a synthetic valid register run directory under *parent*; return its path."""
    rng = random.Random(seed)
    run_id = f"synthetic-register-{ops}"
    settings = Settings.from_mapping({**GATES, "strategy": "serializable", "register_keys": keys}, ["register"])
    run = create_run_dir(parent, run_id, {"scenarios": ["register"], "settings": settings.public(),
                                          "synthetic": {"ops": ops, "keys": keys, "seed": seed}})
    procs = [f"synth-{k + 1}" for k in range(PROCESSES)]
    roster = Roster(run, run_id)  # the processes that took part, as a live run lists them (else: unknown)
    for p in procs:
        roster.join(p, process=p, role="local")
    writers = [HistoryWriter(run / "history", run_id=run_id, process=p).start() for p in procs]
    value: dict[int, str | None] = dict.fromkeys(range(1, keys + 1))
    log: list[list[Any]] = []
    base = time.time() - ops / 5000.0 - 60.0
    kinds = {"ok": 0, "aborted": 0, "unknown_committed": 0, "unknown_not_committed": 0}
    for i in range(ops):
        w = writers[i % PROCESSES]
        op_id = w.new_op_id()
        agent = f"{w.process}-a{1 + (i // PROCESSES) % AGENTS_PER_PROCESS}"
        planned: list[list[Any]] = [["r" if rng.random() < 0.5 else "w", rng.randint(1, keys), None]
                                    for _ in range(rng.randint(2, 4))]
        r = rng.random()
        commit = r >= ABORT_SHARE + UNKNOWN_SHARE or (r < UNKNOWN_SHARE and rng.random() < 0.5)
        done: list[list[Any]] = []
        local: dict[int, str | None] = {}
        for j, (f, k, _) in enumerate(planned):
            k = int(k)
            if f == "r":
                done.append(["r", k, local[k] if k in local else value[k]])
            else:
                local[k] = f"{op_id}:{j}"
                done.append(["w", k, local[k]])
        if commit:
            for f, k, v in done:
                if f == "w":
                    log.append([len(log) + 1, k, v, op_id])
            value.update(local)
        invoke = base + i / 5000.0
        if r < UNKNOWN_SHARE:
            outcome, reason, error_class, result = UNKNOWN, "interrupted-during-commit", "interrupted", {}
            kinds["unknown_committed" if commit else "unknown_not_committed"] += 1
        elif r < UNKNOWN_SHARE + ABORT_SHARE:
            outcome, reason, error_class, result = FAIL, "aborted-by-agent", None, {"txn": done}
            kinds["aborted"] += 1
        else:
            outcome, reason, error_class, result = OK, None, None, {"txn": done}
            kinds["ok"] += 1
        w.record(make_op(run_id=run_id, op_id=op_id, process=w.process, agent=agent, tool=register_checks.TOOL,
                         strategy="serializable", args={"txn": planned, "abort": outcome == FAIL}, invoke_ts=invoke,
                         complete_ts=invoke + rng.uniform(0.001, 0.030), outcome=outcome, attempts=1,
                         error_class=error_class, reason=reason, result=result))
        if (i + 1) % FLUSH_EVERY == 0:
            for wr in writers:
                wr.flush()
        if (i + 1) % 250_000 == 0:
            say(f"  generated {i + 1} transactions")
    for wr in writers:
        wr.close()
    write_final(run / "final" / "register.json", {"isolation": {"level": "serializable", "expect": ""},
                                                 "registers": [[k, v] for k, v in sorted(value.items())],
                                                 "register_log": log})
    write_json(run / "final" / "server.json", {"sessions": [], "prepared_xacts": [], "server_version": "synthetic",
                                               "waited_s": 0.0, "servers": {"DATABASE_URL": {
                                                   "prepared_xacts": [], "prepared_at_start": []}}})
    write_json(run / "synthetic.json", {"kinds": kinds, "log_rows": len(log)})
    return run


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run_isolation(*, ops: int, keys: int, repeat: int, seed: int, say: Say, out: dict[str, Any]) -> dict[str, Any]:
    """Generate, then time evaluate() in fresh processes (wall, CPU, peak memory, its steps) and the parts in memory
    (the view, the graph, the write log check); fill and return *out*."""
    from bench.checker import judge_in_child

    tmp = Path(tempfile.mkdtemp(prefix="toolclash-bench-isolation-"))
    try:
        say(f"isolation: generating a synthetic valid register run of {ops} transactions on {keys} keys")
        gen_s, run = _timed(lambda: generate(tmp, ops=ops, keys=keys, seed=seed, say=say))
        out.update(ops=ops, keys=keys, seed=seed, repeat=repeat, generate_s=round(gen_s, 3),
                   synthetic=read_json(run / "synthetic.json"))
        runs = []
        for n in range(repeat):
            got = judge_in_child(run, True)
            runs.append(got)
            say(f"  evaluate() #{n + 1}: {got['wall_s']:.2f} s wall = {ops / got['wall_s']:,.0f} ops/s, "
                f"{got['cpu_s']:.2f} s CPU, peak {got['max_rss_mb']:,.0f} MB (verdict exit code 0)")
        out["evaluate_s"] = [round(r["wall_s"], 3) for r in runs]
        out["evaluate_cpu_s"] = [round(r["cpu_s"], 3) for r in runs]
        out["evaluate_ops_per_s"] = ops / statistics.median(r["wall_s"] for r in runs)
        out["evaluate_ops_per_cpu_s"] = ops / statistics.median(r["cpu_s"] for r in runs)
        out["max_rss_mb"] = round(max(r["max_rss_mb"] for r in runs))
        out["steps_s"] = min(runs, key=lambda r: r["wall_s"])["steps"]
        read_s, history = _timed(lambda: read_history(run))
        final = read_json(run / "final" / "register.json")
        view_s, view = _timed(lambda: register_checks.RegisterView(history.ops, final))
        graph_s, analysis = _timed(lambda: analyse(view.committed, view.versions, aborted=view.aborted))
        log_s, _ = _timed(lambda: register_checks.write_log(view))
        out["graph"] = analysis.graph_figures()
        out["parts_s"] = {"read_history (records, for the parts below)": round(read_s, 3),
                          "view (transactions, version order)": round(view_s, 3),
                          "graph: edges, components, cycles": round(graph_s, 3),
                          "write log check": round(log_s, 3)}
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ phase


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--isolation-ops", type=positive_int, default=1_000_000, metavar="N",
                        help="transactions in the synthetic register history of the isolation phase (default "
                        "1,000,000)")
    parser.add_argument("--isolation-keys", type=positive_int, default=100, metavar="N",
                        help="keys of the synthetic register history (default 100)")
    parser.add_argument("--isolation-repeat", type=positive_int, default=3, metavar="N",
                        help="timed repetitions of evaluate() and check_all() of the isolation phase; the median "
                        "counts (default 3)")


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    ctx.say.phase(f"isolation checker speed on a synthetic register history of {args.isolation_ops} transactions")
    return run_isolation(ops=args.isolation_ops, keys=args.isolation_keys, repeat=args.isolation_repeat, seed=1,
                         say=ctx.say, out=ctx.keep({}))


def rows(res: dict[str, Any]) -> list[Row]:
    if "error" in res or "evaluate_ops_per_s" not in res:
        return [row("isolation checker", "FAILED", str(res.get("error", "interrupted")), False)]
    out = [row(f"isolation evaluate() ops/s ({res['ops']:,} txns, wall)", num(res["evaluate_ops_per_s"], ",.0f"),
               f">= {TARGET_OPS_PER_S:,}", res["evaluate_ops_per_s"] >= TARGET_OPS_PER_S),
           row(f"  CPU s (txns per CPU s {res['evaluate_ops_per_cpu_s']:,.0f})",
               f"{statistics.median(res['evaluate_cpu_s']):.2f}"),
           row("  peak memory of the process, MB", f"{res['max_rss_mb']:,}")]
    out += [row(f"  {step} s", f"{secs:.2f}") for step, secs in res.get("steps_s", {}).items()]
    out += [row(f"  {part} s", f"{secs:.2f}") for part, secs in res.get("parts_s", {}).items()]
    if "graph" in res:
        out.append(row("  graph edges", f"{res['graph']['edges']:,}"))
    return out


PHASE = Phase(name="isolation", help="skip the isolation-checker speed phase", run=run, rows=rows,
              add_arguments=add_arguments)

if __name__ == "__main__":
    import sys

    from bench.phase import run_alone

    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__)
    add_arguments(parser)
    sys.exit(run_alone(PHASE, parser.parse_args(), "isolation"))
