"""``reports/<run-id>/report.html``: one self-contained page (plots inlined as base64 PNG) per run.

Built from the run directory alone (``checks.json``, history, ``stages.json``, ``options.json``, the final
state), so it can be rebuilt later, with no server: ``python -m checks.report reports/<run-id>``.

Plots (``checks/report/plots.py``): throughput by outcome and active agents over time, latency percentiles over
time, attempts per call, conflict rate per ramp stage against its threshold, a timeline of every agent's calls
(evidence highlighted, fault windows shaded), then each scenario's own (``SPEC.plots`` in its checks module).
Then the checks with their evidence, the SLA gates, the comparison with a ``--baseline`` run, the fault windows,
the figures, the live counters and the options (secrets masked). Every part is a ``<section>`` with an id.
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checks.report.plots import plots
from toolclash.nemesis.record import read_faults
from toolclash.option import mask_url
from toolclash.run import read_json

SECRET_KEY = re.compile(r"(?i)(password|secret|token|auth|_url$)")


def _mask(key: str, value: Any) -> Any:
    if isinstance(value, str) and value and (SECRET_KEY.search(key) or "://" in value):
        return mask_url(value) if "://" in value else "***"
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _opt(value: Any) -> Any:
    return "n/a" if value is None else value


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], raw: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell if i in raw else _fmt(cell)}</td>" for i, cell in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top;font-size:13px}th{background:#f3f3f3}.true{color:#176f2c}.false{color:#b00020;font-weight:bold}
.unknown{color:#a15c00;font-weight:bold}img{width:100%;max-width:1100px;display:block;margin:.3em 0 1.2em}
section{margin-bottom:1em}
pre{margin:0;white-space:pre-wrap;font-size:12px}.verdict{font-size:1.2em;padding:.5em;background:#f6f6f6}"""


