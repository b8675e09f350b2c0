"""report.html as people see it, from a hand-made run directory (no services): a ramp of 5 stages over every
scenario, pool observation records, business rejections, in-doubt calls, an anomaly whose evidence names ops and
a fault window. Every figure's tick labels are measured and must not overlap; the page is rendered in headless
Chromium, every image shown at its own width, and a screenshot taken of every section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from checks.report import write_report
from checks.report.plots import CLASSES, call_ops, figures
from tests.test_report_plots import T0, _run_dir, _scope, _write

SCENARIOS = ("credits", "config", "deadlock", "crossservice", "queue", "pool", "workspace")


def _busy_run(root: Path) -> Path:
    run = _run_dir(root, scenarios=True)
    hist = run / "history" / "p.jsonl"
    ops = [json.loads(line) for line in hist.read_text().splitlines()]
    agents = [f"w{w}-a{i}" for w in range(3) for i in range(1, 31)]  # 90 agents: more than the timeline shows
    for n in range(900):
        outcome, reason = ("ok", None)
        if n % 17 == 0:
            outcome, reason = "fail", "insufficient-funds"  # a correct answer: rejected, not failed
        elif n % 23 == 0:
            outcome, reason = "fail", "retries-exhausted"
        elif n % 41 == 0:
            outcome, reason = "unknown", "commit-in-doubt"
        start = T0 + (n % 300) * 0.1
        ops.append({"op_id": f"d-{n}", "process": "p", "agent": agents[n % len(agents)], "tool": "deduct",
                    "strategy": "naive", "args": {}, "invoke_ts": start, "complete_ts": start + 0.05 + (n % 7) * 0.01,
                    "outcome": outcome, "attempts": 1 + n % 3, "error_class": None, "reason": reason,
                    "result": {"retries": {"serialization": n % 3}} if n % 3 else {}})
    for n in range(40):  # the pool's observation records: not calls
        ops.append({"op_id": f"s-{n}", "process": "p", "agent": "sampler", "tool": "pool_sample",
                    "strategy": "observe", "args": {}, "invoke_ts": T0 + n, "complete_ts": T0 + n, "outcome": "ok",
                    "attempts": 0, "error_class": None, "reason": None, "result": {"in_use": 3}})
    hist.write_text("".join(json.dumps(op) + "\n" for op in ops))
    _write(run / "history" / "p.done.json", {"process": "p", "records": len(ops)})
    stages = [{"stage": i + 1, "users": u, "start": T0 + i * 6, "end": T0 + (i + 1) * 6}
              for i, u in enumerate((5, 10, 25, 50, 100))]
    _write(run / "stages.json", stages)
    verdict = json.loads((run / "checks.json").read_text())
    verdict["checks"] = [{"name": "credits.lost_updates", "valid": False, "summary": "2 lost updates",
                          "counts": {}, "evidence": [{"lost_op": "d-5", "overwritten_by": "d-6"}],
                          "evidence_total": 1}]
    verdict["gates"] = [{"scope": f"{sc}.stage{i + 1}({u})", "gate": "conflict_rate", "figure": 0.01 * (i + 1),
                         "op": "<", "threshold": 0.05 if u <= 10 else 0.2, "met": True, "note": ""}
                        for sc in SCENARIOS for i, u in enumerate((5, 10, 25, 50, 100))]
    verdict["figures"]["credits"] = _scope(900)
    _write(run / "checks.json", verdict)
    options = json.loads((run / "options.json").read_text())
    _write(run / "options.json", {**options, "scenarios": list(SCENARIOS)})
    (run / "faults.jsonl").write_text(json.dumps({"fault_id": "f1", "kind": "kill", "target": "postgres",
                                                  "start": T0 + 10, "end": T0 + 14, "spec": {}, "healed": True,
                                                  "detail": ""}) + "\n")
    return run


def _overlaps(labels: list[Any], renderer: Any) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels if t.get_visible() and t.get_text()]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


def test_tick_labels_never_overlap_and_observations_are_not_calls(tmp_path: Path) -> None:
    run = _busy_run(tmp_path / "run")
    from toolclash.history import read_history

    ops, _rejections = call_ops(read_history(run).ops, SCENARIOS)
    assert not {op["tool"] for op in ops} & {"pool_sample", "pool_state"}
    drawn = figures(run, json.loads((run / "checks.json").read_text()))
    titles = [t for t, _f in drawn]
    assert {"Throughput and agents over time", "Conflict rate per stage", "Timeline of every agent's calls"} <= set(
        titles), titles
    for title, fig in drawn:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert fig.get_figwidth() * fig.dpi <= 1100 + 1, title  # drawn at the report's width, never scaled down
        for ax in fig.axes:
            for axis in (ax.get_xticklabels(), ax.get_yticklabels()):
                assert not _overlaps(axis, renderer), (title, _overlaps(axis, renderer)[:3])
        legend_texts = {t.get_text() for leg in (*fig.legends, *(a.get_legend() for a in fig.axes)) if leg
                        for t in leg.get_texts()}
        if title == "Throughput and agents over time":
            assert set(CLASSES) <= legend_texts, legend_texts  # ok, rejected, failed and in doubt apart
            assert "fault: kill" in legend_texts
        if title == "Timeline of every agent's calls":
            assert {"named in evidence", "fault: kill", "in doubt"} <= legend_texts, legend_texts
            assert "first 60 of 93" in fig.axes[0].get_ylabel()  # 90 + the 3 agents of the pool calls


def test_report_sections_render_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    run = _busy_run(tmp_path / "run")
    page_file = write_report(run)
    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_file.as_uri())
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth, "
                                                      "e.getBoundingClientRect().width])")
            sections = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
            for sid in sections:
                page.locator(f"section#{sid}").screenshot(path=str(shots / f"{sid}.png"))
        finally:
            browser.close()
    assert all(complete and natural == 1100 for _a, complete, natural, _w in images), images
    assert all(abs(shown - natural) <= 1 for _a, _c, natural, shown in images), images  # shown unscaled
    expected = {"verdict", "checks", "gates", "faults", "figures", "options", "plot-timeline-of-every-agent-s-calls"}
    assert expected <= set(sections), sections
    for sid in sections:
        assert (shots / f"{sid}.png").stat().st_size > 2_000, sid
