"""Observability inside Locust: per-call metrics, worker → master merging and the Prometheus exporter.

The plugin (``users/plugin.py``) drives an :class:`Observer` per process: every process records its tool
calls (Locust's ``request`` event) into a :class:`toolclash.metrics.Registry`; a worker ships the deltas
with Locust's report message, the master merges them, and the master (or the single process) serves
``/metrics`` with gevent's WSGI server on ``--metrics-host``:``--metrics-port``. Agents add scenario
figures with :func:`observe` (histograms) and :func:`set_gauge`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from toolclash import metrics
from toolclash.metrics import (
    DEFAULT_METRICS_PORT,
    Labels,
    MetricsSetupError,
    Registry,
    RegistryCollector,
    discover_port,
)
from toolclash.settings import Settings
from toolclash.stack.exporters import ServerExporters

log = logging.getLogger("toolclash")


def _process_usage(proc: Any) -> tuple[float, float]:
    times = proc.cpu_times()
    return float(times.user + times.system), float(proc.memory_info().rss)


class Observer:
    """Per-process observability state; one per Locust process (made by the plugin)."""

    def __init__(self, rt: Any) -> None:
        global _observer
        self.rt = rt
        self.registry = Registry()
        self.collector = RegistryCollector(self.registry, self._live)
        self.server: Any = None
        self.port = 0
        self.linger_s = 0.0
        self._verdict_gauges: list[tuple[str, Labels, float]] = []
        self._scrapes_at_verdict: int | None = None
        self._proc: Any = None
        self._servers: dict[str, Any] | None = None
        self.server_exporters = ServerExporters()
        self._server_cpu: dict[str, float] = {}
        self.sources: list[Callable[[], list[tuple[str, Labels, float]]]] = []
        """More point-in-time gauges of the master (the nemesis's faults, the emergency stop)."""
        _observer = self

    # -- every process -----------------------------------------------------------------------------

    def on_request(self, request_type: str, name: str, response_time: float, exception: Any = None,
                   context: dict[str, Any] | None = None, **_: Any) -> None:
        ctx = context or {}
        outcome = ctx.get("outcome") or ("ok" if exception is None else "fail")
        self.registry.record_call(request_type, name, outcome, response_time / 1000.0, int(ctx.get("attempts") or 0),
                                  ctx.get("retries") or {}, ctx.get("sqlstates") or (),
                                  float(ctx.get("backoff_ms") or 0.0) / 1000.0)

    def _usage(self) -> tuple[float, float]:
        if self._proc is None:
            import psutil

            self._proc = psutil.Process()
        return _process_usage(self._proc)

    def process_label(self) -> str:
        """``master`` (also the single process) or ``w<index>``: bounded, unlike host-pid names."""
        env = self.rt.environment
        runner = env.runner if env is not None else None
        return f"w{runner.worker_index}" if self.rt.role == "worker" and runner is not None else "master"

    def on_report_to_master(self, data: dict[str, Any]) -> None:
        cpu, rss = self._usage()
        label = self.process_label()
        proc = (("process", label),)
        self.registry.set("toolclash_process_cpu_seconds_total", proc, cpu, label)
        self.registry.set("toolclash_process_resident_memory_bytes", proc, rss, label)
        self.update_breakers()
        data["toolclash_metrics"] = self.registry.take_delta(label)

    def on_worker_report(self, data: dict[str, Any]) -> None:
        delta = data.get("toolclash_metrics")
        if delta:
            self.registry.merge(delta)

    def update_breakers(self) -> None:
        """This process's agents by circuit-breaker state, as gauges (the master sums the processes)."""
        label = self.process_label()
        for state, n in self.rt.breaker_states().items():
            self.registry.set("toolclash_breaker_agents", (("state", state),), float(n), label)

    def on_test_start(self) -> None:
        self.registry.reset()
        self._verdict_gauges, self._scrapes_at_verdict = [], None

    # -- master (or the single process) ------------------------------------------------------------

    def start_exporter(self, settings: Settings) -> None:
        """Serve ``/metrics`` as *settings* ask (and start the server exporters a local Prometheus expects)."""
        baseline = settings.baseline
        if baseline and not (Path(baseline) / "checks.json").is_file():
            raise MetricsSetupError(f"--baseline {baseline} is not a finished run directory (no checks.json); "
                                    "pass reports/<run-id> of an earlier run")
        port, host, prometheus_url = settings.metrics_port, settings.metrics_host, settings.prometheus_url
        self.linger_s = settings.metrics_linger_s
        if port == 0:
            return
        optional = False
        if port == -1:
            if prometheus_url:
                port = discover_port(prometheus_url)
            else:
                port, optional = DEFAULT_METRICS_PORT, True
        from gevent.pywsgi import WSGIServer
        from prometheus_client import CollectorRegistry, make_wsgi_app

        reg = CollectorRegistry(auto_describe=False)
        reg.register(self.collector)
        server = WSGIServer((host, port), make_wsgi_app(reg), log=None, error_log=None)
        try:
            server.start()
        except OSError as exc:
            if optional:  # the default port, taken (another run?): observability is not worth a failed run
                log.warning("metrics exporter off: %s:%d is taken (%s); pass --metrics-port", host, port,
                            exc.strerror)
                return
            raise MetricsSetupError(f"cannot serve metrics on {host}:{port} ({exc.strerror}); choose another "
                                    "--metrics-port (0: no exporter)") from None
        self.server, self.port = server, server.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)
        if prometheus_url:
            started = self.server_exporters.start(prometheus_url, self.rt.urls)
            if started:
                atexit.register(self.server_exporters.stop)
                log.info("server exporters: %s", ", ".join(started))

    def _live(self) -> tuple[dict[str, int], list[tuple[str, Labels, float]]]:
        """Point-in-time figures of the master: agents, stage, thresholds, its own CPU and memory, verdict."""
        rt = self.rt
        env = rt.environment
        runner = env.runner if env is not None else None
        gauges: list[tuple[str, Labels, float]] = []
        if runner is not None:
            gauges.append(("toolclash_agents", (), float(runner.user_count)))
            if rt.role == "master":
                gauges.append(("toolclash_workers", (), float(len(runner.clients))))
        stage = rt.current_stage()
        gauges.append(("toolclash_ramp_stage", (), float(stage["stage"]) if stage else 0.0))
        gauges.append(("toolclash_ramp_stage_agents", (), float(stage["users"]) if stage else 0.0))
        gauges.append(("toolclash_run_active", (), 1.0 if rt.run_active else 0.0))
        if rt.settings is not None:
            gauges.append(("toolclash_conflict_rate_threshold", (), float(rt.settings.gate_conflict_rate)))
        cpu, rss = self._usage()
        proc = (("process", "master"),)
        gauges.append(("toolclash_process_cpu_seconds_total", proc, cpu))
        gauges.append(("toolclash_process_resident_memory_bytes", proc, rss))
        gauges.extend(self._server_usage())
        gauges.extend(self._annotations())
        gauges.extend(self._verdict_gauges)
        for source in self.sources:
            gauges.extend(source())
        self.update_breakers()
        return dict(rt.counters.items()), gauges

    def _annotations(self) -> list[tuple[str, Labels, float]]:
        """What lets Grafana tell runs apart and mark stages and faults: ``toolclash_run_info``, the current stage's
        start time (the fault scheduler adds its own series: see :attr:`sources`)."""
        rt = self.rt
        strategies = ({name: rt.settings.strategy_for(name) for name in rt.settings.scenarios}
                      if rt.settings is not None else {})
        stage = rt.current_stage()
        return metrics.run_gauges(rt.run_id, strategies, float(stage["start"]) if stage else None)

    def _server_usage(self) -> list[tuple[str, Labels, float]]:
        """CPU and memory of each server the embedded stack started (its process tree: PostgreSQL backends too)."""
        stack = self.rt.stack
        if stack is None:
            return []
        import psutil

        if self._servers is None:
            self._servers = {}
            for name, status in stack.status().items():
                if status.get("pid"):
                    with contextlib.suppress(psutil.Error):
                        self._servers[name] = psutil.Process(int(status["pid"]))
        out: list[tuple[str, Labels, float]] = []
        for name, proc in self._servers.items():
            cpu = rss = 0.0
            try:
                reaped = proc.cpu_times()  # the children it has reaped (PostgreSQL's ended backends) count too
                cpu = float(reaped.children_user + reaped.children_system)
                for p in (proc, *proc.children(recursive=True)):
                    with contextlib.suppress(psutil.Error):
                        c, r = _process_usage(p)
                        cpu, rss = cpu + c, rss + r
            except psutil.Error:
                continue
            # a child that ended but is not reaped yet is briefly in neither sum: a counter never goes down
            cpu = self._server_cpu[name] = max(cpu, self._server_cpu.get(name, 0.0))
            out.append(("toolclash_server_cpu_seconds_total", (("server", name),), cpu))
            out.append(("toolclash_server_resident_memory_bytes", (("server", name),), rss))
        return out

    def on_verdict(self, verdict: dict[str, Any], run_dir: Path) -> None:
        """The run was judged: export the verdict (check validity, gates, server leftovers)."""
        server = None
        server_file = Path(run_dir) / "final" / "server.json"
        if server_file.is_file():
            server = json.loads(server_file.read_text())
        self._verdict_gauges = metrics.verdict_gauges(verdict, server)
        self._scrapes_at_verdict = self.collector.scrapes

    def on_quitting(self) -> None:
        """Keep serving until Prometheus has scraped the verdict three times (at most ``--metrics-linger-s``)."""
        if self.server is None or self._scrapes_at_verdict is None:
            return
        deadline = time.monotonic() + self.linger_s
        while self.collector.scrapes < self._scrapes_at_verdict + 3 and time.monotonic() < deadline:
            gevent.sleep(0.05)

    def stop(self) -> None:
        self.server_exporters.stop()
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None


_observer: Observer | None = None


def observe(metric: str, labels: Labels, value: float) -> None:
    """One histogram observation in this process's registry (a worker ships it to the master with the rest);
    nothing when observability is not installed (a locustfile without :func:`users.plugin.setup`)."""
    if _observer is not None:
        _observer.registry.observe(metric, labels, value)


def set_gauge(metric: str, labels: Labels, value: float) -> None:
    """This process's value of a gauge; the master sums the processes' values at scrape time (so a figure that
    every process sees whole, e.g. a queue's depth in Redis, must be set by one process only)."""
    if _observer is not None:
        _observer.registry.set(metric, labels, value, source=_observer.process_label())
