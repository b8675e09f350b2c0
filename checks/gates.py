"""Every SLA gate of a run, in one place: the common gates, the per-stage gates of a ramp, the gates against a
baseline run, and :func:`gate`, the one rule every scenario's own gates are judged by.

Definitions (docs: reading a verdict):

* conflict rate = retryable conflicts (40001, 40P01, 55P03, version conflicts) / attempts;
* P95 = 95th percentile of (complete_ts − invoke_ts) over calls that completed (ok or fail),
  retries and backoff included;
* success after retries = ok / (ok + fail), where business rejections (e.g. insufficient
  funds: a correct answer) and calls cut short by the stop are left out;
* in-doubt share = in doubt / (ok + fail + in doubt): calls whose outcome is ``unknown`` (the client cannot
  tell whether they took effect), except those cut short by the run's own stop (``cut_short``) and those an
  ``--inject`` option put in doubt on purpose (``in_doubt_injected``), which are counted apart and named in
  the gate's note; in-doubt calls count in P95 too (the caller waited that long), cut-short ones do not;
* baseline: throughput (ok calls per second) may fall and P95 rise only within the tolerances;
* recovery, per fault of ``--nemesis``: seconds from its end until throughput is back at 0.9 of the minute
  before it (:mod:`checks.faults`) within ``--gate-recovery-s``; a run stopped early (``--abort-on``, the stop
  button) misses the gate ``run.completed``.

A gate without data to measure is not met (nothing was shown). A gate is a dict
``{scope, gate, figure, op, threshold, met, note}``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from toolclash.history import FAIL, OK
from toolclash.nemesis.record import applied
from toolclash.settings import OPTIONS_BY_NAME, PROFILE_DEFAULTS, SMALL_STAGE

BUSINESS_REJECTIONS = frozenset({"insufficient-funds"})
"""Fail reasons that are correct answers in every scenario (each scenario adds its own)."""

COMMON = ("gate_conflict_rate", "gate_p95_ms", "gate_success_rate", "gate_in_doubt_rate", "stage_gate_conflict_low",
          "stage_gate_conflict_high", "baseline_throughput_drop", "baseline_p95_rise", "gate_recovery_s")
CUT_SHORT = "interrupted"
"""``error_class`` of a call cut short by the run's stop (or Ctrl-C): in doubt because the run ended."""
INJECTED = "injected"
"""``error_class`` of a call an ``--inject`` option put in doubt on purpose (e.g. a crashed coordinator)."""


def thresholds(settings: Mapping[str, Any], scenario_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's thresholds: its settings over the declared defaults (normal profile) of every option."""
    defaults = {name: PROFILE_DEFAULTS["normal"].get(name, OPTIONS_BY_NAME[name].default) for name in COMMON}
    return {**defaults, **(scenario_defaults or {}), **{k: v for k, v in settings.items() if v is not None}}


def gate(scope: str, name: str, figure: Any, op: str, threshold: float, missing: str = "no data to measure") -> dict[
        str, Any]:
    """One gate: *figure* ``op`` *threshold* (``<``, ``<=``, ``>=``); not met, with note *missing*, without a figure."""
    if figure is None or (isinstance(figure, float) and math.isnan(figure)):
        return {"scope": scope, "gate": name, "figure": None, "op": op, "threshold": threshold, "met": False,
                "note": missing}
    met = figure < threshold if op == "<" else figure <= threshold if op == "<=" else figure >= threshold
    note = ""
    if isinstance(figure, float) and math.isinf(figure):  # checks.json writes it as null: say what it was
        note = "infinite: not reached before the run ended"
    return {"scope": scope, "gate": name, "figure": figure, "op": op, "threshold": threshold, "met": bool(met),
            "note": note}


# ------------------------------------------------------------------------------------------ SLA


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def figures(ops: Iterable[Mapping[str, Any]], rejections: frozenset[str] = BUSINESS_REJECTIONS) -> dict[str, Any]:
    """The SLA figures of a set of operations; *rejections* are the reasons that are correct answers."""
    attempts = conflicts = ok = failed = rejected = interrupted = unknown = cut_short = injected = 0
    latencies: list[float] = []
    retries_by_cause: dict[str, int] = {}
    for op in ops:
        attempts += int(op.get("attempts") or 0)
        for cause, n in (op.get("result") or {}).get("retries", {}).items():
            conflicts += n
            retries_by_cause[cause] = retries_by_cause.get(cause, 0) + n
        outcome = op["outcome"]
        if outcome == OK:
            ok += 1
        elif outcome == FAIL:
            if op.get("reason") in rejections:
                rejected += 1
            elif op.get("error_class") == "interrupted":
                interrupted += 1
                continue
            else:
                failed += 1
        else:
            unknown += 1
            if op.get("error_class") == CUT_SHORT:
                cut_short += 1
                continue
            if op.get("error_class") == INJECTED:
                injected += 1
        latencies.append((op["complete_ts"] - op["invoke_ts"]) * 1000.0)
    latencies.sort()
    return {**sla_counts(ok=ok, failed=failed, rejected=rejected, interrupted=interrupted, unknown=unknown,
                         cut_short=cut_short, injected=injected, attempts=attempts, conflicts=conflicts,
                         retries_by_cause=retries_by_cause),
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1] if latencies else math.nan}


