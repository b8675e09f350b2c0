"""Live metrics of a run, Locust-free: a small registry that workers fill and ship, the master merges
and exposes in Prometheus's text format.

Why not prometheus-client's own metric objects in every process: they cannot be summed across
processes without a shared directory, and their ``labels()`` lookups cost more than this dict on
the agents' hot path. Here every process records into plain dicts; a worker hands its *deltas*
(counters, histogram bucket counts, sums, counts) to the master with Locust's report message every
3 s; the master adds them (counters and buckets summed, never averaged) and a
:class:`RegistryCollector` turns the totals into metric families at scrape time.

Naming follows Prometheus: base units, ``_total`` counters, ``_seconds`` histograms, and bounded
label sets (tool, strategy, outcome, cause, sqlstate, stage, priority, check, gate, process,
event): never an operation or agent id.

Scenario counters need no code here: ``Runtime.bump("queue_redelivered")`` appears as
``toolclash_queue_events_total{event="redelivered"}`` (a known prefix, see :data:`PREFIXES`) and any
other name as ``toolclash_events_total{event="<name>"}``. Gauges and histograms a scenario wants are
recorded with :meth:`Registry.set` and :meth:`Registry.observe` under the names of :data:`METRICS`
(or a new ``toolclash_…`` name, declared on first use).
"""

from __future__ import annotations

import bisect
import json
import math
import re
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

Labels = tuple[tuple[str, str], ...]

DEFAULT_METRICS_PORT = 9646
"""Where the exporter listens unless told otherwise (or unless a Prometheus names another port)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds; 0.5 and 2.0 are bucket bounds so the SLA thresholds (deadlock 500 ms, P95 2 s) are exact."""

