"""What a scenario's plots get, and the helpers they share (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolclash.run import read_json


@dataclass
class PlotInput:
    """One run, as the report's plots read it."""

    run_dir: Path
    verdict: Mapping[str, Any]
    ops: list[Any]
    settings: Mapping[str, Any]
    t0: float | None
    """Unix seconds of the first call (None: no call)."""
    _finals: dict[str, Any] = field(default_factory=dict)

    def final(self, scenario: str) -> dict[str, Any]:
        """``final/<scenario>.json`` ({} when it was not captured)."""
        if scenario not in self._finals:
            path = self.run_dir / "final" / f"{scenario}.json"
            self._finals[scenario] = read_json(path) if path.is_file() else {}
        return self._finals[scenario]

    def setting(self, key: str, default: Any) -> Any:
        value = self.settings.get(key)
        return default if value is None else value

    def figures(self, scope: str) -> Mapping[str, Any]:
        return (self.verdict.get("figures") or {}).get(scope) or {}


def bin_seconds(span: float) -> float:
    """Width of a time bin for a run of *span* seconds."""
    return 1.0 if span <= 300 else 5.0 if span <= 1800 else 30.0


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def shade_faults(ax: Any, windows: list[Mapping[str, Any]], t0: float) -> None:
    """Shade each fault window (``faults.jsonl``) on *ax*, whose x axis is seconds since *t0*; a window still open
    (``end`` null) reaches the right edge. Labelled once per kind for the legend."""
    right = ax.get_xlim()[1]
    seen: set[str] = set()
    for w in windows:
        start, end = float(w["start"]) - t0, w.get("end")
        stop = float(end) - t0 if isinstance(end, int | float) else right
        kind = str(w.get("kind") or "fault")
        ax.axvspan(start, stop, color="#f1948a", alpha=0.25, zorder=0,
                   label=None if kind in seen else f"fault: {kind}")
        seen.add(kind)