def render(run_dir: Path) -> str:
    import orjson

    verdict = read_json(run_dir / "checks.json")
    options = read_json(run_dir / "options.json") if (run_dir / "options.json").is_file() else {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>toolclash run {_fmt(verdict.get('run_id'))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<section id='verdict'><h1>toolclash run {_fmt(verdict.get('run_id'))}</h1>",
             f"<p class='verdict'>exit code <b>{verdict['exit_code']}</b>: {_fmt(verdict['meaning'])}</p></section>"]
    if verdict.get("aborted"):
        parts.append(f"<p class='verdict false'>stopped early: {_fmt(verdict['aborted'].get('reason'))}</p>")
    parts.append("<h2>Plots</h2>")
    for title, png in plots(run_dir, verdict):
        parts.append(f"<section class='plot' id='plot-{_slug(title)}'><h3>{html.escape(title)}</h3>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'></section>")
    faults = verdict.get("faults") or [{**f, "recovery": {}} for f in read_faults(run_dir)]
    if faults:
        parts.append("<section id='faults'><h2>Faults</h2>")
        base = verdict.get("started_at") or faults[0]["start"]
        parts.append(_table(("fault", "kind", "target", "from (s)", "to (s)", "healed", "first ok (s)",
                             "throughput back (s)", "what happened"),
                            [(f["fault_id"], f["kind"], f["target"], round(f["start"] - base, 2),
                              "open" if f["end"] is None else round(f["end"] - base, 2), f["healed"],
                              _opt(f["recovery"].get("first_ok_s")), _opt(f["recovery"].get("throughput_s")),
                              f["detail"] + (f" ({f['recovery']['note']})" if f["recovery"].get("note") else ""))
                             for f in faults]))
        parts.append("</section>")
    parts.append("<section id='checks'><h2>Checks</h2>")
    rows = []
    for c in verdict["checks"]:
        cls = {True: "true", False: "false"}.get(c["valid"], "unknown")
        evidence = "".join(f"<pre>{html.escape(orjson.dumps(e, default=str).decode())}</pre>"
                           for e in c.get("evidence", [])[:5])
        if c.get("evidence_total", 0) > 5:
            evidence += f"<pre>… {c['evidence_total'] - 5} more in checks.json</pre>"
        rows.append((html.escape(c["name"]), f"<span class='{cls}'>{cls}</span>", c.get("summary", ""),
                     evidence or "–"))
    parts.append(_table(("check", "valid", "summary", "evidence"), rows, raw=(0, 1, 3)))
    parts.append("</section><section id='gates'><h2>SLA gates</h2>")
    gates = [g for g in verdict.get("gates", []) if not g["gate"].startswith("baseline")]
    parts.append(_table(("scope", "gate", "figure", "threshold", "met", "note"),
                        [(g["scope"], g["gate"], "n/a" if g["figure"] is None else g["figure"],
                          f"{g['op']} {_fmt(g['threshold'])}",
                          "<span class='true'>yes</span>" if g["met"] else "<span class='false'>NO</span>",
                          g.get("note", "")) for g in gates], raw=(4,)))
    parts.append("</section>")
    comparison = verdict.get("baseline")
    if comparison:
        parts.append(f"<section id='baseline'><h2>Against baseline "
                     f"{_fmt(comparison.get('baseline_run_id') or comparison['baseline'])}</h2>")
        parts.append(_table(("scope", "ok calls/s", "baseline", "ratio", "P95 ms", "baseline", "ratio"),
                            [(r["scope"], r["throughput"], r["baseline_throughput"], r["throughput_ratio"],
                              r["p95_ms"], r["baseline_p95_ms"], r["p95_ratio"]) for r in comparison["rows"]]))
        parts.append(_table(("scope", "gate", "figure", "threshold", "met"),
                            [(g["scope"], g["gate"], "n/a" if g["figure"] is None else g["figure"],
                              f"{g['op']} {_fmt(g['threshold'])}", "yes" if g["met"] else "NO")
                             for g in comparison["gates"]]))
        parts.append("</section>")
    parts.append("<section id='figures'><h2>Figures</h2>")
    parts.append(_table(("scope", "calls", "ok", "failed", "rejected", "unknown", "attempts", "conflict rate",
                         "p50 ms", "p95 ms", "p99 ms"),
                        [(scope, f["calls"], f["ok"], f["failed"], f["rejected"], f["unknown"], f["attempts"],
                          f["conflict_rate"], f["p50_ms"], f["p95_ms"], f.get("p99_ms", math.nan))
                         for scope, f in verdict.get("figures", {}).items()]))
    parts.append("</section>")
    counters = verdict.get("counters") or {}
    if counters:
        parts.append("<section id='counters'><h2>Live counters</h2>")
        parts.append(_table(("counter", "value"), sorted(counters.items())))
        parts.append("</section>")
    parts.append("<section id='options'><h2>Options</h2>")
    settings = options.get("settings", {})
    parts.append(_table(("option", "value"), [(k, _mask(k, v)) for k, v in sorted(settings.items())
                                              if not isinstance(v, dict | list) or k in ("strategies", "faults")]))
    parts.append(_table(("locust", "value"), sorted((options.get("locust") or {}).items())))
    parts.append("</section></body></html>")
    return "\n".join(parts)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def write_report(run_dir: Path) -> Path:
    """Write ``report.html`` next to the run's ``checks.json`` (atomically)."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    tmp = path.with_name("report.html.tmp")
    tmp.write_text(render(run_dir), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checks.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory, reports/<run-id> (judged: it holds checks.json)")
    args = parser.parse_args(argv)
    if not (Path(args.run) / "checks.json").is_file():
        print(f"python -m checks.report: {args.run} holds no checks.json; judge it first: python -m checks --run "
              f"{args.run} --write", file=sys.stderr)
        return 2
    try:
        path = write_report(Path(args.run))
    except (OSError, ValueError) as exc:
        print(f"python -m checks.report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