@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("toolclash_tool_calls_total", "counter", "Tool calls by final outcome (ok, fail, unknown)",
           ("tool", "strategy", "outcome")),
    Metric("toolclash_tool_attempts_total", "counter", "Attempts (transactions tried) of tool calls",
           ("tool", "strategy")),
    Metric("toolclash_tool_call_duration_seconds", "histogram", "Tool call latency including retries and backoff",
           ("tool", "strategy")),
    Metric("toolclash_retries_total", "counter", "Retries of tool calls by cause", ("tool", "cause")),
    Metric("toolclash_conflicts_total", "counter", "Retryable conflicts by SQLSTATE", ("tool", "sqlstate")),
    Metric("toolclash_retry_backoff_seconds_total", "counter", "Time spent backing off before retries", ("tool",)),
    Metric("toolclash_events_total", "counter", "Live runtime counters not mapped to a named metric", ("event",)),
    Metric("toolclash_deadlock_events_total", "counter", "Deadlock counters of the scenarios", ("event",)),
    Metric("toolclash_lock_events_total", "counter", "Lock counters of the scenarios", ("event",)),
    Metric("toolclash_pool_events_total", "counter", "Connection-pool counters of the scenarios", ("event",)),
    Metric("toolclash_queue_events_total", "counter", "Queue counters (admitted, rejected, redelivered…)",
           ("event",)),
    Metric("toolclash_barrier_events_total", "counter", "Barrier waits and timeouts (--sync)", ("event",)),
    Metric("toolclash_breaker_events_total", "counter", "Circuit breakers of the agents: opened, half_open, closed, "
           "skipped (tasks not run while open), failures (connection failures seen)", ("event",)),
    Metric("toolclash_breaker_agents", "gauge", "Agents whose circuit breaker is in each state", ("state",)),
    # the nemesis (--nemesis), on the master: what Grafana annotates
    Metric("toolclash_fault_active", "gauge", "1 while a fault of this kind and target is in effect",
           ("kind", "target")),
    Metric("toolclash_fault_windows_total", "counter", "Fault windows opened so far", ("kind", "target")),
    Metric("toolclash_run_aborted", "gauge", "1 once the run was stopped by --abort-on or the stop-now button"),
    # recorded by the scenarios that have them (deadlock, pool, queue); the alerts and dashboards use these names
    Metric("toolclash_deadlock_detection_seconds", "histogram", "Time from a deadlock forming to its detection",
           ("tool",)),
    Metric("toolclash_lock_wait_seconds", "histogram", "Time spent waiting for row or advisory locks", ("tool",)),
    Metric("toolclash_pool_acquire_wait_seconds", "histogram", "Wait for a pooled connection", ("pool",)),
    Metric("toolclash_pool_size", "gauge", "Connections in the pool", ("pool",)),
    Metric("toolclash_pool_in_use", "gauge", "Pooled connections in use", ("pool",)),
    Metric("toolclash_pool_waiting", "gauge", "Clients waiting for a pooled connection", ("pool",)),
    Metric("toolclash_queue_depth", "gauge", "Jobs waiting in the queue", ("priority",)),
    Metric("toolclash_queue_capacity", "gauge", "Admission limit of the queue", ("priority",)),
    # the master's own view
    Metric("toolclash_agents", "gauge", "Agents (Locust users) running now"),
    Metric("toolclash_ramp_stage", "gauge", "Current ramp stage (1-based; 0 outside a ramp)"),
    Metric("toolclash_ramp_stage_agents", "gauge", "Agents the current ramp stage asks for"),
    Metric("toolclash_conflict_rate_threshold", "gauge", "Conflict-rate SLA threshold of the run's profile"),
    Metric("toolclash_run_active", "gauge", "1 while a run is under way"),
    Metric("toolclash_workers", "gauge", "Worker processes connected to the master"),
    Metric("toolclash_run_info", "gauge", "1 per scenario of the run under way (or last judged): run id, scenario and "
           "its strategy, so dashboards tell runs apart", ("run_id", "scenario", "strategy")),
    Metric("toolclash_ramp_stage_start_timestamp_seconds", "gauge", "Unix time the current ramp stage began "
           "(Grafana: an annotation per stage, 'series value as timestamp')"),
    Metric("toolclash_process_cpu_seconds_total", "counter", "CPU time of toolclash's Locust processes",
           ("process",)),
    Metric("toolclash_process_resident_memory_bytes", "gauge", "Resident memory of toolclash's Locust processes",
           ("process",)),
    Metric("toolclash_server_cpu_seconds_total", "counter", "CPU time of the servers the embedded stack started "
           "(with their child processes)", ("server",)),
    Metric("toolclash_server_resident_memory_bytes", "gauge", "Resident memory of the embedded stack's servers "
           "(with their child processes)", ("server",)),
    # after the run
    Metric("toolclash_check_state", "gauge", "State set of each check's verdict: 1 for its state (valid, invalid or "
           "unknown), 0 for the two others", ("check", "state")),
    Metric("toolclash_gate_met", "gauge", "Each SLA gate: 1 met, 0 missed", ("scope", "gate")),
    Metric("toolclash_verdict_exit_code", "gauge", "Exit code of the last verdict (0 ok, 1 anomaly, 3 unknown, 4 SLA)"),
    Metric("toolclash_prepared_xacts_left", "gauge", "Prepared transactions left on the server after the run"),
    Metric("toolclash_sessions_left", "gauge", "Sessions of the run still open on the server after the run"),
    Metric("toolclash_fault_recovery_seconds", "gauge", "Seconds from a fault's end until throughput was back at "
           "0.9 of the minute before it (the longest over windows of the same kind and target)", ("kind", "target")),
)}

PREFIXES: tuple[tuple[str, str], ...] = (
    ("deadlock_", "toolclash_deadlock_events_total"),
    ("lock_", "toolclash_lock_events_total"),
    ("pool_", "toolclash_pool_events_total"),
    ("queue_", "toolclash_queue_events_total"),
    ("barrier_", "toolclash_barrier_events_total"),
    ("breaker_", "toolclash_breaker_events_total"),
)
"""Runtime counters by name prefix → labelled metric (``event`` = the rest of the name)."""

COUNTED_PER_CALL = re.compile(r"^(calls_|retries_|sqlstate_|attempts$|conflicts$|backoff_ms$)")
"""Runtime counters the per-call metrics already carry with their tool label (not exported twice)."""

NOT_COUNTERS = re.compile(r"^(pool_in_use|pool_waiting|breaker_open)$")
"""Live figures kept as +1/-1 deltas (they go down): exported as gauges by their scenario (``toolclash_pool_in_use``,
``toolclash_pool_waiting``), never as a counter, whose value must never decrease."""

CHECK_STATES = ("valid", "invalid", "unknown")
"""The states of ``toolclash_check_state`` (a Prometheus state set: exactly one is 1)."""

_NAME_RE = re.compile(r"^toolclash_[a-z0-9_]+$")


class MetricsSetupError(Exception):
    """The exporter cannot start as asked (one-line message)."""


