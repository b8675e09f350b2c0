"""The verdict of a run: every check and every SLA gate, from ``reports/<run-id>/`` alone."""

from __future__ import annotations

import importlib
import math
from bisect import bisect_right
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from checks import (
    EXIT_ANOMALY,
    EXIT_OK,
    EXIT_SLA,
    EXIT_UNKNOWN,
    UNKNOWN,
    CheckResult,
    exit_code,
    gc_paused,
    guarded_many,
    result,
    sla,
)
from checks import server as server_checks
from toolclash.history import read_history
from toolclash.run import read_json, write_json

CHECKS: dict[str, str] = {
    # scenario name -> checks module; one line per scenario. A checks module has TOOL (or TOOLS, the
    # history's tool names it judges), check_all(ops, final, incomplete) -> [CheckResult], and optionally
    # gates(ops, final, settings) -> [gate dicts as sla.gates() makes], figures(ops, final) -> dict, and
    # BUSINESS_REJECTIONS (fail reasons that are correct answers, left out of the success rate).
    "credits": "checks.credits",
    "config": "checks.config",
    "deadlock": "checks.deadlock",
    "crossservice": "checks.crossservice",
    "queue": "checks.queue",
    "pool": "checks.pool",
    "workspace": "checks.workspace",
}

GATE_DEFAULTS = {"gate_conflict_rate": 0.05, "gate_p95_ms": 2000.0, "gate_success_rate": 0.999,
                 "stage_gate_conflict_low": 0.05, "stage_gate_conflict_high": 0.20}
SMALL_STAGE = 10
"""A ramp stage of at most this many agents is gated at ``stage_gate_conflict_low``, a larger one at ``…_high``."""
"""Used when a run's options.json lacks a threshold (the normal-profile defaults)."""

EXIT_MEANING = {
    EXIT_OK: "every check valid, every SLA gate met",
    EXIT_ANOMALY: "a check found an anomaly: the data is wrong",
    EXIT_UNKNOWN: "verdict unknown: in-doubt operations or a lost process keep a check from deciding",
    EXIT_SLA: "data is right, but an SLA gate was missed",
}


class RunDirError(ValueError):
    """The run directory cannot be read (one-line message)."""


def evaluate(run_dir: str | Path) -> dict[str, Any]:
    """Run every check and gate of the run in *run_dir*; pure function of the files there."""
    with gc_paused():
        return _evaluate(run_dir)


def _evaluate(run_dir: str | Path) -> dict[str, Any]:
    run = Path(run_dir)
    if not (run / "options.json").is_file():
        raise RunDirError(f"{run} is not a run directory (no options.json); pass reports/<run-id>")
    options = read_json(run / "options.json")
    all_settings = options.get("settings", {})
    settings = {**GATE_DEFAULTS, **{k: v for k, v in all_settings.items() if k in GATE_DEFAULTS}}
    unknown = [s for s in options.get("scenarios", []) if s not in CHECKS]
    if unknown:
        raise RunDirError(f"{run} names scenario(s) these checks do not know: {', '.join(unknown)} "
                          f"(known: {', '.join(CHECKS)}); update toolclash")
    history = read_history(run)
    results: list[CheckResult] = []
    results.append(_history_check(history))
    figures: dict[str, Any] = {}
    gates: list[dict[str, Any]] = []
    server = _load(run / "final" / "server.json")
    stages = _load(run / "stages.json") or []
    for scenario in options.get("scenarios", []):
        module = importlib.import_module(CHECKS[scenario])
        final = _load(run / "final" / f"{scenario}.json")
        tools = frozenset(getattr(module, "TOOLS", None) or (module.TOOL,))
        ops = [op for op in history.ops if op["tool"] in tools]
        if final is None:
            results.append(result(f"{scenario}.final_state", UNKNOWN, {},
                                  None, "the final state was not captured"))
        else:
            check_all: Callable[..., list[CheckResult]] = module.check_all
            results.extend(guarded_many(f"{scenario}.checks",
                                        partial(check_all, ops, final, history.incomplete)))
        rejections = sla.BUSINESS_REJECTIONS | frozenset(getattr(module, "BUSINESS_REJECTIONS", ()))
        fig = sla.figures(ops, rejections)
        if final is not None and hasattr(module, "figures"):
            fig.update(module.figures(ops, final))
        figures[scenario] = fig
        overall = sla.gates(fig, settings, scenario)
        if stages:  # a ramp: the seed's conflict targets are per load level, so each stage is gated at its own
            overall = [g for g in overall if g["gate"] != "conflict_rate"]
        gates.extend(overall)
        if final is not None and hasattr(module, "gates"):
            gates.extend(module.gates(ops, final, {**all_settings, **settings}))
        for stage, stage_ops in _by_stage(ops, stages):
            if not stage_ops and ops:  # no agent of this kind ran in this stage (mixed ramp): nothing to gate
                continue
            limit = settings["stage_gate_conflict_low" if stage["users"] <= SMALL_STAGE else "stage_gate_conflict_high"]
            scope = f"{scenario}.stage{stage['stage']}({stage['users']})"
            stage_fig = sla.figures(stage_ops, rejections)
            if final is not None and hasattr(module, "figures"):  # a scenario's own definitions hold per stage too
                stage_fig.update(module.figures(stage_ops, final))
            figures[scope] = stage_fig
            gates.extend(sla.gates(stage_fig, {**settings, "gate_conflict_rate": limit}, scope))
    results.append(server_checks.sessions_closed(server))
    code = exit_code(results, gates)
    return {"run_id": options.get("run_id"), "exit_code": code, "meaning": EXIT_MEANING[code],
            "checks": [r.to_dict() for r in results], "gates": gates, "figures": figures,
            "history": {"records": len(history.ops), "processes": history.processes,
                        "incomplete": history.incomplete}}


