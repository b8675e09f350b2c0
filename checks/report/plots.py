"""The report's plots: throughput by outcome, latency, attempts and conflict rate per stage for every run, a
timeline of every agent's calls, then each scenario's own plots (declared in its checks module's ``SPEC.plots``).

Only tool calls are drawn: history records that are observations (a scenario's samples, e.g. the pool's
``pool_sample`` / ``pool_state``: any tool its scenario does not list in ``Scenario.tools``) are left out. Outcomes
are four classes everywhere: ok, rejected (a correct business answer: insufficient funds, queue full…), failed,
and in doubt (``unknown``: the checks resolve them). Figures are drawn at the report's width (``WIDTH_IN`` at
``DPI`` = 1,100 px) so that the page shows them unscaled.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from checks.gates import BUSINESS_REJECTIONS
from checks.plotting import PlotInput, bin_seconds, pyplot, shade_faults
from checks.verdict import spec_of
from toolclash.history import read_history
from toolclash.nemesis.record import read_faults
from toolclash.run import read_json

WIDTH_IN, DPI = 11.0, 100
CLASSES = ("ok", "rejected", "failed", "in doubt")
COLORS = {"ok": "#2e8b57", "rejected": "#7f8fa6", "failed": "#c0392b", "in doubt": "#e6a100"}
TIMELINE_AGENTS = 60
"""At most this many agents in the timeline (the first by name; the report says how many were left out)."""


def call_ops(ops: list[Any], scenarios: Iterable[str]) -> tuple[list[Any], frozenset[str]]:
    """The tool calls among *ops* (observation records left out) and the run's business rejection reasons."""
    tools: set[str] = set()
    rejections = set(BUSINESS_REJECTIONS)
    for name in scenarios:
        sc = spec_of(name)[0]
        tools.update(sc.tools)
        rejections.update(sc.rejections)
    # a run that names no scenario: only the records marked as observations go
    kept = ([op for op in ops if op["tool"] in tools] if tools
            else [op for op in ops if op.get("strategy") != "observe"])
    return kept, frozenset(rejections)


def outcome_class(op: Any, rejections: frozenset[str]) -> str:
    outcome = op["outcome"]
    if outcome == "ok":
        return "ok"
    if outcome == "unknown":
        return "in doubt"
    return "rejected" if op.get("reason") in rejections else "failed"


def frame(ops: list[Any], rejections: frozenset[str] = BUSINESS_REJECTIONS) -> Any:
    import pandas as pd

    columns = ["op_id", "tool", "outcome", "invoke_ts", "complete_ts", "attempts", "agent", "reason"]
    if not ops:
        return pd.DataFrame(columns=[*columns, "latency_s", "retries", "cls"])
    df = pd.DataFrame.from_records(ops, columns=[*columns, "result", "error_class"])
    df["latency_s"] = df["complete_ts"] - df["invoke_ts"]
    df["retries"] = [sum((r or {}).get("retries", {}).values()) for r in df["result"]]
    df["cls"] = [outcome_class(op, rejections) for op in ops]
    return df.drop(columns=["result"])


def png(fig: Any) -> str:
    """*fig* as a base64 PNG exactly the report's width (a scenario's figure is widened to it, laid out again)."""
    plt = pyplot()
    width, height = fig.get_size_inches()
    if abs(width - WIDTH_IN) > 0.01:
        fig.set_size_inches(WIDTH_IN, height)
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def evidence_op_ids(verdict: dict[str, Any], known: set[str]) -> dict[str, list[str]]:
    """Op id → the checks whose evidence names it (any string in an evidence item that is a known op id)."""
    out: dict[str, list[str]] = {}

    def walk(value: Any, check: str) -> None:
        if isinstance(value, str):
            if value in known and check not in out.setdefault(value, []):
                out[value].append(check)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, check)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, check)

    for check in verdict.get("checks", []):
        if check.get("valid") is not True:
            walk(check.get("evidence", []), check["name"])
    return {k: v for k, v in out.items() if v}