def sla_counts(*, ok: int, failed: int, rejected: int, interrupted: int, unknown: int, cut_short: int,
               injected: int, attempts: int, conflicts: int, retries_by_cause: dict[str, int]) -> dict[str, Any]:
    """The SLA figures that are counts and their rates (:func:`figures` and the columnar path share them):
    an in-doubt call is an unknown one neither cut short by the stop nor injected by a fault."""
    decided = ok + failed
    in_doubt = unknown - cut_short - injected
    return {
        "calls": ok + failed + rejected + interrupted + unknown, "ok": ok, "failed": failed,
        "rejected": rejected, "unknown": unknown, "in_doubt": in_doubt, "cut_short": cut_short,
        "in_doubt_injected": injected, "attempts": attempts, "conflicts": conflicts,
        "retries_by_cause": retries_by_cause,
        "conflict_rate": conflicts / attempts if attempts else math.nan,
        "success_rate": ok / decided if decided else math.nan,
        "in_doubt_rate": in_doubt / (decided + in_doubt) if decided + in_doubt else math.nan,
    }


def sla_gates(fig: Mapping[str, Any], limits: Mapping[str, float], scope: str, *,
              conflict_rate: bool = True) -> list[dict[str, Any]]:
    """The common gates of *scope*: conflict rate (unless a ramp gates it per stage), P95, success after retries,
    and the share of calls left in doubt."""
    missing = "no completed calls to measure"
    out = []
    if conflict_rate:
        out.append(gate(scope, "conflict_rate", fig.get("conflict_rate"), "<", limits["gate_conflict_rate"], missing))
    out.append(gate(scope, "p95_ms", fig.get("p95_ms"), "<", limits["gate_p95_ms"], missing))
    out.append(gate(scope, "success_rate", fig.get("success_rate"), ">=", limits["gate_success_rate"], missing))
    doubt = gate(scope, "in_doubt_rate", fig.get("in_doubt_rate"), "<=", limits["gate_in_doubt_rate"], missing)
    apart = [f"{n} {what}" for n, what in ((fig.get("cut_short", 0), "cut short by the stop"),
                                            (fig.get("in_doubt_injected", 0), "put in doubt by --inject")) if n]
    if apart and doubt["figure"] is not None:
        doubt["note"] = f"{fig.get('in_doubt', 0)} in doubt counted; not counted: {', '.join(apart)}"
    out.append(doubt)
    return out


# ------------------------------------------------------------------------------------------ stages


def by_stage(ops: Sequence[Mapping[str, Any]], stages: Sequence[Mapping[str, Any]]
             ) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
    """Split *ops* by the ramp stage in which they were invoked (the first stage also takes earlier ops)."""
    if not stages:
        return []
    starts = [float(st["start"]) for st in stages]
    buckets: list[list[Mapping[str, Any]]] = [[] for _ in stages]
    for op in ops:
        buckets[max(0, bisect_right(starts, op["invoke_ts"]) - 1)].append(op)
    return list(zip(stages, buckets, strict=True))


