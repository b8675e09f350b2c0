"""The verdict of a run: every check and every gate, from ``reports/<run-id>/`` alone.

:func:`evaluate` is a pure function of the run directory (options, history, final state, stages, and
the baseline run it names): the live run and ``python -m checks --run DIR`` get the same verdict and the
same exit code.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

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
    parse,
    result,
    run_checks,
)
from checks import faults as fault_checks
from checks import server as server_checks
from checks.columns import FinalState, Part
from toolclash import scenario
from toolclash.history import read_history, read_history_table
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


def evaluate(run_dir: str | Path, *, columnar: bool = True) -> dict[str, Any]:
    """Run every check and gate of the run in *run_dir*; pure function of the files there.

    The history and the final state are read as columns and each scenario with a columnar path is checked over
    them (:mod:`checks.columns`); *columnar* False runs every check over Python records (the reference the
    columnar paths are tested and benchmarked against). Both give the same verdict."""
    with gc_paused(), parse.remembering():  # the history's op ids are coded once, for duplicates and for joins
        return _evaluate(Path(run_dir), columnar)


class _Step:
    """One step of a long verdict, said on the progress logger when it starts and when it ends (with its rate)."""

    def __init__(self, what: str, ops: int) -> None:
        self.what, self.ops = what, ops

    def __enter__(self) -> _Step:
        self.started = time.perf_counter()
        progress.info(f"{self.what}: {self.ops:,} operations", extra={"ops": self.ops})
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            took = time.perf_counter() - self.started
            rate = f", {self.ops / took:,.0f} ops/s" if took > 0 and self.ops else ""
            progress.info(f"{self.what}: done in {took:.1f} s{rate}")


def _reading(files: int, of: int, records: int, took: float) -> None:
    rate = f", {records / took:,.0f} records/s" if took > 0 else ""
    progress.info(f"reading the history: {files} of {of} file(s), {records:,} records{rate}")


def _evaluate(run: Path, use_columns: bool = True) -> dict[str, Any]:
    if not (run / "options.json").is_file():
        raise RunDirError(f"{run} is not a run directory (no options.json); pass reports/<run-id>")
    options = read_json(run / "options.json")
    settings = options.get("settings", {})
    specs = {name: spec_of(name) for name in options.get("scenarios", [])}
    progress.info("reading the history")
    started = time.perf_counter()
    if use_columns:
        table = read_history_table(run, progress=_reading)
        everything = Part(table.table) if table.typed else Part(ops=table.history().ops)
        history_of: Any = table
    else:
        history = read_history(run)
        everything = Part(ops=history.ops)
        history_of = history
    processes, incomplete = history_of.processes, history_of.incomplete
    took = time.perf_counter() - started
    rate = f", {everything.count / took:,.0f} ops/s" if took > 0 and everything.count else ""
    progress.info(f"read {everything.count:,} operations from {len(processes)} process(es) in {took:.1f} s{rate}")
    duplicates = everything.duplicates()
    if duplicates:  # records of one op id are set aside, not picked from: the rest is judged the plain way
        everything = Part(ops=[op for op in everything.ops if op["op_id"] not in duplicates])
    # What the scenario checks may not blame on the backend: the effects of a process whose history is
    # incomplete, and of an operation recorded more than once.
    doubt = frozenset(incomplete) | {str(op["process"]) for recs in duplicates.values() for op in recs}
    results: list[CheckResult] = [_history_check(everything.count + sum(map(len, duplicates.values())),
                                                 processes, incomplete, history_of.roster),
                                  _op_ids_check(duplicates, everything.count + sum(map(len, duplicates.values())))]
    figures: dict[str, Any] = {}
    all_gates: list[dict[str, Any]] = []
    stages = _load(run / "stages.json") or []
    for name, (sc, spec) in specs.items():
        path = run / "final" / f"{name}.json"
        part = everything.select(frozenset(sc.tools))
        limits = gates.thresholds(settings, {o.name: o.default for o in sc.options})
        with _Step(f"checking {name}", part.count):
            state = FinalState(path) if path.is_file() and use_columns else None
            final = _load(path) if state is None else None
            if state is not None and not state.columnar and state.rest is None:
                state = None  # a final state of `null`: as if none was captured
            if state is None and final is None:
                results.append(result(f"{name}.final_state", UNKNOWN, {}, None, "the final state was not captured"))
            else:
                fast = None
                if state is not None and spec.columnar and part.table is not None:
                    fast = importlib.import_module(spec.columnar).columnar(part.table, state, doubt)
                if fast is None:
                    final = final if state is None else state.as_dict()
                    fast = run_checks(spec, part.ops, cast(Mapping[str, Any], final), doubt)
                results.extend(fast)
        if final is None and state is not None and (spec.figures is not None or spec.gates is not None):
            final = state.as_dict()
        with _Step(f"figures and gates of {name}", part.count):
            rejections = gates.BUSINESS_REJECTIONS | sc.rejections
            figures[name] = _figures(spec, part, final, rejections)
            # a ramp gates the conflict rate per stage: the test plan's targets are per load level
            all_gates.extend(gates.sla_gates(figures[name], limits, name, conflict_rate=not stages))
            if final is not None and spec.gates is not None:
                all_gates.extend(spec.gates(part.ops, final, limits))
            for stage, stage_part in part.by_stage(stages):
                if not stage_part.count and part.count:  # no agent of this kind ran in this stage (mixed ramp)
                    continue
                scope = gates.stage_scope(name, stage)
                figures[scope] = _figures(spec, stage_part, final, rejections)
                all_gates.extend(gates.sla_gates(figures[scope], {**limits, "gate_conflict_rate":
                                                                   gates.stage_limit(stage, limits)}, scope))
    server = _load(run / "final" / "server.json")
    results.append(server_checks.sessions_closed(server, doubt))
    results.append(server_checks.prepared_left(server))
    faults = fault_checks.windows(run, everything.ops) if (run / "faults.jsonl").is_file() else []
    if faults:
        results.append(fault_checks.healed(faults))
        all_gates.extend(gates.recovery_gates(faults, gates.thresholds(settings)))
    aborted = fault_checks.aborted(run)
    if aborted:
        all_gates.append(gates.abort_gate(aborted))
    if not history_of.attributable:
        _undecided(results, "a process of the run is not known by name, so its effects cannot be told from the "
                   "backend's" if history_of.roster is not None else "the run directory does not list the "
                   "processes that took part (processes.json), so a lost process's effects cannot be told from the "
                   "backend's")
    duration = everything.duration()
    summary = {"duration_s": duration, "scenarios": gates.summary(figures, duration)}
    baseline = _baseline(options, summary, settings)
    all_gates.extend(baseline.get("gates", []))
    code = exit_code(results, all_gates)
    return {"run_id": options.get("run_id"), "exit_code": code, "meaning": EXIT_MEANING[code],
            "checks": [r.to_dict() for r in results], "gates": all_gates, "figures": figures, "summary": summary,
            "baseline": baseline or None, "faults": faults, "aborted": aborted,
            "started_at": options.get("started_at"),
            "history": {"records": everything.count, "processes": processes, "incomplete": incomplete,
                        "listed": history_of.roster, "duplicate_op_ids": sorted(duplicates)}}


def _figures(spec: Checks, part: Part, final: Mapping[str, Any] | None, rejections: frozenset[str]
             ) -> dict[str, Any]:
    fig = part.figures(rejections)
    if final is not None and spec.figures is not None:  # a scenario's own definitions hold per stage too
        fig.update(spec.figures(part.ops, final))
    return fig


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


def _history_check(records: int, processes: Mapping[str, int], incomplete: Mapping[str, str],
                   roster: list[dict[str, Any]] | None) -> CheckResult:
    """Every process listed in ``processes.json`` delivered a complete history (else: unknown, naming each)."""
    name = "history.complete"
    ev = Evidence()
    for process, why in sorted(incomplete.items()):
        ev.add({"process": process, "why": why})
    counts = {"records": records, "processes": len(processes), "listed": None if roster is None else len(roster)}
    if roster is None:
        ev.add({"file": "processes.json", "why": "missing: a process whose history never arrived would be "
                                                 "invisible"})
        return result(name, UNKNOWN, counts, ev, "not checked: needs processes.json, the list of the processes "
                      "that took part")
    if ev:
        return result(name, UNKNOWN, counts, ev, f"{ev.total} process(es) did not deliver a complete history")
    return result(name, True, counts, ev, "every process that took part delivered its whole history")


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