def scrape_targets(prometheus_url: str, timeout: float = 5.0) -> dict[str, tuple[str, int]]:
    """(host, port) of the first target of each scrape job of the Prometheus at *prometheus_url* (read from the
    configuration it loaded: no wait for target discovery)."""
    import yaml

    url = prometheus_url.rstrip("/") + "/api/v1/status/config"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            conf = yaml.safe_load(json.load(resp)["data"]["yaml"])
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        raise MetricsSetupError(f"Prometheus at {prometheus_url} did not answer ({exc}); check PROMETHEUS_URL "
                                "or unset it") from None
    out: dict[str, tuple[str, int]] = {}
    for job in conf.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                parts = urlsplit(f"//{target}")
                if parts.port and job.get("job_name") not in out:
                    out[str(job["job_name"])] = (parts.hostname or "", parts.port)
    return out


def discover_port(prometheus_url: str) -> int:
    """The exporter port that the Prometheus at *prometheus_url* scrapes as job ``toolclash``."""
    target = scrape_targets(prometheus_url).get("toolclash")
    if target is None:
        raise MetricsSetupError(f"Prometheus at {prometheus_url} has no scrape job 'toolclash' with a target (see "
                                "prometheus/prometheus.yml); add it or pass --metrics-port")
    return target[1]


def labels_of(metric: str, values: Mapping[str, Any]) -> Labels:
    names = METRICS[metric].labels if metric in METRICS else tuple(sorted(values))
    return tuple((name, str(values.get(name, ""))) for name in names)


def counter_metric(key: str) -> tuple[str, Labels] | None:
    """Where runtime counter *key* goes: (metric, labels); None when a per-call metric already counts it."""
    if COUNTED_PER_CALL.match(key) or NOT_COUNTERS.match(key):
        return None
    for prefix, metric in PREFIXES:
        if key.startswith(prefix):
            return metric, (("event", key[len(prefix):]),)
    return "toolclash_events_total", (("event", key),)


class _Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # per bucket (not cumulative); the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def add(self, counts: list[int], total: float, count: int) -> None:
        for i, n in enumerate(counts):
            self.counts[i] += n
        self.sum += total
        self.count += count


