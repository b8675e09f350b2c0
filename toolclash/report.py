"""``reports/<run-id>/report.html``: one self-contained page (plots inlined as base64 PNG) per run.

Built from the run directory alone (history, ``stages.json``, ``checks.json``, ``options.json``), so it
can be rebuilt later, with no server::

    python -m toolclash.report reports/<run-id> [--baseline reports/<other-run>]

Plots: throughput and active agents over time, latency percentiles over time, conflict rate per ramp
stage against its threshold, attempts per call; and, when the run holds that scenario's data, the deadlock
detection-time histogram, pool acquire wait over time, queue depth (replayed from the job records) and
queue wait by priority, and the analytics lag (outbox → ClickHouse) over time. Then the checks with
their evidence, the SLA gates and the options (secrets masked). ``--baseline`` compares throughput and
P95 with another run and writes ``baseline.json`` whose gates are missed when throughput fell or P95 rose
beyond the tolerances.
Locust-free.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolclash.history import read_history
from toolclash.run import read_json, write_json
from toolclash.settings import mask_url

SECRET_KEY = re.compile(r"(?i)(password|secret|token|auth|_url$)")
DEFAULT_TOLERANCES = {"baseline_throughput_drop": 0.10, "baseline_p95_rise": 0.25}


def _frame(run_dir: Path) -> Any:
    import pandas as pd

    ops = read_history(run_dir).ops
    if not ops:
        return pd.DataFrame(columns=["tool", "outcome", "invoke_ts", "complete_ts", "attempts", "agent",
                                     "latency_s", "retries"])
    df = pd.DataFrame.from_records(ops, columns=["tool", "outcome", "invoke_ts", "complete_ts", "attempts", "agent",
                                                 "result", "error_class"])
    df["latency_s"] = df["complete_ts"] - df["invoke_ts"]
    df["retries"] = [sum((r or {}).get("retries", {}).values()) for r in df["result"]]
    return df.drop(columns=["result"])


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Throughput (ok calls per second of the run) and P95 per scenario, for baseline comparisons."""
    verdict = read_json(run_dir / "checks.json")
    df = _frame(run_dir)
    duration = float(df["complete_ts"].max() - df["invoke_ts"].min()) if len(df) else math.nan
    out: dict[str, Any] = {"run_id": verdict.get("run_id"), "duration_s": duration, "scenarios": {}}
    for scope, fig in verdict.get("figures", {}).items():
        if ".stage" in scope:
            continue
        out["scenarios"][scope] = {"throughput": fig["ok"] / duration if duration and duration > 0 else math.nan,
                                   "p95_ms": fig["p95_ms"], "calls": fig["calls"]}
    return out


def compare(run_dir: Path, baseline_dir: Path, tolerances: dict[str, float] | None = None) -> dict[str, Any]:
    """Gates against a baseline run: throughput may drop and P95 rise only within the tolerances."""
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if not (baseline_dir / "checks.json").is_file():
        raise ValueError(f"--baseline {baseline_dir} is not a finished run directory (no checks.json)")
    now, base = run_summary(run_dir), run_summary(baseline_dir)
    gates, rows = [], []
    for scope, cur in now["scenarios"].items():
        old = base["scenarios"].get(scope)
        if old is None:
            continue
        tp_ratio = cur["throughput"] / old["throughput"] if old["throughput"] else math.nan
        p95_ratio = cur["p95_ms"] / old["p95_ms"] if old["p95_ms"] else math.nan
        rows.append({"scope": scope, "throughput": cur["throughput"], "baseline_throughput": old["throughput"],
                     "throughput_ratio": tp_ratio, "p95_ms": cur["p95_ms"], "baseline_p95_ms": old["p95_ms"],
                     "p95_ratio": p95_ratio})
        for gate, value, op, limit in (("baseline_throughput_ratio", tp_ratio, ">=",
                                        1.0 - tol["baseline_throughput_drop"]),
                                       ("baseline_p95_ratio", p95_ratio, "<=", 1.0 + tol["baseline_p95_rise"])):
            known = not (isinstance(value, float) and math.isnan(value))
            met = known and (value >= limit if op == ">=" else value <= limit)
            gates.append({"scope": scope, "gate": gate, "figure": value if known else None, "op": op,
                          "threshold": limit, "met": met, "note": "" if known else "no figure to compare"})
    return {"baseline": str(baseline_dir), "baseline_run_id": base["run_id"], "rows": rows, "gates": gates}


