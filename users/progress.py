"""One progress line every few seconds in a headless run (like pgbench's ``-P``), on the master or the single
process, on stderr::

    progress: 15.0 s, stage 2 (10 agents), 10 agents, 152.3 calls/s, conflict rate 3.1% (gate 5%), retries 45,
    in doubt 0, failed or rejected 2, breakers open 0, gates at risk: none

Figures are over the last interval, from the master's merged metrics (workers report every 3 s) and live
counters; "gates at risk" names the gates the interval's figures would miss (conflict rate, P95). ``breakers
open`` appears when a scenario keeps the live counter ``breaker_open``. ``--progress-s 0`` turns it off.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from toolclash.metrics import LATENCY_BUCKETS
from toolclash.settings import SMALL_STAGE


@dataclass
class Sample:
    at: float
    calls: float
    failed: float
    attempts: float
    retries: float
    buckets: list[float]


def sample(registry: Any, at: float) -> Sample:
    calls = failed = attempts = retries = 0.0
    for (metric, labels), value in registry.counters.items():
        if metric == "toolclash_tool_calls_total":
            calls += value
            if dict(labels).get("outcome") == "fail":
                failed += value
        elif metric == "toolclash_tool_attempts_total":
            attempts += value
        elif metric == "toolclash_retries_total":
            retries += value
    buckets = [0.0] * (len(LATENCY_BUCKETS) + 1)
    for (metric, _labels), hist in registry.histograms.items():
        if metric == "toolclash_tool_call_duration_seconds":
            for i, n in enumerate(hist.counts):
                buckets[i] += n
    return Sample(at, calls, failed, attempts, retries, buckets)


def p95_upper_ms(buckets: list[float]) -> float | None:
    """Upper bound (ms) of the bucket holding the 95th percentile of *buckets* (per-bucket counts); None: no call."""
    total = sum(buckets)
    if total <= 0:
        return None
    running = 0.0
    for bound, n in zip((*LATENCY_BUCKETS, math.inf), buckets, strict=True):
        running += n
        if running >= 0.95 * total:
            return bound * 1000.0
    return math.inf


def line(rt: Any, prev: Sample, now: Sample, agents: int | None, t0: float) -> str:
    """The progress line for the interval *prev* → *now*."""
    settings = rt.require_settings()
    dt = max(now.at - prev.at, 1e-9)
    calls = now.calls - prev.calls
    attempts, retries = now.attempts - prev.attempts, now.retries - prev.retries
    rate = retries / attempts if attempts else 0.0
    stage = rt.current_stage()
    if stage is not None:
        gate = settings.stage_gate_conflict_low if stage["users"] <= SMALL_STAGE else settings.stage_gate_conflict_high
    else:
        gate = settings.gate_conflict_rate
    p95 = p95_upper_ms([b - a for a, b in zip(prev.buckets, now.buckets, strict=True)])
    risk = []
    if attempts and rate >= gate:
        risk.append(f"conflict_rate {rate:.1%} >= {gate:.0%}")
    if p95 is not None and p95 > settings.gate_p95_ms:
        shown = f"{p95:.0f}" if not math.isinf(p95) else f"> {LATENCY_BUCKETS[-1] * 1000:.0f}"
        risk.append(f"p95 up to {shown} ms > {settings.gate_p95_ms:.0f} ms")
    counters = dict(rt.counters.items())
    parts = [f"progress: {now.at - t0:.1f} s"]
    if stage is not None:
        parts.append(f"stage {stage['stage']} ({stage['users']} agents)")
    if agents is not None:
        parts.append(f"{agents} agents")
    parts += [f"{calls / dt:.1f} calls/s", f"conflict rate {rate:.1%} (gate {gate:.0%})",
              f"retries {int(counters.get('conflicts', 0))}", f"in doubt {int(counters.get('calls_unknown', 0))}",
              f"failed or rejected {int(now.failed)}"]
    if "breaker_open" in counters:
        parts.append(f"breakers open {int(counters['breaker_open'])}")
    parts.append("gates at risk: " + ("; ".join(risk) if risk else "none"))
    return ", ".join(parts)


class ProgressPrinter:
    """Prints :func:`line` every *every_s* seconds until stopped."""

    def __init__(self, rt: Any, registry: Any, every_s: float, agents: Callable[[], int | None],
                 write: Callable[[str], Any] | None = None) -> None:
        self.rt, self.registry, self.every_s, self.agents = rt, registry, every_s, agents
        self.write = write or (lambda text: (sys.stderr.write(text + "\n"), sys.stderr.flush()))
        self.greenlet: Any = None
        self.t0 = time.time()

    def start(self) -> ProgressPrinter:
        self.t0 = time.time()
        self.greenlet = gevent.spawn(self._loop)
        return self

    def _loop(self) -> None:
        prev = sample(self.registry, time.time())
        while True:
            gevent.sleep(self.every_s)
            now = sample(self.registry, time.time())
            try:
                self.write(line(self.rt, prev, now, self.agents(), self.t0))
            except Exception as exc:  # noqa: BLE001 - a progress line must never stop the run
                self.write(f"progress: (not shown: {type(exc).__name__}: {exc})")
            prev = now

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None
