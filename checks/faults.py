"""Faults of the run (``faults.jsonl``, written by ``--nemesis``) and an emergency stop (``abort.json``), as the
verdict sees them: every fault window with its measured recovery, whether every fault was healed, and whether
the run was stopped early.

Recovery of one fault, from the history alone:

* **first ok**: seconds from the fault's end (when its healing was observed) to the first call that completed
  ``ok`` after it;
* **throughput back**: seconds from the fault's end to the first ok call *t* after it from which the ``ok``
  calls of the next *w* seconds reach 0.9 of the rate of the minute before the fault began (or of what the run
  had before it, at least 0.5 s and 3 calls); *w* holds about 10 calls at that rate, between 1 and 5 s. Not
  measured when there is no throughput before the fault to compare with, or when the run ended before it came
  back.

The gate ``recovery_s`` (``--gate-recovery-s``, 2 s by default; :func:`checks.gates.recovery_gates`) is per
fault, on the throughput figure.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from checks import UNKNOWN, CheckResult, Evidence, result
from toolclash.history import OK
from toolclash.nemesis.record import applied, read_faults
from toolclash.run import read_json

BASELINE_S = 60.0
SHARE = 0.9
CALLS_PER_WINDOW = 10.0


def recovery(fault: Mapping[str, Any], ok_done: Sequence[float], first_ts: float, last_ts: float) -> dict[str, Any]:
    """The recovery figures of *fault* (see the module's documentation); *ok_done*: sorted completion times of
    the run's ok calls, *first_ts*/*last_ts*: its first invocation and last completion."""
    out: dict[str, Any] = {"first_ok_s": None, "throughput_s": None, "baseline_ok_per_s": None, "window_s": None,
                           "note": ""}
    start, end = float(fault["start"]), fault.get("end")
    if not applied(fault):
        out["note"] = "not applied"
        return out
    if end is None:
        out["note"] = "not healed"
        return out
    end = float(end)
    i = bisect_left(ok_done, end)
    if i < len(ok_done):
        out["first_ok_s"] = round(ok_done[i] - end, 3)
    b0 = max(first_ts, start - BASELINE_S)
    span = start - b0
    before = bisect_left(ok_done, start) - bisect_left(ok_done, b0)
    if span < 0.5 or before < 3:
        out["note"] = (f"no throughput before the fault to compare with ({before} ok calls in the {span:.1f} s "
                       "before it)")
        return out
    rate = before / span
    w = min(5.0, max(1.0, CALLS_PER_WINDOW / rate))
    need = SHARE * rate * w
    out["baseline_ok_per_s"], out["window_s"] = round(rate, 3), round(w, 3)
    for t in _candidates(ok_done, end, w):
        if t + w > last_ts + 1e-9:
            break
        if bisect_left(ok_done, t + w) - bisect_left(ok_done, t) >= need:
            out["throughput_s"] = round(t - end, 3)
            return out
    out["note"] = f"throughput was not back at {SHARE:.0%} of {rate:.3g} ok calls/s before the run ended"
    return out


def _candidates(ok_done: Sequence[float], end: float, w: float) -> Any:
    """Where throughput can be back: at each ok call after the fault's end (so never before the first one)."""
    yield from ok_done[bisect_left(ok_done, end):]


def windows(run_dir: Path, ops: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every fault window of the run, each with its ``recovery``; ``[]`` for a run without faults."""
    faults = read_faults(run_dir)
    if not faults:
        return []
    ok_done = sorted(float(op["complete_ts"]) for op in ops if op.get("outcome") == OK)
    first_ts = min((float(op["invoke_ts"]) for op in ops), default=0.0)
    last_ts = max((float(op["complete_ts"]) for op in ops), default=0.0)
    return [{**f, "recovery": recovery(f, ok_done, first_ts, last_ts)} for f in faults]


def healed(faults: Sequence[Mapping[str, Any]]) -> CheckResult:
    """``faults.healed``: every fault was healed before the final state was captured (else that state may show a
    fault still in effect, so the verdict cannot be trusted: unknown, never an anomaly)."""
    ev = Evidence()
    for f in faults:
        if not f["healed"]:
            ev.add({"fault_id": f["fault_id"], "kind": f["kind"], "target": f["target"], "detail": f["detail"]})
    counts = {"faults": len(faults), "not_healed": ev.total,
              "not_applied": sum(1 for f in faults if not applied(f))}
    if ev:
        return result("faults.healed", UNKNOWN, counts, ev, f"{ev.total} fault(s) were still in effect when the "
                      "final state was captured")
    return result("faults.healed", True, counts, ev, f"every one of {len(faults)} fault window(s) was healed")


def aborted(run_dir: Path) -> dict[str, Any] | None:
    """Why the run was stopped early (``abort.json``), None when it was not."""
    path = run_dir / "abort.json"
    return read_json(path) if path.is_file() else None


def render(faults: Sequence[Mapping[str, Any]], abort: Mapping[str, Any] | None, started: float | None) -> list[str]:
    """Lines of the verdict's text about the faults and an emergency stop."""
    lines: list[str] = []
    if abort:
        lines.append(f"RUN STOPPED EARLY ({abort.get('by', 'abort')}): {abort.get('reason')}")
        lines.append("")
    if not faults:
        return lines
    lines.append(f"{'fault':<34} {'window':<22} {'healed':<7} {'first ok':>9} {'back':>8}")
    lines.append("-" * 84)
    for f in faults:
        rec = f.get("recovery") or {}
        base = started or f["start"]
        span = (f"+{f['start'] - base:.1f}..+{f['end'] - base:.1f} s" if f.get("end") is not None
                else f"+{f['start'] - base:.1f} s..open")
        first = "n/a" if rec.get("first_ok_s") is None else f"{rec['first_ok_s']:.2f} s"
        back = "n/a" if rec.get("throughput_s") is None else f"{rec['throughput_s']:.2f} s"
        lines.append(f"{f['fault_id'] + ' ' + f['kind'] + ' ' + f['target']:<34} {span:<22} "
                     f"{'yes' if f['healed'] else 'NO':<7} {first:>9} {back:>8}")
        lines.append(f"{'':<4}{f['detail']}" + (f" ({rec['note']})" if rec.get("note") else ""))
    lines.append("")
    return lines