def _by_stage(ops: list[dict[str, Any]], stages: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[Any]]]:
    """Split *ops* by the ramp stage in which they were invoked (the first stage also takes earlier ops)."""
    if not stages:
        return []
    starts = [float(st["start"]) for st in stages]
    buckets: list[list[Any]] = [[] for _ in stages]
    for op in ops:
        buckets[max(0, bisect_right(starts, op["invoke_ts"]) - 1)].append(op)
    return list(zip(stages, buckets, strict=True))


def _load(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _history_check(history: Any) -> CheckResult:
    from checks import Evidence

    ev = Evidence()
    for process, why in sorted(history.incomplete.items()):
        ev.add({"process": process, "why": why})
    counts = {"records": len(history.ops), "processes": len(history.processes)}
    if ev:
        return result("history.complete", UNKNOWN, counts, ev,
                      f"{ev.total} process(es) did not deliver a complete history")
    return result("history.complete", True, counts, ev, "every process delivered its history")


def write(run_dir: str | Path, verdict: dict[str, Any]) -> Path:
    path = Path(run_dir) / "checks.json"
    write_json(path, verdict)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def render(verdict: dict[str, Any], *, evidence: int = 3) -> str:
    """The verdict as a plain-text table, with a few evidence items under each failing check."""
    lines = [f"toolclash verdict for run {verdict.get('run_id')}", ""]
    lines.append(f"{'check':<28} {'valid':<8} summary")
    lines.append("-" * 78)
    for c in verdict["checks"]:
        valid = {True: "true", False: "FALSE"}.get(c["valid"], "UNKNOWN")
        lines.append(f"{c['name']:<28} {valid:<8} {c.get('summary', '')}")
        if c["valid"] is not True:
            for item in c["evidence"][:evidence]:
                lines.append(f"{'':<4}- {item}")
            if c["evidence_total"] > evidence:
                lines.append(f"{'':<4}  … {c['evidence_total'] - evidence} more in checks.json")
    lines.append("")
    lines.append(f"{'SLA gate':<40} {'figure':>10}   {'threshold':<12} met")
    lines.append("-" * 78)
    for g in verdict["gates"]:
        fig = "n/a" if g["figure"] is None else _fmt(g["figure"])
        met = "yes" if g["met"] else "NO"
        note = f"  ({g['note']})" if g.get("note") else ""
        lines.append(f"{g['scope'] + '.' + g['gate']:<40} {fig:>10}   {g['op'] + ' ' + _fmt(g['threshold']):<12} "
                     f"{met}{note}")
    lines.append("")
    for scope, fig in verdict.get("figures", {}).items():
        lines.append(f"{scope}: {fig['calls']} calls, ok {fig['ok']}, failed {fig['failed']}, "
                     f"rejected {fig['rejected']}, unknown {fig['unknown']}; attempts {fig['attempts']}, "
                     f"retries {fig['conflicts']} {fig['retries_by_cause'] or ''}; "
                     f"p50 {_fmt(fig['p50_ms'])} ms, p95 {_fmt(fig['p95_ms'])} ms, max {_fmt(fig['max_ms'])} ms")
    lines.append("")
    lines.append(f"exit code {verdict['exit_code']}: {verdict['meaning']}")
    return "\n".join(lines)
