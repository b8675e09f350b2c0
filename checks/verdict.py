"""The verdict of a run: every check and every gate, from ``reports/<run-id>/`` alone.

:func:`evaluate` is a pure function of the run directory (options, history, final state, stages, and
the baseline run it names): the live run and ``python -m checks --run DIR`` get the same verdict and the
same exit code.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from checks import (
    EXIT_ANOMALY,
    EXIT_OK,
    EXIT_SLA,
    EXIT_UNKNOWN,
    UNKNOWN,
    CheckResult,
    Checks,
    Evidence,
    exit_code,
    gates,
    gc_paused,
    result,
    run_checks,
)
from checks import faults as fault_checks
from checks import server as server_checks
from toolclash import scenario
from toolclash.history import History, read_history
from toolclash.run import read_json, write_json

EXIT_MEANING = {
    EXIT_OK: "every check valid, every SLA gate met",
    EXIT_ANOMALY: "a check found an anomaly: the data is wrong",
    EXIT_UNKNOWN: "verdict unknown: in-doubt operations or a lost process keep a check from deciding",
    EXIT_SLA: "data is right, but an SLA gate was missed",
}


class RunDirError(ValueError):
    """The run directory cannot be read (one-line message)."""


def spec_of(name: str) -> tuple[scenario.Scenario, Checks]:
    """A scenario and its checks (``RunDirError`` when this installation does not know it)."""
    try:
        sc = scenario.REGISTRY[name]
    except KeyError:
        raise RunDirError(f"the run names scenario {name!r}, which these checks do not know (known: "
                          f"{', '.join(scenario.REGISTRY)}); install the package that provides it") from None
    return sc, importlib.import_module(sc.checks).SPEC


def evaluate(run_dir: str | Path) -> dict[str, Any]:
    """Run every check and gate of the run in *run_dir*; pure function of the files there."""
    with gc_paused():
        return _evaluate(Path(run_dir))


def _evaluate(run: Path) -> dict[str, Any]:
    if not (run / "options.json").is_file():
        raise RunDirError(f"{run} is not a run directory (no options.json); pass reports/<run-id>")
    options = read_json(run / "options.json")
    settings = options.get("settings", {})
    specs = {name: spec_of(name) for name in options.get("scenarios", [])}
    history = read_history(run)
    results: list[CheckResult] = [_history_check(history)]
    figures: dict[str, Any] = {}
    all_gates: list[dict[str, Any]] = []
    stages = _load(run / "stages.json") or []
    for name, (sc, spec) in specs.items():
        final = _load(run / "final" / f"{name}.json")
        tools = frozenset(sc.tools)
        ops = [op for op in history.ops if op["tool"] in tools]
        limits = gates.thresholds(settings, {o.name: o.default for o in sc.options})
        if final is None:
            results.append(result(f"{name}.final_state", UNKNOWN, {}, None, "the final state was not captured"))
        else:
            results.extend(run_checks(spec, ops, final, history.incomplete))
        rejections = gates.BUSINESS_REJECTIONS | sc.rejections
        figures[name] = _figures(spec, ops, final, rejections)
        # a ramp gates the conflict rate per stage: the test plan's targets are per load level
        all_gates.extend(gates.sla_gates(figures[name], limits, name, conflict_rate=not stages))
        if final is not None and spec.gates is not None:
            all_gates.extend(spec.gates(ops, final, limits))
        for stage, stage_ops in gates.by_stage(ops, stages):
            if not stage_ops and ops:  # no agent of this kind ran in this stage (mixed ramp): nothing to gate
                continue
            scope = gates.stage_scope(name, stage)
            figures[scope] = _figures(spec, stage_ops, final, rejections)
            all_gates.extend(gates.sla_gates(figures[scope], {**limits, "gate_conflict_rate":
                                                               gates.stage_limit(stage, limits)}, scope))
    results.append(server_checks.sessions_closed(_load(run / "final" / "server.json")))
    faults = fault_checks.windows(run, history.ops)
    if faults:
        results.append(fault_checks.healed(faults))
        all_gates.extend(gates.recovery_gates(faults, gates.thresholds(settings)))
    aborted = fault_checks.aborted(run)
    if aborted:
        all_gates.append(gates.abort_gate(aborted))
    duration = _duration(history)
    summary = {"duration_s": duration, "scenarios": gates.summary(figures, duration)}
    baseline = _baseline(options, summary, settings)
    all_gates.extend(baseline.get("gates", []))
    code = exit_code(results, all_gates)
    return {"run_id": options.get("run_id"), "exit_code": code, "meaning": EXIT_MEANING[code],
            "checks": [r.to_dict() for r in results], "gates": all_gates, "figures": figures, "summary": summary,
            "baseline": baseline or None, "faults": faults, "aborted": aborted,
            "started_at": options.get("started_at"),
            "history": {"records": len(history.ops), "processes": history.processes,
                        "incomplete": history.incomplete}}


def _figures(spec: Checks, ops: list[Any], final: Mapping[str, Any] | None, rejections: frozenset[str]
             ) -> dict[str, Any]:
    fig = gates.figures(ops, rejections)
    if final is not None and spec.figures is not None:  # a scenario's own definitions hold per stage too
        fig.update(spec.figures(ops, final))
    return fig


def _duration(history: History) -> float:
    if not history.ops:
        return math.nan
    return max(op["complete_ts"] for op in history.ops) - min(op["invoke_ts"] for op in history.ops)


def _baseline(options: Mapping[str, Any], summary: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison with the run's ``--baseline`` (``{}`` without one): its gates count like every gate."""
    named = str(options.get("baseline") or settings.get("baseline") or "")
    if not named:
        return {}
    base_dir = Path(named)
    limits = gates.thresholds(settings)
    if not (base_dir / "checks.json").is_file():
        return {"baseline": named, "gates": [gates.missing_baseline(named)], "rows": []}
    base = read_json(base_dir / "checks.json")
    base_summary = base.get("summary")
    if base_summary is None:  # a run judged before summaries were written: rebuild it from its files
        base_summary = evaluate(base_dir)["summary"]
    found, rows = gates.baseline_gates(summary["scenarios"], base_summary["scenarios"], limits,
                                       str(base.get("run_id")))
    return {"baseline": named, "baseline_run_id": base.get("run_id"), "gates": found, "rows": rows}


def _load(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _history_check(history: History) -> CheckResult:
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
    lines.extend(fault_checks.render(verdict.get("faults") or [], verdict.get("aborted"), verdict.get("started_at")))
    for scope, fig in verdict.get("figures", {}).items():
        lines.append(f"{scope}: {fig['calls']} calls, ok {fig['ok']}, failed {fig['failed']}, "
                     f"rejected {fig['rejected']}, unknown {fig['unknown']}; attempts {fig['attempts']}, "
                     f"retries {fig['conflicts']} {fig['retries_by_cause'] or ''}; "
                     f"p50 {_fmt(fig['p50_ms'])} ms, p95 {_fmt(fig['p95_ms'])} ms, max {_fmt(fig['max_ms'])} ms")
    lines.append("")
    lines.append(f"exit code {verdict['exit_code']}: {verdict['meaning']}")
    return "\n".join(lines)