def stage_limit(stage: Mapping[str, Any], limits: Mapping[str, float]) -> float:
    """A stage's conflict-rate threshold: the test plan's targets are per load level (≤ 10 agents, above)."""
    return float(limits["stage_gate_conflict_low" if stage["users"] <= SMALL_STAGE else "stage_gate_conflict_high"])


def stage_scope(scenario: str, stage: Mapping[str, Any]) -> str:
    return f"{scenario}.stage{stage['stage']}({stage['users']})"


# ------------------------------------------------------------------------------------------ baseline


def throughput(fig: Mapping[str, Any], duration_s: float) -> float:
    return fig["ok"] / duration_s if duration_s and duration_s > 0 else math.nan


def summary(figures_by_scope: Mapping[str, Mapping[str, Any]], duration_s: float) -> dict[str, dict[str, Any]]:
    """Throughput and P95 of each scenario (not its stages): what a baseline comparison needs."""
    return {scope: {"throughput": throughput(fig, duration_s), "p95_ms": fig["p95_ms"], "calls": fig["calls"]}
            for scope, fig in figures_by_scope.items() if ".stage" not in scope}


def baseline_gates(now: Mapping[str, Mapping[str, Any]], base: Mapping[str, Mapping[str, Any]],
                   limits: Mapping[str, float], base_name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(gates, rows) comparing this run's :func:`summary` with a baseline's."""
    gates, rows = [], []
    for scope, cur in now.items():
        old = base.get(scope)
        if old is None:
            continue
        tp_ratio = cur["throughput"] / old["throughput"] if old["throughput"] else math.nan
        p95_ratio = cur["p95_ms"] / old["p95_ms"] if old["p95_ms"] else math.nan
        rows.append({"scope": scope, "throughput": cur["throughput"], "baseline_throughput": old["throughput"],
                     "throughput_ratio": tp_ratio, "p95_ms": cur["p95_ms"], "baseline_p95_ms": old["p95_ms"],
                     "p95_ratio": p95_ratio})
        missing = f"no figure to compare with baseline {base_name}"
        gates.append(gate(scope, "baseline_throughput_ratio", tp_ratio, ">=",
                          1.0 - float(limits["baseline_throughput_drop"]), missing))
        gates.append(gate(scope, "baseline_p95_ratio", p95_ratio, "<=", 1.0 + float(limits["baseline_p95_rise"]),
                          missing))
    return gates, rows


def missing_baseline(baseline: str) -> dict[str, Any]:
    """The gate of a run whose ``--baseline`` cannot be read any more (not met: nothing was compared)."""
    return {"scope": "run", "gate": "baseline", "figure": None, "op": "exists", "threshold": Path(baseline).name,
            "met": False, "note": f"baseline run {baseline} has no checks.json to compare with"}


# ------------------------------------------------------------------------------------------ faults


def scope(fault: Mapping[str, Any]) -> str:
    return f"fault.{fault['fault_id']}({fault['kind']} {fault['target']})"


def recovery_gates(faults: Sequence[Mapping[str, Any]], limits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per fault: ``recovery_s`` (throughput back) within ``--gate-recovery-s``; a fault that could not be applied
    is a gate not met (the run was not the one asked for)."""
    out = []
    for f in faults:
        if not applied(f):
            out.append({"scope": scope(f), "gate": "applied", "figure": None, "op": "is", "threshold": "applied",
                        "met": False, "note": f["detail"]})
            continue
        rec = f["recovery"]
        out.append(gate(scope(f), "recovery_s", rec["throughput_s"], "<=", float(limits["gate_recovery_s"]),
                        rec["note"] or "not measured"))
    return out


def abort_gate(abort: Mapping[str, Any]) -> dict[str, Any]:
    """A run stopped early did not run its course: a gate not met, with the reason."""
    return {"scope": "run", "gate": "completed", "figure": None, "op": "is", "threshold": "not stopped early",
            "met": False, "note": f"stopped early: {abort.get('reason')}"}