def figures(run_dir: Path, verdict: dict[str, Any]) -> list[tuple[str, Any]]:
    """(title, matplotlib figure) of every plot the run's data allows."""
    options = read_json(run_dir / "options.json") if (run_dir / "options.json").is_file() else {}
    settings = options.get("settings", {})
    scenarios = options.get("scenarios", [])
    all_ops = read_history(run_dir).ops
    ops, rejections = call_ops(all_ops, scenarios)
    df = frame(ops, rejections)
    stages = read_json(run_dir / "stages.json") if (run_dir / "stages.json").is_file() else []
    faults = read_faults(run_dir)
    out: list[tuple[str, Any]] = []
    t0 = float(df["invoke_ts"].min()) if len(df) else None
    if t0 is not None:
        span = float(df["complete_ts"].max()) - t0
        step = bin_seconds(span)
        df["t_done"] = ((df["complete_ts"] - t0) // step) * step
        df["t_inv"] = ((df["invoke_ts"] - t0) // step) * step
        out.append(("Throughput and agents over time", _throughput(df, stages, faults, t0, step)))
        latency = _latency(df, settings, faults, t0, step)
        if latency is not None:
            out.append(("Latency percentiles over time", latency))
        out.append(("Attempts per call", _attempts(df)))
    rates = _conflict_rates(verdict)
    if rates:
        out.append(("Conflict rate per stage", _conflict_plot(rates)))
    if t0 is not None:
        out.append(("Timeline of every agent's calls", _timeline(df, verdict, stages, faults, t0)))
    inputs = PlotInput(run_dir, verdict, ops, settings, t0)
    for name in scenarios:
        spec = spec_of(name)[1]
        if spec.plots is not None:
            out.extend(spec.plots(inputs))
    return out


def plots(run_dir: Path, verdict: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of every plot the run's data allows."""
    return [(title, png(fig)) for title, fig in figures(run_dir, verdict)]


def _axes(height: float) -> tuple[Any, Any]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, height), layout="constrained")
    return fig, ax


def _stage_lines(ax: Any, stages: list[Any], t0: float) -> None:
    for st in stages:
        ax.axvline(float(st["start"]) - t0, color="#bbbbbb", linewidth=0.8, zorder=0)


def _throughput(df: Any, stages: list[Any], faults: list[Any], t0: float, step: float) -> Any:
    counts = df.groupby(["t_done", "cls"]).size().unstack(fill_value=0) / step
    counts = counts.reindex(columns=[c for c in CLASSES if c in counts.columns])
    bins = [i * step for i in range(int(counts.index.max() // step) + 2)] if len(counts) else []
    counts = counts.reindex(bins, fill_value=0)  # a second with no call is a zero, not the last bin held on
    agents = df.groupby("t_inv")["agent"].nunique()
    fig, ax = _axes(3.6)
    ax.stackplot(counts.index, *[counts[c] for c in counts.columns], labels=list(counts.columns),
                 colors=[COLORS[c] for c in counts.columns], step="post", alpha=0.9)
    ax.set_xlabel(f"seconds since the first call ({step:g} s bins)")
    ax.set_ylabel("calls completed / s")
    ax2 = ax.twinx()
    ax2.step(agents.index, agents.values, where="post", color="black", linestyle="--", linewidth=1,
             label="agents active")
    ax2.set_ylabel("agents active")
    ax2.set_ylim(bottom=0)
    _stage_lines(ax, stages, t0)
    shade_faults(ax, faults, t0)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, loc="outside lower center", ncols=8, fontsize=9, frameon=False)
    ax.set_title("Throughput by outcome (stacked) and agents active", loc="right", fontsize=11)
    return fig


def _latency(df: Any, settings: dict[str, Any], faults: list[Any], t0: float, step: float) -> Any:
    done = df[df["cls"].isin(["ok", "failed"])]
    if not len(done):
        return None
    q = done.groupby("t_done")["latency_s"].quantile([0.5, 0.95, 0.99]).unstack() * 1000.0
    fig, ax = _axes(3.2)
    for col, label in zip(q.columns, ("p50", "p95", "p99"), strict=True):
        ax.plot(q.index, q[col], label=label, linewidth=1.2)
    ax.axhline(float(settings.get("gate_p95_ms") or 2000.0), color="red", linestyle=":", label="P95 gate")
    shade_faults(ax, faults, t0)
    ax.set_yscale("log")
    ax.set_xlabel(f"seconds since the first call ({step:g} s bins)")
    ax.set_ylabel("latency incl. retries (ms)")
    ax.legend(loc="upper left", ncols=4, fontsize=9, frameon=False)
    ax.set_title("Latency percentiles over time (ok and failed calls)", loc="right", fontsize=11)
    return fig


def _attempts(df: Any) -> Any:
    fig, ax = _axes(2.8)
    counts = df["attempts"].clip(upper=10).value_counts().sort_index()
    ax.bar([str(int(a)) if a < 10 else "10+" for a in counts.index], counts.values, color="steelblue")
    ax.set_xlabel("attempts per call")
    ax.set_ylabel("calls")
    ax.set_yscale("log")
    ax.set_title("Attempts per call", loc="right", fontsize=11)
    return fig


def _conflict_plot(rates: list[tuple[str, float, float]]) -> Any:
    fig, ax = _axes(max(2.0, 0.28 * len(rates) + 1.0))
    labels = [r[0] for r in rates]
    y = list(range(len(rates)))
    ax.barh(y, [r[1] for r in rates], color=["#c0392b" if r[1] >= r[2] else "#2e8b57" for r in rates], height=0.6)
    ax.scatter([r[2] for r in rates], y, marker="|", s=300, color="black", label="threshold", zorder=3)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("conflicts per attempt (red: at or above its threshold)")
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title("Conflict rate per stage against its threshold", loc="right", fontsize=11)
    return fig


def _timeline(df: Any, verdict: dict[str, Any], stages: list[Any], faults: list[Any], t0: float) -> Any:
    agents = sorted(df["agent"].dropna().unique(), key=lambda a: (len(str(a)), str(a)))
    shown = agents[:TIMELINE_AGENTS]
    row = {a: i for i, a in enumerate(shown)}
    part = df[df["agent"].isin(row)]
    fig, ax = _axes(max(2.5, 0.16 * len(shown) + 1.3))
    for cls in CLASSES:
        sel = part[part["cls"] == cls]
        if len(sel):
            ax.hlines([row[a] for a in sel["agent"]], sel["invoke_ts"] - t0, sel["complete_ts"] - t0,
                      colors=COLORS[cls], linewidth=3.5, label=cls)
    marked = evidence_op_ids(verdict, set(part["op_id"]))
    if marked:
        sel = part[part["op_id"].isin(marked)]
        ax.scatter((sel["invoke_ts"] + sel["complete_ts"]) / 2 - t0, [row[a] for a in sel["agent"]], marker="D",
                   s=28, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4,
                   label="named in evidence")
    _stage_lines(ax, stages, t0)
    shade_faults(ax, faults, t0)
    step = max(1, len(shown) // 20)
    ax.set_yticks(list(range(0, len(shown), step)), [str(a) for a in shown[::step]], fontsize=7)
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlabel("seconds since the first call")
    left_out = len(agents) - len(shown)
    ax.set_ylabel("agent" + (f" (first {len(shown)} of {len(agents)})" if left_out else ""))
    fig.legend(loc="outside lower center", ncols=8, fontsize=9, frameon=False)
    ax.set_title("Every call of every agent, coloured by outcome", loc="right", fontsize=11)
    return fig


def _conflict_rates(verdict: dict[str, Any]) -> list[tuple[str, float, float]]:
    rows = []
    for gate in verdict.get("gates", []):
        if gate["gate"] == "conflict_rate" and gate.get("figure") is not None:
            rows.append((gate["scope"], float(gate["figure"]), float(gate["threshold"])))
    staged = [r for r in rows if ".stage" in r[0]]
    return staged or rows
