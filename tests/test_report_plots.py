"""report.html's scenario plots, from a small hand-made run directory (no services): each plot is drawn
when the run holds its scenario's data, and only then."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from checks.report import render

T0 = 1_800_000_000.0
SCENARIO_TITLES = ("Deadlock detection time", "Pool acquire wait over time", "Queue depth by priority",
                   "Queue wait by priority", "Analytics lag over time")


def _scope(calls: int) -> dict[str, Any]:
    return {"calls": calls, "ok": calls, "failed": 0, "rejected": 0, "unknown": 0, "attempts": calls,
            "conflict_rate": 0.0, "p50_ms": 5.0, "p95_ms": 9.0, "p99_ms": 10.0}


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _run_dir(root: Path, *, scenarios: bool) -> Path:
    ops = [{"op_id": f"p-{i}", "process": "p", "agent": f"a{i % 3}", "tool": "analyze", "strategy": "client",
            "args": {}, "invoke_ts": T0 + i * 0.1, "complete_ts": T0 + i * 0.1 + 0.02, "outcome": "ok",
            "attempts": 1, "error_class": None, "reason": None,
            "result": {"pool": "client", "wait_ms": float(i % 7), "query_ms": 12.0}} for i in range(40)]
    ops.append({**ops[0], "op_id": "p-t", "outcome": "fail", "reason": "pool-timeout",
                "result": {"pool": "client", "wait_ms": 250.0}})
    if not scenarios:  # the same calls under another tool: no scenario data
        ops = [{**op, "tool": "deduct", "result": {}} for op in ops]
    hist = root / "history"
    hist.mkdir(parents=True)
    (hist / "p.jsonl").write_text("".join(json.dumps(op) + "\n" for op in ops), encoding="utf-8")
    _write(hist / "p.done.json", {"process": "p", "records": len(ops)})
    figures: dict[str, Any] = {"credits": _scope(len(ops))}
    if scenarios:
        figures["deadlock"] = {**_scope(12), "detection": {
            "n": 12, "p50_ms": 110.0, "p95_ms": 160.0, "p99_ms": 320.0, "max_ms": 320.0,
            "histogram_ms": {"0-25": 0, "25-50": 0, "50-100": 2, "100-150": 8, "150-200": 1, "200-300": 0,
                             "300-500": 1, "500-1000": 0, ">=1000": 0}}}
        figures["queue"] = {**_scope(6), "queue_wait_by_priority": {
            "critical": {"jobs": 3, "p50_ms": 4.0, "p95_ms": 9.0}, "normal": {"jobs": 2, "p50_ms": 30.0,
                                                                              "p95_ms": 80.0},
            "bulk": {"jobs": 0, "p50_ms": None, "p95_ms": None}}}
        us = int(T0 * 1e6)  # job records: [agent, prio, admitted_us, claimed_us, done_us, deliveries, state]
        jobs = {f"j{i}": ["a0", i % 3, us + i * 200_000, us + i * 200_000 + 50_000 * (i % 4), 0, 1, "done"]
                for i in range(10)}
        _write(root / "final" / "queue.json", {"redis": {"jobs": jobs}})
        _write(root / "final" / "crossservice.json", {"outbox": [
            {"created_at": T0 + i * 0.2, "relayed_at": T0 + i * 0.2 + 0.05 + 0.01 * i} for i in range(15)]
            + [{"created_at": T0 + 4, "relayed_at": None}]})
    _write(root / "checks.json", {"run_id": "hand", "exit_code": 0, "meaning": "valid", "checks": [],
                                  "gates": [], "figures": figures})
    names = ["credits", "deadlock", "pool", "queue", "crossservice"] if scenarios else ["credits"]
    _write(root / "options.json", {"scenarios": names,
                                   "settings": {"queue_capacity": 5, "gate_critical_wait_p95_ms": 50.0}})
    return root


def _images(page: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(png)
            for alt, png in re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([^']*)'", page)}


def test_scenario_plots_are_drawn_from_the_runs_data(tmp_path: Path) -> None:
    page = render(_run_dir(tmp_path, scenarios=True))
    images = _images(page)
    for title in SCENARIO_TITLES:
        assert f"<h3>{title}</h3>" in page, title
        assert images[title].startswith(b"\x89PNG") and len(images[title]) > 5000, title
    assert "Throughput and agents over time" in images


def test_no_scenario_plot_without_the_scenarios_data(tmp_path: Path) -> None:
    images = _images(render(_run_dir(tmp_path, scenarios=False)))
    assert "Throughput and agents over time" in images
    assert not set(SCENARIO_TITLES) & set(images), sorted(images)


def test_queue_depth_replay_counts_ready_jobs(tmp_path: Path) -> None:
    from checks.queue import queue_depth

    us = int(T0 * 1e6)
    # a job claimed in the microsecond it was admitted never makes the depth negative; unclaimed jobs stay ready
    df = queue_depth([["a", 0, us, us, 0, 1, "done"], ["a", 0, us + 10, 0, 0, 0, "ready"],
                      ["a", 2, us + 20, us + 40, 0, 1, "done"], ["a", 2, us + 30, 0, 0, 0, "ready"]])
    assert df["depth"].min() >= 0
    last = df.groupby("priority")["depth"].last().to_dict()
    assert last == {"critical": 1, "bulk": 1}
    assert df[df["priority"] == "bulk"]["depth"].max() == 2


def _plot_input(root: Path) -> Any:
    from checks.plotting import PlotInput
    from toolclash.history import read_history

    ops = read_history(root).ops
    return PlotInput(root, json.loads((root / "checks.json").read_text()), ops,
                     json.loads((root / "options.json").read_text())["settings"], min(o["invoke_ts"] for o in ops))


def test_each_scenario_plot_draws_the_runs_numbers(tmp_path: Path) -> None:
    """Not just a PNG of some size: the drawn data is the run's data (bar heights, points, lines)."""
    from checks import crossservice, deadlock, pool, queue
    from checks.plotting import pyplot

    p = _plot_input(_run_dir(tmp_path, scenarios=True))
    figures = {title: fig for spec in (deadlock.SPEC, pool.SPEC, queue.SPEC, crossservice.SPEC)
               for title, fig in (spec.plots(p) if spec.plots else [])}
    try:
        assert set(figures) == set(SCENARIO_TITLES), sorted(figures)
        bars = figures["Deadlock detection time"].axes[0].patches  # one bar per histogram bin, as counted
        histogram = p.figures("deadlock")["detection"]["histogram_ms"]
        assert [b.get_height() for b in bars] == list(histogram.values())
        assert "p99 320 ms" in figures["Deadlock detection time"].axes[0].get_title()

        served, timed_out = figures["Pool acquire wait over time"].axes[0].collections[:2]  # scatter, then timeouts
        assert len(served.get_offsets()) == 40 and len(timed_out.get_offsets()) == 1
        assert sorted(y for _x, y in served.get_offsets()) == sorted(float(i % 7) for i in range(40))
        assert timed_out.get_offsets()[0][1] == 250.0

        lags = figures["Analytics lag over time"].axes[0].collections[0].get_offsets()  # the 15 relayed events
        assert [float(y) for _x, y in lags] == pytest.approx([50.0 + 10.0 * i for i in range(15)], abs=1e-3)

        depth = {line.get_label(): line for line in figures["Queue depth by priority"].axes[0].get_lines()}
        jobs = p.final("queue")["redis"]["jobs"].values()
        expected = queue.queue_depth(jobs).groupby("priority")["depth"].max().to_dict()
        assert {name: max(depth[name].get_ydata()) for name in expected} == expected

        wait_bars = figures["Queue wait by priority"].axes[0].patches  # p50 bars then p95 bars, critical and normal
        assert [b.get_height() for b in wait_bars] == [4.0, 30.0, 9.0, 80.0]
    finally:
        for fig in figures.values():
            pyplot().close(fig)