class Registry:
    """Counters, histograms and gauges of one process; deltas out (workers), merges in (master)."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], _Histogram] = {}
        self.gauges: dict[tuple[str, Labels, str], float] = {}
        """(metric, labels, source process) → value; sources are summed at collect time."""
        self._sent_counters: dict[tuple[str, Labels], float] = {}
        self._sent_hist: dict[tuple[str, Labels], tuple[list[int], float, int]] = {}
        self.extra: dict[str, type] = {}

    # -- recording ---------------------------------------------------------------------------------

    def inc(self, metric: str, labels: Labels = (), n: float = 1.0) -> None:
        key = (metric, labels)
        self.counters[key] = self.counters.get(key, 0.0) + n

    def observe(self, metric: str, labels: Labels, value: float) -> None:
        key = (metric, labels)
        hist = self.histograms.get(key)
        if hist is None:
            spec = METRICS.get(metric)
            hist = self.histograms[key] = _Histogram(spec.buckets if spec else LATENCY_BUCKETS)
        hist.observe(value)

    def set(self, metric: str, labels: Labels, value: float, source: str = "") -> None:
        self.gauges[(metric, labels, source)] = value

    def record_call(self, tool: str, strategy: str, outcome: str, seconds: float, attempts: int,
                    retries: Mapping[str, int], sqlstates: Iterable[str], backoff_s: float) -> None:
        """One finished tool call (the per-call metrics)."""
        self.inc("toolclash_tool_calls_total", (("tool", tool), ("strategy", strategy), ("outcome", outcome)))
        ts = (("tool", tool), ("strategy", strategy))
        if attempts:
            self.inc("toolclash_tool_attempts_total", ts, attempts)
        self.observe("toolclash_tool_call_duration_seconds", ts, seconds)
        for cause, n in retries.items():
            self.inc("toolclash_retries_total", (("tool", tool), ("cause", cause)), n)
        for state in sqlstates:
            self.inc("toolclash_conflicts_total", (("tool", tool), ("sqlstate", state)))
        if backoff_s:
            self.inc("toolclash_retry_backoff_seconds_total", (("tool", tool),), backoff_s)

    def reset(self) -> None:
        """A new run (web UI): start from zero (Prometheus sees a counter reset, which rate() handles)."""
        self.counters.clear()
        self.histograms.clear()
        self.gauges.clear()
        self._sent_counters.clear()
        self._sent_hist.clear()

    # -- shipping ----------------------------------------------------------------------------------

    def take_delta(self, source: str) -> dict[str, Any]:
        """What changed since the last call (JSON-able, for Locust's report message), and current gauges."""
        counters = []
        for key, value in self.counters.items():
            diff = value - self._sent_counters.get(key, 0.0)
            if diff:
                counters.append([key[0], [list(p) for p in key[1]], diff])
                self._sent_counters[key] = value
        hists = []
        for key, hist in self.histograms.items():
            prev_counts, prev_sum, prev_count = self._sent_hist.get(key, ([0] * len(hist.counts), 0.0, 0))
            if hist.count == prev_count:
                continue
            hists.append([key[0], [list(p) for p in key[1]], [a - b for a, b in zip(hist.counts, prev_counts,
                                                                                  strict=True)],
                          hist.sum - prev_sum, hist.count - prev_count])
            self._sent_hist[key] = (list(hist.counts), hist.sum, hist.count)
        gauges = [[m, [list(p) for p in labels], value] for (m, labels, _src), value in self.gauges.items()]
        return {"source": source, "c": counters, "h": hists, "g": gauges}

    def merge(self, delta: Mapping[str, Any]) -> None:
        """Master: add a worker's delta (counters and histogram buckets summed; its gauges replace its last)."""
        source = str(delta.get("source", ""))
        for metric, labels, n in delta.get("c", ()):
            self.inc(metric, _labels(labels), n)
        for metric, labels, counts, total, count in delta.get("h", ()):
            key = (metric, _labels(labels))
            hist = self.histograms.get(key)
            if hist is None:
                spec = METRICS.get(metric)
                hist = self.histograms[key] = _Histogram(spec.buckets if spec else LATENCY_BUCKETS)
            if len(counts) == len(hist.counts):
                hist.add(list(counts), float(total), int(count))
        for metric, labels, value in delta.get("g", ()):
            self.set(metric, _labels(labels), float(value), source)

    # -- exposition ----------------------------------------------------------------------------------

    def families(self, runtime_counters: Mapping[str, int] | None = None,
                 gauges: Iterable[tuple[str, Labels, float]] = ()) -> Iterator[Any]:
        """prometheus-client metric families of everything recorded, plus *runtime_counters* mapped by
        :func:`counter_metric` and the caller's point-in-time *gauges*."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        counters: dict[str, dict[Labels, float]] = {}
        for (metric, labels), value in self.counters.items():
            counters.setdefault(metric, {})[labels] = value
        for key, value in (runtime_counters or {}).items():
            target = counter_metric(key)
            if target is not None:
                rows = counters.setdefault(target[0], {})
                rows[target[1]] = rows.get(target[1], 0.0) + value
        gauge_rows: dict[str, dict[Labels, float]] = {}
        for (metric, labels, _src), value in self.gauges.items():
            rows = gauge_rows.setdefault(metric, {})
            rows[labels] = rows.get(labels, 0.0) + value
        for metric, labels, value in gauges:
            gauge_rows.setdefault(metric, {})[labels] = value
        for metric, rows in sorted(counters.items()):
            base = metric.removesuffix("_total")
            fam = CounterMetricFamily(base, _help(metric), labels=_label_names(metric, rows))
            for labels, value in rows.items():
                fam.add_metric([v for _k, v in labels], value)
            yield fam
        hist_rows: dict[str, dict[Labels, _Histogram]] = {}
        for (metric, labels), hist in self.histograms.items():
            hist_rows.setdefault(metric, {})[labels] = hist
        for metric, hrows in sorted(hist_rows.items()):
            hfam = HistogramMetricFamily(metric, _help(metric), labels=_label_names(metric, hrows))
            for labels, hist in hrows.items():
                cumulative, running = [], 0
                for bound, n in zip((*hist.buckets, math.inf), hist.counts, strict=True):
                    running += n
                    cumulative.append((_bound(bound), running))
                hfam.add_metric([v for _k, v in labels], cumulative, hist.sum)
            yield hfam
        for metric, grows in sorted(gauge_rows.items()):
            names = _label_names(metric, grows)
            is_counter = metric in METRICS and METRICS[metric].kind == "counter"  # absolute values per process
            gfam = (CounterMetricFamily(metric.removesuffix("_total"), _help(metric), labels=names) if is_counter
                    else GaugeMetricFamily(metric, _help(metric), labels=names))
            for labels, value in grows.items():
                gfam.add_metric([v for _k, v in labels], value)
            yield gfam


def _labels(pairs: Iterable[Iterable[str]]) -> Labels:
    return tuple((str(k), str(v)) for k, v in pairs)


def _label_names(metric: str, rows: Mapping[Labels, Any]) -> list[str]:
    if metric in METRICS:
        return list(METRICS[metric].labels)
    first = next(iter(rows), ())
    return [k for k, _v in first]


def _help(metric: str) -> str:
    return METRICS[metric].help if metric in METRICS else metric.replace("_", " ")


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


def check_name(metric: str) -> str:
    """A scenario's own metric name must look like ``toolclash_<snake_case>``."""
    if not _NAME_RE.match(metric):
        raise ValueError(f"metric name {metric!r} must match toolclash_[a-z0-9_]+")
    return metric


def check_state(valid: Any) -> str:
    """``valid``, ``invalid`` or ``unknown`` for a check's three-valued ``valid``."""
    return "valid" if valid is True else "invalid" if valid is False else "unknown"


def verdict_gauges(verdict: Mapping[str, Any] | None, server: Mapping[str, Any] | None = None
                   ) -> list[tuple[str, Labels, float]]:
    """After the run: each check's state set (``toolclash_check_state{check, state}``), each SLA gate (1 met,
    0 missed), the exit code, and what the run left on the server."""
    if not verdict:
        return []
    out: list[tuple[str, Labels, float]] = []
    for check in verdict.get("checks", ()):
        state = check_state(check.get("valid"))
        for name in CHECK_STATES:
            out.append(("toolclash_check_state", (("check", str(check["name"])), ("state", name)),
                        1.0 if name == state else 0.0))
    for gate in verdict.get("gates", ()):
        out.append(("toolclash_gate_met", (("scope", str(gate["scope"])), ("gate", str(gate["gate"]))),
                    1.0 if gate.get("met") else 0.0))
    out.append(("toolclash_verdict_exit_code", (), float(verdict.get("exit_code", -1))))
    recovery: dict[Labels, float] = {}
    for fault in verdict.get("faults") or ():
        back = (fault.get("recovery") or {}).get("throughput_s")
        if back is not None:
            labels = (("kind", str(fault["kind"])), ("target", str(fault["target"])))
            recovery[labels] = max(recovery.get(labels, 0.0), float(back))
    out.extend(("toolclash_fault_recovery_seconds", labels, seconds) for labels, seconds in recovery.items())
    if server is not None:
        out.append(("toolclash_prepared_xacts_left", (), float(len(server.get("prepared_xacts") or ()))))
        out.append(("toolclash_sessions_left", (), float(len(server.get("sessions") or ()))))
    return out


def run_gauges(run_id: str, strategies: Mapping[str, str], stage_start: float | None
               ) -> list[tuple[str, Labels, float]]:
    """``toolclash_run_info`` (one series per scenario) and the current stage's start time."""
    out: list[tuple[str, Labels, float]] = [
        ("toolclash_run_info", (("run_id", run_id), ("scenario", name), ("strategy", strategy)), 1.0)
        for name, strategy in strategies.items()] if run_id else []
    if stage_start is not None:
        out.append(("toolclash_ramp_stage_start_timestamp_seconds", (), float(stage_start)))
    return out


class RegistryCollector:
    """A prometheus-client collector over a :class:`Registry` plus live figures from *extra* (a callable
    returning runtime counters and point-in-time gauges). Counts its scrapes (``scrapes``)."""

    def __init__(self, registry: Registry,
                 extra: Callable[[], tuple[Mapping[str, int], list[tuple[str, Labels, float]]]]) -> None:
        self.registry = registry
        self.extra = extra
        self.scrapes = 0

    def collect(self) -> Iterator[Any]:
        self.scrapes += 1
        counters, gauges = self.extra()
        yield from self.registry.families(counters, gauges)

    def describe(self) -> list[Any]:
        return []  # no registration-time collect() call


def exposition(collector: RegistryCollector) -> bytes:
    """The text format of *collector* (for tests and the bench)."""
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return generate_latest(reg)
