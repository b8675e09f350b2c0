"""The report's plots: throughput, latency, attempts and conflict rate per stage for every run, then each
scenario's own plots (declared in its checks module's ``SPEC.plots``)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from checks.plotting import PlotInput, bin_seconds, pyplot, shade_faults
from checks.verdict import spec_of
from toolclash.history import read_history
from toolclash.nemesis.record import read_faults
from toolclash.run import read_json


def frame(ops: list[Any]) -> Any:
    import pandas as pd

    if not ops:
        return pd.DataFrame(columns=["tool", "outcome", "invoke_ts", "complete_ts", "attempts", "agent",
                                     "latency_s", "retries"])
    df = pd.DataFrame.from_records(ops, columns=["tool", "outcome", "invoke_ts", "complete_ts", "attempts", "agent",
                                                 "result", "error_class"])
    df["latency_s"] = df["complete_ts"] - df["invoke_ts"]
    df["retries"] = [sum((r or {}).get("retries", {}).values()) for r in df["result"]]
    return df.drop(columns=["result"])


def png(fig: Any) -> str:
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(run_dir: Path, verdict: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of every plot the run's data allows."""
    plt = pyplot()
    ops = read_history(run_dir).ops
    df = frame(ops)
    options = read_json(run_dir / "options.json") if (run_dir / "options.json").is_file() else {}
    settings = options.get("settings", {})
    out: list[tuple[str, str]] = []
    stages = read_json(run_dir / "stages.json") if (run_dir / "stages.json").is_file() else []
    faults = read_faults(run_dir)
    if len(df):
        t0 = float(df["invoke_ts"].min())
        span = float(df["complete_ts"].max()) - t0
        step = bin_seconds(span)
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
        shade_faults(ax, faults, t0)
        ax.set_title("Throughput by outcome and agents active")
        out.append(("Throughput and agents over time", png(fig)))

        done = df[df["outcome"].isin(["ok", "fail"])]
        if len(done):
            q = done.groupby("t_done")["latency_s"].quantile([0.5, 0.95, 0.99]).unstack() * 1000.0
            fig, ax = plt.subplots(figsize=(9, 3.2))
            for col, label in zip(q.columns, ("p50", "p95", "p99"), strict=True):
                ax.plot(q.index, q[col], label=label, linewidth=1.2)
            ax.axhline(float(settings.get("gate_p95_ms") or 2000.0), color="red", linestyle=":",
                       label="P95 gate")
            ax.set_yscale("log")
            ax.set_xlabel(f"seconds since start ({step:g} s bins)")
            ax.set_ylabel("latency incl. retries (ms)")
            ax.legend(loc="upper left")
            shade_faults(ax, faults, t0)
            ax.set_title("Latency percentiles over time")
            out.append(("Latency percentiles over time", png(fig)))

        fig, ax = plt.subplots(figsize=(9, 2.8))
        df["attempts"].clip(upper=10).value_counts().sort_index().plot.bar(ax=ax, color="steelblue")
        ax.set_xlabel("attempts per call (10 = 10 or more)")
        ax.set_ylabel("calls")
        ax.set_title("Attempts per call")
        out.append(("Attempts per call", png(fig)))

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
        out.append(("Conflict rate per stage", png(fig)))
    inputs = PlotInput(run_dir, verdict, ops, settings, float(df["invoke_ts"].min()) if len(df) else None,
                       faults=faults)
    for name in options.get("scenarios", []):
        spec = spec_of(name)[1]
        if spec.plots is not None:
            out.extend((title, png(fig)) for title, fig in spec.plots(inputs))
    return out




def _conflict_rates(verdict: dict[str, Any]) -> list[tuple[str, float, float]]:
    rows = []
    for gate in verdict.get("gates", []):
        if gate["gate"] == "conflict_rate" and gate.get("figure") is not None:
            rows.append((gate["scope"], float(gate["figure"]), float(gate["threshold"])))
    staged = [r for r in rows if ".stage" in r[0]]
    return staged or rows


