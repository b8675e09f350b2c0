"""The verdict of a run: every check and every gate, from ``reports/<run-id>/`` alone.

:func:`evaluate` is a pure function of the run directory (options, history, final state, stages, and
the baseline run it names): the live run and ``python -m checks --run DIR`` get the same verdict and the
same exit code.
"""

from __future__ import annotations

import importlib
import logging
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


progress = logging.getLogger("toolclash.checks")
"""Progress of a long verdict (``python -m checks`` shows it on a big history)."""


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
    progress.info("reading the history")
    history = read_history(run)
    progress.info(f"read {len(history.ops):,} operations from {len(history.processes)} process(es)")
    duplicates = duplicate_op_ids(history.ops)
    # What the scenario checks may not blame on the backend: the effects of a process whose history is
    # incomplete, and of an operation recorded more than once (its records are set aside, not picked from).
    doubt = frozenset(history.incomplete) | {str(op["process"]) for recs in duplicates.values() for op in recs}
    judged = [op for op in history.ops if op["op_id"] not in duplicates] if duplicates else history.ops
    results: list[CheckResult] = [_history_check(history), _op_ids_check(duplicates, len(history.ops))]
    figures: dict[str, Any] = {}
    all_gates: list[dict[str, Any]] = []
    stages = _load(run / "stages.json") or []
    for name, (sc, spec) in specs.items():
        final = _load(run / "final" / f"{name}.json")
        tools = frozenset(sc.tools)
        ops = [op for op in judged if op["tool"] in tools]
        progress.info(f"checking {name}: {len(ops):,} operations")
        limits = gates.thresholds(settings, {o.name: o.default for o in sc.options})
        if final is None:
            results.append(result(f"{name}.final_state", UNKNOWN, {}, None, "the final state was not captured"))
        else:
            results.extend(run_checks(spec, ops, final, doubt))
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
    server = _load(run / "final" / "server.json")
    results.append(server_checks.sessions_closed(server, doubt))
    results.append(server_checks.prepared_left(server))
    faults = fault_checks.windows(run, history.ops)
    if faults:
        results.append(fault_checks.healed(faults))
        all_gates.extend(gates.recovery_gates(faults, gates.thresholds(settings)))
    aborted = fault_checks.aborted(run)
    if aborted:
        all_gates.append(gates.abort_gate(aborted))
    if not history.attributable:
        _undecided(results, "a process of the run is not known by name, so its effects cannot be told from the "
                   "backend's" if history.roster is not None else "the run directory does not list the processes "
                   "that took part (processes.json), so a lost process's effects cannot be told from the backend's")
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
                        "incomplete": history.incomplete, "listed": history.roster,
                        "duplicate_op_ids": sorted(duplicates)}}


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
    """Every process listed in ``processes.json`` delivered a complete history (else: unknown, naming each)."""
    name = "history.complete"
    ev = Evidence()
    for process, why in sorted(history.incomplete.items()):
        ev.add({"process": process, "why": why})
    counts = {"records": len(history.ops), "processes": len(history.processes),
              "listed": None if history.roster is None else len(history.roster)}
    if history.roster is None:
        ev.add({"file": "processes.json", "why": "missing: a process whose history never arrived would be "
                                                 "invisible"})
        return result(name, UNKNOWN, counts, ev, "not checked: needs processes.json, the list of the processes "
                      "that took part")
    if ev:
        return result(name, UNKNOWN, counts, ev, f"{ev.total} process(es) did not deliver a complete history")
    return result(name, True, counts, ev, "every process that took part delivered its whole history")


def duplicate_op_ids(ops: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Op id → every record of it, for the op ids recorded more than once (op ids are unique in a run)."""
    seen: dict[str, dict[str, Any]] = {}
    dups: dict[str, list[dict[str, Any]]] = {}
    for op in ops:
        first = seen.setdefault(op["op_id"], op)
        if first is not op:
            dups.setdefault(op["op_id"], [first]).append(op)
    return dups


def _op_ids_check(duplicates: dict[str, list[dict[str, Any]]], records: int) -> CheckResult:
    """Every op id is recorded once; an op recorded twice is a broken history: unknown, its records set aside."""
    name = "history.op_ids"
    ev = Evidence()
    for op_id, recs in sorted(duplicates.items()):
        ev.add({"op_id": op_id, "records": len(recs), "outcomes": [r.get("outcome") for r in recs],
                "processes": sorted({str(r.get("process")) for r in recs})})
    counts = {"records": records, "duplicated_op_ids": len(duplicates)}
    if ev:
        return result(name, UNKNOWN, counts, ev, f"{ev.total} op id(s) recorded more than once: the history is "
                      "broken; their records are left out and their effects not judged")
    return result(name, True, counts, ev, "every op id is recorded once")


def _undecided(results: list[CheckResult], why: str) -> None:
    """A false check becomes unknown when the history cannot say whose effects the evidence shows."""
    for r in results:
        if r.valid is False:
            r.valid = UNKNOWN
            r.counts["would_be_false"] = True
            r.summary = f"not decided ({why}): {r.summary}"


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
                     f"rejected {fig['rejected']}, unknown {fig['unknown']} (in doubt {fig.get('in_doubt', '?')}, "
                     f"cut short {fig.get('cut_short', '?')}); attempts {fig['attempts']}, "
                     f"retries {fig['conflicts']} {fig['retries_by_cause'] or ''}; "
                     f"p50 {_fmt(fig['p50_ms'])} ms, p95 {_fmt(fig['p95_ms'])} ms, max {_fmt(fig['max_ms'])} ms")
    lines.append("")
    lines.append(f"exit code {verdict['exit_code']}: {verdict['meaning']}")
    return "\n".join(lines)
