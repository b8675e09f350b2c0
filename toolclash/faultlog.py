"""Reading the run's fault windows, ``reports/<run-id>/faults.jsonl`` (one JSON object per line:
``{"fault_id", "kind", "target", "start", "end", "spec", "healed", "detail"}``, times in Unix seconds, ``end`` null
while the fault is still on). The fault scheduler writes the file; the exporter and the report only read it, and a
run without scheduled faults simply has none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = "faults.jsonl"


def read_windows(run_dir: str | Path | None) -> list[dict[str, Any]]:
    """Every well-formed window of the run in *run_dir* (a line being written, or a bad one, is left out)."""
    if run_dir is None:
        return []
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("start"), int | float):
            out.append(record)
    return out


class WindowCache:
    """The windows of one file, read again only when the file changed (size and modification time)."""

    def __init__(self) -> None:
        self._key: tuple[str, int, float] | None = None
        self._windows: list[dict[str, Any]] = []

    def get(self, run_dir: str | Path | None) -> list[dict[str, Any]]:
        if run_dir is None:
            return []
        path = Path(run_dir) / FILE
        try:
            st = path.stat()
        except OSError:
            return []
        key = (str(path), st.st_size, st.st_mtime)
        if key != self._key:
            self._key, self._windows = key, read_windows(run_dir)
        return self._windows
