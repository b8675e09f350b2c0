"""Post-run auditors: pure functions of (history, final state) → check results.

A check returns ``{name, valid, counts, evidence, evidence_total}`` where ``valid`` is
``True``, ``False`` or ``"unknown"``; evidence names op ids and rows, capped at
:data:`EVIDENCE_CAP` with the total kept. Checks compose by name; the worst verdict wins
(false > unknown > true); a check that crashes yields ``unknown``, never ``true``.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

EVIDENCE_CAP = 20
UNKNOWN = "unknown"

# Exit codes of a headless run and of `python -m checks` (DESIGN.md).
EXIT_OK, EXIT_ANOMALY, EXIT_USAGE, EXIT_UNKNOWN, EXIT_SLA = 0, 1, 2, 3, 4

Valid = bool | str


@dataclass
class CheckResult:
    """The verdict of one check."""

    name: str
    valid: Valid
    counts: dict[str, Any] = field(default_factory=dict)
    evidence: list[Any] = field(default_factory=list)
    evidence_total: int = 0
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "valid": self.valid, "summary": self.summary, "counts": self.counts,
                "evidence": self.evidence, "evidence_total": self.evidence_total}


class Evidence:
    """Collects evidence items, keeping the first :data:`EVIDENCE_CAP` and the total."""

    def __init__(self, cap: int = EVIDENCE_CAP) -> None:
        self.items: list[Any] = []
        self.total = 0
        self.cap = cap

    def add(self, item: Any) -> None:
        self.total += 1
        if len(self.items) < self.cap:
            self.items.append(item)

    def __bool__(self) -> bool:
        return self.total > 0


def result(name: str, valid: Valid, counts: Mapping[str, Any], evidence: Evidence | None = None,
           summary: str = "") -> CheckResult:
    ev = evidence or Evidence()
    return CheckResult(name, valid, dict(counts), ev.items, ev.total, summary)


def by_op_id(ops: Iterable[Mapping[str, Any]], tool: str) -> tuple[dict[str, Mapping[str, Any]], list[str]]:
    """The operations of *tool* by op id, and the op ids recorded more than once (the last record of each is
    kept; ``history.op_ids`` judges the duplicates)."""
    found: dict[str, Mapping[str, Any]] = {}
    duplicates: list[str] = []
    for op in ops:
        if op["tool"] == tool:
            if op["op_id"] in found:
                duplicates.append(op["op_id"])
            found[op["op_id"]] = op
    return found, duplicates


def worst(values: Iterable[Valid]) -> Valid:
    """Compose verdicts: any False → False; else any unknown → unknown; else True."""
    seen = list(values)
    if any(v is False for v in seen):
        return False
    if any(v is not True for v in seen):
        return UNKNOWN
    return True


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: checkers build millions of acyclic dicts and lists, and the
    collector's repeated passes over them cost about 30 % of a large verdict (measured by ``make bench``)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def guarded(name: str, fn: Callable[[], CheckResult | None]) -> CheckResult | None:
    """Run a check; a crash yields ``unknown`` with the error as evidence (never ``true``)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a crashing checker must not pass
        return CheckResult(name, UNKNOWN, {}, [_error(exc)], 1, "the checker crashed; its verdict is unknown")


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}", "where": traceback.format_exc(limit=3).strip().splitlines()[-3:]}


@dataclass(frozen=True, kw_only=True)
class Checks:
    """What a scenario's checks module declares (``SPEC = Checks(...)``); :mod:`checks.verdict` runs it.

    *view* builds the indexes its checks share from ``(ops, final, incomplete processes)``; each of *checks* is
    ``(name, fn(view) -> CheckResult | None)`` (None: not applicable to this run) and is guarded on its own.
    *figures* ``(ops, final) -> dict`` add to the common SLA figures; *gates* ``(ops, final, thresholds)`` are
    the scenario's own gates (built with :func:`checks.gates.gate`); *plots* ``(PlotInput) -> [(title, figure)]``
    draw its data in the report; *columnar* names the module of the same checks over columns.
    """

    view: Callable[[list[Any], Mapping[str, Any], frozenset[str]], Any]
    checks: tuple[tuple[str, Callable[[Any], CheckResult | None]], ...]
    figures: Callable[[list[Any], Mapping[str, Any]], dict[str, Any]] | None = None
    gates: Callable[[list[Any], Mapping[str, Any], Mapping[str, Any]], list[dict[str, Any]]] | None = None
    plots: Callable[[Any], list[tuple[str, Any]]] | None = None
    columnar: str | None = None
    """The module of the checks' columnar path (its ``columnar(ops table, final state, incomplete processes)``
    returns the same results from columns, or None to let the checks above decide; :mod:`checks.columns`)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.checks)


def run_checks(spec: Checks, ops: Iterable[Any], final: Mapping[str, Any],
               incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    """Every check of *spec*, each guarded on its own: one that crashes is ``unknown``, the others still judge."""
    with gc_paused():
        try:
            view = spec.view(ops if isinstance(ops, list) else list(ops), final, frozenset(incomplete_processes))
        except Exception as exc:  # noqa: BLE001 - without its indexes no check of the scenario can decide
            error = _error(exc)
            return [CheckResult(name, UNKNOWN, {}, [error], 1, "could not index the history and final state; "
                                "the verdict is unknown") for name in spec.names]
        out = []
        for name, fn in spec.checks:
            res = guarded(name, partial(fn, view))
            if res is not None:
                out.append(res)
        return out


def exit_code(checks: Iterable[CheckResult], gates: Iterable[Mapping[str, Any]]) -> int:
    """0 all valid and gates met · 1 anomaly · 3 unknown · 4 gate missed (first of 1, 3, 4 wins)."""
    verdict = worst(c.valid for c in checks)
    if verdict is False:
        return EXIT_ANOMALY
    if verdict != True:  # noqa: E712 - three-valued
        return EXIT_UNKNOWN
    if any(g.get("met") is not True for g in gates):
        return EXIT_SLA
    return EXIT_OK
