"""``reports/<run-id>/faults.jsonl``: one JSON object per fault window, rewritten whole (atomically) each time a
window opens or closes, so that a reader (or a crash) never sees half a record.

Each record: ``{"fault_id": str, "kind": str, "target": str, "start": float (unix s, when the fault was observed
in effect), "end": float | null (unix s, when it was healed), "spec": {…}, "healed": bool, "detail": str}``.
A window still open has ``end`` null and ``healed`` false; ``spec["lag_s"]`` is how long after its
scheduled time the fault was observed in effect (applying takes time, and a server's fault waits until the
last one on that server is healed). A fault that could not be applied is recorded with ``spec["applied"]``
false, ``start`` = ``end`` = the time of the attempt and the reason in ``detail``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

FILE = "faults.jsonl"
FIELDS = ("fault_id", "kind", "target", "start", "end", "spec", "healed", "detail")


def read_faults(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The fault windows of the run in *run_dir* (``[]`` without a ``faults.jsonl``), in order of start; a line
    that is not a complete record is skipped."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict) and all(k in rec for k in FIELDS) and isinstance(rec["start"], int | float):
            out.append(rec)
    return sorted(out, key=lambda r: r["start"])


def applied(record: Mapping[str, Any]) -> bool:
    """Whether the fault of *record* took effect (a fault that could not be applied is recorded too)."""
    return (record.get("spec") or {}).get("applied", True) is not False


class FaultLog:
    """The run's fault records, kept in memory and written whole to ``faults.jsonl`` on every change."""

    def __init__(self, run_dir: str | os.PathLike[str] | None) -> None:
        self.path = Path(run_dir) / FILE if run_dir is not None else None
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def opened(self, fault_id: str, kind: str, target: str, start: float, spec: dict[str, Any],
               detail: str) -> None:
        self._put({"fault_id": fault_id, "kind": kind, "target": target, "start": start, "end": None,
                   "spec": spec, "healed": False, "detail": detail})

    def closed(self, fault_id: str, end: float | None, healed: bool, detail: str) -> None:
        with self._lock:
            rec = self.records.get(fault_id)
        if rec is not None:
            self._put({**rec, "end": end, "healed": healed, "detail": detail})

    def not_applied(self, fault_id: str, kind: str, target: str, at: float, spec: dict[str, Any],
                    why: str) -> None:
        self._put({"fault_id": fault_id, "kind": kind, "target": target, "start": at, "end": at,
                   "spec": {**spec, "applied": False}, "healed": True, "detail": f"not applied: {why}"})

    def _put(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records[record["fault_id"]] = record
            if self.path is None:
                return
            ordered = sorted(self.records.values(), key=lambda r: r["start"])
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in ordered))
            os.replace(tmp, self.path)
