"""SLA gates computed from the history: conflict rate, P95 including retries, success after retries.

Definitions (README "Reading the verdict"):

* conflict rate = retryable conflicts (40001, 40P01, 55P03, version conflicts) / attempts;
* P95 = 95th percentile of (complete_ts − invoke_ts) over calls that completed (ok or fail),
  retries and backoff included;
* success after retries = ok / (ok + fail), where business rejections (e.g. insufficient
  funds: a correct answer) and calls cut short by the stop are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from toolclash.history import FAIL, OK

BUSINESS_REJECTIONS = frozenset({"insufficient-funds"})


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def figures(ops: Iterable[Mapping[str, Any]], rejections: frozenset[str] = BUSINESS_REJECTIONS) -> dict[str, Any]:
    """The SLA figures of a set of operations; *rejections* are the reasons that are correct answers."""
    attempts = conflicts = ok = failed = rejected = interrupted = unknown = 0
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
            continue
        latencies.append((op["complete_ts"] - op["invoke_ts"]) * 1000.0)
    latencies.sort()
    decided = ok + failed
    return {
        "calls": ok + failed + rejected + interrupted + unknown, "ok": ok, "failed": failed,
        "rejected": rejected, "unknown": unknown, "attempts": attempts, "conflicts": conflicts,
        "retries_by_cause": retries_by_cause,
        "conflict_rate": conflicts / attempts if attempts else math.nan,
        "success_rate": ok / decided if decided else math.nan,
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1] if latencies else math.nan,
    }


def gates(fig: Mapping[str, Any], thresholds: Mapping[str, float], scope: str) -> list[dict[str, Any]]:
    """Compare figures against thresholds; a gate without data is not met (nothing was shown)."""
    spec = (
        ("conflict_rate", "conflict_rate", "<", thresholds["gate_conflict_rate"]),
        ("p95_ms", "p95_ms", "<", thresholds["gate_p95_ms"]),
        ("success_rate", "success_rate", ">=", thresholds["gate_success_rate"]),
    )
    out = []
    for gate, key, op, limit in spec:
        value = fig.get(key, math.nan)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            met, note = False, "no completed calls to measure"
        else:
            met = value < limit if op == "<" else value >= limit
            note = ""
        out.append({"scope": scope, "gate": gate, "figure": None if note else value, "op": op,
                    "threshold": limit, "met": met, "note": note})
    return out
