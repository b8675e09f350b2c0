"""What a scenario's plots get, and the helpers they share (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolclash.nemesis.record import applied
from toolclash.run import read_json

FAULT_COLOR = "#ffd700"
FAULT_ALPHA = 0.3
STRIP = 0.12
"""Height of the opaque strip drawn over the data at the top of a fault window (share of the axes)."""
STRIP_COLOR = tuple(FAULT_ALPHA * int(FAULT_COLOR[i:i + 2], 16) / 255 + (1 - FAULT_ALPHA) for i in (1, 3, 5))
"""The band's colour as it shows over white, opaque."""
"""A fault band: gold (no line of matplotlib's default cycle blends into it) at this opacity; tests find its
pixels in the report's PNGs."""


@dataclass
class PlotInput:
    """One run, as the report's plots read it."""

    run_dir: Path
    verdict: Mapping[str, Any]
    ops: list[Any]
    settings: Mapping[str, Any]
    t0: float | None
    """Unix seconds of the first call (None: no call)."""
    faults: list[Any] = field(default_factory=list)
    """The run's fault windows (``faults.jsonl``): each scenario's time plots shade them with :meth:`shade`."""
    _finals: dict[str, Any] = field(default_factory=dict)

    def shade(self, ax: Any, t0: float | None = None) -> int:
        """Shade the fault windows on *ax*, whose x axis is seconds since *t0* (default: the first call)."""
        base = self.t0 if t0 is None else t0
        return shade_faults(ax, self.faults, base) if base is not None else 0

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


def shade_faults(ax: Any, faults: list[Any], t0: float) -> int:
    """Shade each fault window of *faults* (records of ``faults.jsonl``) on *ax*, whose x axis is seconds since
    *t0*, as a band labelled with its id, kind and target; a window still open runs to the axis's end. Returns
    how many bands it drew (faults that were not applied are not drawn)."""
    n = 0
    right = ax.get_xlim()[1]
    kinds: set[str] = set()
    for f in faults:
        if not applied(f):
            continue
        start = float(f["start"]) - t0
        end = float(f["end"]) - t0 if f.get("end") is not None else max(right, start)
        label = None if f["kind"] in kinds else f"fault: {f['kind']}"  # one legend entry per kind
        kinds.add(f["kind"])
        ax.axvspan(start, max(end, start + 0.05), facecolor=FAULT_COLOR, alpha=FAULT_ALPHA, linewidth=0, zorder=0,
                   label=label)
        # and a strip along the top, over the data: a stacked or filled plot would hide the band beneath it
        ax.axvspan(start, max(end, start + 0.05), ymin=1.0 - STRIP, ymax=1.0, facecolor=STRIP_COLOR, linewidth=0,
                   zorder=5)
        ax.text(start, 1.0, f" {f['fault_id']} {f['kind']} {f['target']}", transform=ax.get_xaxis_transform(),
                fontsize=7, color="#806000", va="top", ha="left", rotation=90, clip_on=True)
        n += 1
    if n:
        ax.set_xlim(right=max(right, ax.get_xlim()[1]))
    return n


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