# ------------------------------------------------------------------------------------------------ plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bin_seconds(span: float) -> float:
    return 1.0 if span <= 300 else 5.0 if span <= 1800 else 30.0


def plots(run_dir: Path, verdict: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of every plot the run's data allows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = _frame(run_dir)
    out: list[tuple[str, str]] = []
    stages = read_json(run_dir / "stages.json") if (run_dir / "stages.json").is_file() else []
    if len(df):
        t0 = float(df["invoke_ts"].min())
        span = float(df["complete_ts"].max()) - t0
        step = _bin_seconds(span)
        df["t_done"] = ((df["complete_ts"] - t0) // step) * step
        df["t_inv"] = ((df["invoke_ts"] - t0) // step) * step
        counts = df.groupby(["t_done", "outcome"]).size().unstack(fill_value=0) / step
        agents = df.groupby("t_inv")["agent"].nunique()
        fig, ax = plt.subplots(figsize=(9, 3.2))
        counts.plot(ax=ax, linewidth=1.2)
        ax.set_xlabel(f"seconds since start ({step:g} s bins)")
        ax.set_ylabel("calls / s")
        ax2 = ax.twinx()
        ax2.step(agents.index, agents.values, where="post", color="grey", linestyle="--", label="agents active")
        for st in stages:
            ax2.axvline(float(st["start"]) - t0, color="lightgrey", linewidth=0.8)
        ax2.set_ylabel("agents active")
        ax2.legend(loc="upper right")
        ax.legend(loc="upper left", title="outcome")
        ax.set_title("Throughput by outcome and agents active")
        out.append(("Throughput and agents over time", _png(fig)))

        done = df[df["outcome"].isin(["ok", "fail"])]
        if len(done):
            q = done.groupby("t_done")["latency_s"].quantile([0.5, 0.95, 0.99]).unstack() * 1000.0
            fig, ax = plt.subplots(figsize=(9, 3.2))
            for col, label in zip(q.columns, ("p50", "p95", "p99"), strict=True):
                ax.plot(q.index, q[col], label=label, linewidth=1.2)
            ax.axhline(float(_setting(run_dir, "gate_p95_ms", 2000.0)), color="red", linestyle=":",
                       label="P95 gate")
            ax.set_yscale("log")
            ax.set_xlabel(f"seconds since start ({step:g} s bins)")
            ax.set_ylabel("latency incl. retries (ms)")
            ax.legend(loc="upper left")
            ax.set_title("Latency percentiles over time")
            out.append(("Latency percentiles over time", _png(fig)))

        fig, ax = plt.subplots(figsize=(9, 2.8))
        df["attempts"].clip(upper=10).value_counts().sort_index().plot.bar(ax=ax, color="steelblue")
        ax.set_xlabel("attempts per call (10 = 10 or more)")
        ax.set_ylabel("calls")
        ax.set_title("Attempts per call")
        out.append(("Attempts per call", _png(fig)))

    rates = _conflict_rates(verdict)
    if rates:
        fig, ax = plt.subplots(figsize=(9, 3.2))
        labels = [r[0] for r in rates]
        ax.bar(labels, [r[1] for r in rates], color=["firebrick" if r[1] >= r[2] else "seagreen" for r in rates])
        ax.scatter(labels, [r[2] for r in rates], marker="_", s=600, color="black", label="threshold", zorder=3)
        ax.set_ylabel("conflicts per attempt")
        ax.set_title("Conflict rate per stage against its threshold")
        ax.legend()
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
        out.append(("Conflict rate per stage", _png(fig)))
    out.extend(scenario_plots(run_dir, verdict, float(df["invoke_ts"].min()) if len(df) else None))
    return out


# the scenarios' plots: each drawn only when the run holds that scenario's data


def _final(run_dir: Path, scenario: str) -> dict[str, Any]:
    path = run_dir / "final" / f"{scenario}.json"
    return read_json(path) if path.is_file() else {}


def scenario_plots(run_dir: Path, verdict: dict[str, Any], t0: float | None) -> list[tuple[str, str]]:
    """Deadlock detection histogram, pool acquire wait over time, queue depth and wait by priority, analytics lag."""
    figures = verdict.get("figures", {})
    out: list[tuple[str, str]] = []
    for title, draw in (("Deadlock detection time", lambda: _deadlock_plot(figures.get("deadlock") or {},
                                                                           run_dir)),
                        ("Pool acquire wait over time", lambda: _pool_plot(run_dir, t0)),
                        ("Queue depth by priority", lambda: _queue_depth_plot(run_dir, t0)),
                        ("Queue wait by priority", lambda: _queue_wait_plot(figures.get("queue") or {}, run_dir)),
                        ("Analytics lag over time", lambda: _lag_plot(run_dir, t0))):
        fig = draw()
        if fig is not None:
            out.append((title, _png(fig)))
    return out


def _deadlock_plot(fig_deadlock: dict[str, Any], run_dir: Path) -> Any:
    import matplotlib.pyplot as plt

    det = fig_deadlock.get("detection") or {}
    hist = det.get("histogram_ms") or {}
    if not det.get("n") or not hist:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(list(hist), list(hist.values()), color="slategray")
    gate = float(_setting(run_dir, "gate_detection_ms", 500.0))
    ax.set_xlabel("detection time (ms): the victim's error − the last member's request for its second lock")
    ax.set_ylabel("resolved cycles")
    ax.set_title(f"Deadlock detection time: {det['n']} cycles, p50 {_fmt(det.get('p50_ms'))} ms, "
                 f"p95 {_fmt(det.get('p95_ms'))} ms, p99 {_fmt(det.get('p99_ms'))} ms (gate p99 < {gate:g} ms)")
    return fig


def _pool_plot(run_dir: Path, t0: float | None) -> Any:
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = [(float(op["invoke_ts"]), float(op["result"]["wait_ms"]), op.get("reason") == "pool-timeout")
            for op in read_history(run_dir).ops
            if op["tool"] == "analyze" and (op.get("result") or {}).get("wait_ms") is not None]
    if not rows or t0 is None:
        return None
    df = pd.DataFrame(rows, columns=["t", "wait_ms", "timeout"])
    df["t"] -= t0
    step = _bin_seconds(float(df["t"].max()))
    served, timed_out = df[~df["timeout"]], df[df["timeout"]]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.scatter(served["t"], served["wait_ms"], s=6, color="lightsteelblue", label="served call")
    if len(timed_out):
        ax.scatter(timed_out["t"], timed_out["wait_ms"], s=18, marker="x", color="firebrick", label="pool timeout")
    if len(served):
        q = served.groupby((served["t"] // step) * step + step / 2)["wait_ms"].quantile([0.5, 0.95]).unstack()
        for col, label in zip(q.columns, ("p50", "p95"), strict=True):
            ax.plot(q.index, q[col], label=f"{label} ({step:g} s bins)", linewidth=1.2)
    ax.set_xlabel("seconds since start (call invoked)")
    ax.set_ylabel("acquire wait (ms)")
    ax.legend(loc="upper left")
    ax.set_title("Pool acquire wait over time (analytical calls)")
    return fig


def queue_depth(jobs: Any) -> Any:
    """Ready jobs per priority over time (epoch seconds), replayed from the queue's job records: +1 when a job
    is admitted, -1 when it is first claimed (an admission sorts before a claim at the same microsecond)."""
    import pandas as pd

    from checks.queue import ADMITTED, CLAIMED, PRIO, PRIORITY_NAMES

    events = []
    for rec in jobs:
        if int(rec[ADMITTED]):
            events.append((int(rec[ADMITTED]) / 1e6, PRIORITY_NAMES[int(rec[PRIO])], 1))
            if int(rec[CLAIMED]):
                events.append((int(rec[CLAIMED]) / 1e6, PRIORITY_NAMES[int(rec[PRIO])], -1))
    df = pd.DataFrame(sorted(events, key=lambda e: (e[0], -e[2])), columns=["t", "priority", "delta"])
    df["delta"] = df["delta"].astype("int64")  # an empty frame's columns are object dtype
    df["depth"] = df.groupby("priority")["delta"].cumsum()
    return df


def _queue_depth_plot(run_dir: Path, t0: float | None) -> Any:
    import matplotlib.pyplot as plt

    from checks.queue import PRIORITY_NAMES

    df = queue_depth(((_final(run_dir, "queue").get("redis") or {}).get("jobs") or {}).values())
    if not len(df):
        return None
    df["t"] -= t0 if t0 is not None else float(df["t"].min())
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for name in PRIORITY_NAMES:
        part = df[df["priority"] == name]
        if len(part):
            ax.step(part["t"], part["depth"], where="post", label=name, linewidth=1.2)
    capacity = _setting(run_dir, "queue_capacity", None)
    note = ""
    if capacity is not None:
        note = f"; capacity {capacity} for the whole queue, ready + in flight"
        if float(df["depth"].max()) >= 0.2 * float(capacity):  # else the line would flatten the curves
            ax.axhline(float(capacity), color="red", linestyle=":", label="capacity (ready + in flight)")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("ready jobs (admitted, not claimed)")
    ax.legend(loc="best", title="priority")
    ax.set_title(f"Queue depth by priority (replayed from the job records{note})")
    return fig


def _queue_wait_plot(fig_queue: dict[str, Any], run_dir: Path) -> Any:
    import matplotlib.pyplot as plt

    waits = {name: w for name, w in (fig_queue.get("queue_wait_by_priority") or {}).items() if w.get("jobs")}
    if not waits:
        return None
    names = list(waits)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = range(len(names))
    for offset, key, color in ((-0.2, "p50_ms", "steelblue"), (0.2, "p95_ms", "darkorange")):
        vals = [float(waits[n][key]) if waits[n].get(key) is not None else math.nan for n in names]
        ax.bar([i + offset for i in x], vals, width=0.4, color=color, label=key.replace("_ms", ""))
    gate = _setting(run_dir, "gate_critical_wait_p95_ms", None)
    if gate is not None and "critical" in names:
        i = names.index("critical")
        ax.hlines(float(gate), i - 0.45, i + 0.45, color="red", linestyle=":", label="critical P95 gate")
    ax.set_xticks(list(x), [f"{n} ({waits[n]['jobs']} jobs)" for n in names])
    ax.set_ylabel("queue wait, admitted → first claimed (ms)")
    ax.legend(loc="best")
    ax.set_title("Queue wait by priority")
    return fig


def _lag_plot(run_dir: Path, t0: float | None) -> Any:
    import matplotlib.pyplot as plt

    rows = sorted((float(r["created_at"]), (float(r["relayed_at"]) - float(r["created_at"])) * 1000.0)
                  for r in _final(run_dir, "crossservice").get("outbox", []) if r.get("relayed_at") is not None)
    if not rows:
        return None
    base = t0 if t0 is not None else rows[0][0]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.scatter([r[0] - base for r in rows], [r[1] for r in rows], s=6, color="teal")
    ax.set_xlabel("seconds since start (outbox event created)")
    ax.set_ylabel("lag to ClickHouse (ms)")
    ax.set_title(f"Analytics lag over time (outbox → ClickHouse, {len(rows)} events)")
    return fig


def _conflict_rates(verdict: dict[str, Any]) -> list[tuple[str, float, float]]:
    rows = []
    for gate in verdict.get("gates", []):
        if gate["gate"] == "conflict_rate" and gate.get("figure") is not None:
            rows.append((gate["scope"], float(gate["figure"]), float(gate["threshold"])))
    staged = [r for r in rows if ".stage" in r[0]]
    return staged or rows


def _setting(run_dir: Path, key: str, default: Any) -> Any:
    options = read_json(run_dir / "options.json") if (run_dir / "options.json").is_file() else {}
    value = options.get("settings", {}).get(key)
    return default if value is None else value


# ------------------------------------------------------------------------------------------------- html


def _mask(key: str, value: Any) -> Any:
    if isinstance(value, str) and value and (SECRET_KEY.search(key) or "://" in value):
        return mask_url(value) if "://" in value else "***"
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], raw: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell if i in raw else _fmt(cell)}</td>" for i, cell in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top;font-size:13px}th{background:#f3f3f3}.true{color:#176f2c}.false{color:#b00020;font-weight:bold}
.unknown{color:#a15c00;font-weight:bold}img{max-width:100%;display:block;margin:.3em 0 1.2em}
pre{margin:0;white-space:pre-wrap;font-size:12px}.verdict{font-size:1.2em;padding:.5em;background:#f6f6f6}"""


def render(run_dir: Path, comparison: dict[str, Any] | None = None) -> str:
    import orjson

    verdict = read_json(run_dir / "checks.json")
    options = read_json(run_dir / "options.json") if (run_dir / "options.json").is_file() else {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>toolclash run {_fmt(verdict.get('run_id'))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>toolclash run {_fmt(verdict.get('run_id'))}</h1>",
             f"<p class='verdict'>exit code <b>{verdict['exit_code']}</b>: {_fmt(verdict['meaning'])}</p>"]
    parts.append("<h2>Plots</h2>")
    for title, png in plots(run_dir, verdict):
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Checks</h2>")
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
    parts.append("<h2>SLA gates</h2>")
    gates = list(verdict.get("gates", []))
    parts.append(_table(("scope", "gate", "figure", "threshold", "met", "note"),
                        [(g["scope"], g["gate"], "n/a" if g["figure"] is None else g["figure"],
                          f"{g['op']} {_fmt(g['threshold'])}",
                          "<span class='true'>yes</span>" if g["met"] else "<span class='false'>NO</span>",
                          g.get("note", "")) for g in gates], raw=(4,)))
    if comparison:
        parts.append(f"<h2>Against baseline {_fmt(comparison['baseline_run_id'])}</h2>")
        parts.append(_table(("scope", "ok calls/s", "baseline", "ratio", "P95 ms", "baseline", "ratio"),
                            [(r["scope"], r["throughput"], r["baseline_throughput"], r["throughput_ratio"],
                              r["p95_ms"], r["baseline_p95_ms"], r["p95_ratio"]) for r in comparison["rows"]]))
        parts.append(_table(("scope", "gate", "figure", "threshold", "met"),
                            [(g["scope"], g["gate"], "n/a" if g["figure"] is None else g["figure"],
                              f"{g['op']} {_fmt(g['threshold'])}", "yes" if g["met"] else "NO")
                             for g in comparison["gates"]]))
    parts.append("<h2>Figures</h2>")
    parts.append(_table(("scope", "calls", "ok", "failed", "rejected", "unknown", "attempts", "conflict rate",
                         "p50 ms", "p95 ms", "p99 ms"),
                        [(scope, f["calls"], f["ok"], f["failed"], f["rejected"], f["unknown"], f["attempts"],
                          f["conflict_rate"], f["p50_ms"], f["p95_ms"], f.get("p99_ms", math.nan))
                         for scope, f in verdict.get("figures", {}).items()]))
    counters = verdict.get("counters") or {}
    if counters:
        parts.append("<h2>Live counters</h2>")
        parts.append(_table(("counter", "value"), sorted(counters.items())))
    parts.append("<h2>Options</h2>")
    settings = options.get("settings", {})
    parts.append(_table(("option", "value"), [(k, _mask(k, v)) for k, v in sorted(settings.items())
                                              if not isinstance(v, dict | list) or k in ("strategies", "faults")]))
    parts.append(_table(("locust", "value"), sorted((options.get("locust") or {}).items())))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: Path, baseline: str | None = None) -> Path:
    """Write ``report.html`` (and ``baseline.json`` when a baseline is given or named in the run's options)."""
    run_dir = Path(run_dir)
    baseline = baseline if baseline is not None else str(_setting(run_dir, "baseline", "") or "")
    comparison = None
    if baseline:
        tolerances = {k: float(_setting(run_dir, k, v)) for k, v in DEFAULT_TOLERANCES.items()}
        comparison = compare(run_dir, Path(baseline), tolerances)
        write_json(run_dir / "baseline.json", comparison)
    path = run_dir / "report.html"
    tmp = path.with_name("report.html.tmp")
    tmp.write_text(render(run_dir, comparison), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolclash.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory, reports/<run-id>")
    parser.add_argument("--baseline", default=None, help="another run directory to compare with")
    args = parser.parse_args(argv)
    try:
        path = write_report(Path(args.run), args.baseline)
    except (OSError, ValueError) as exc:
        print(f"toolclash.report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
