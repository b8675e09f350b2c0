"""What the fault tests share: reading a run's fault windows back, and finding the fault bands in report.html."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from checks.plotting import FAULT_ALPHA, FAULT_COLOR
from toolclash.nemesis import read_faults

TIME_PLOTS = ("Throughput and agents over time", "Latency percentiles over time")
"""The report's own plots with a time axis (each scenario adds its own)."""


def band_rgb() -> np.ndarray:
    """The colour of a fault band drawn over the white background of a plot."""
    rgb = np.array([int(FAULT_COLOR[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return (1 - FAULT_ALPHA) * 255.0 + FAULT_ALPHA * rgb


def band_columns(png: bytes) -> int:
    """Pixel columns of *png* of which at least 8 % are the fault band's colour (a band runs from the bottom of the
    axes to the top, with an opaque strip over the data along the top; a line's edges never fill that much)."""
    import matplotlib.image as mpimg

    img = mpimg.imread(io.BytesIO(png))[:, :, :3] * 255.0
    near = (np.abs(img - band_rgb()) <= 4.0).all(axis=2)
    return int((near.mean(axis=0) >= 0.08).sum())


def report_images(run_dir: Path) -> dict[str, bytes]:
    """Every plot of report.html by title (PNG bytes)."""
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    return {title: base64.b64decode(data) for title, data in
            re.findall(r"<h3>([^<]*)</h3><img alt='[^']*' src='data:image/png;base64,([^']*)'", page)}


def window(run_dir: Path, kind: str, target: str | None = None) -> dict[str, Any]:
    """The (first) fault window of *kind* (on *target*) in the run's faults.jsonl."""
    found = [f for f in read_faults(run_dir) if f["kind"] == kind and (target is None or f["target"] == target)]
    assert found, f"no {kind} {target or ''} in {read_faults(run_dir)}"
    return found[0]


def assert_fault_seen(run_dir: Path, verdict: dict[str, Any], kind: str, target: str | None = None, *,
                      recovered: bool = True) -> dict[str, Any]:
    """The fault of *kind* was observed in effect (applied, with a start), healed (an end after it), named in the
    verdict with its recovery measured and its gate, and drawn on the report's time plots. Returns the verdict's
    entry for it."""
    rec = window(run_dir, kind, target)
    assert rec["spec"].get("applied", True) is not False, rec
    assert rec["healed"] is True and rec["end"] is not None and rec["end"] >= rec["start"], rec
    entry = next(f for f in verdict["faults"] if f["fault_id"] == rec["fault_id"])
    if recovered:
        assert entry["recovery"]["first_ok_s"] is not None, entry
        assert entry["recovery"]["throughput_s"] is not None, entry
    gate = next(g for g in verdict["gates"] if g["scope"].startswith(f"fault.{rec['fault_id']}("))
    assert gate["gate"] == "recovery_s", gate
    images = report_images(run_dir)
    for title in TIME_PLOTS:
        assert band_columns(images[title]) > 0, f"no fault band on {title!r}"
    return entry


def no_false_check(verdict: dict[str, Any]) -> None:
    """A correct strategy under faults: valid, unknown or an SLA miss, never an anomaly."""
    assert verdict["exit_code"] in (0, 3, 4), verdict["exit_code"]
    assert not [c for c in verdict["checks"] if c["valid"] is False], verdict["checks"]
