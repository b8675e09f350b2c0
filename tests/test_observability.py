"""Observability against the real Prometheus: one short distributed ramp with a planted fault, then what
Prometheus saw (merged worker metrics, the alert firing), the alert rules' unit tests, the registry's merge.

The run (module fixture): locustfiles/mixed.py (every scenario), 2 worker processes, stages 5 → 14 agents
of 6 s each: credits serializable on one hot account (conflicts and retries) with ``--fault
ambiguous_as_fail`` (a check must turn invalid); deadlock cycles of 2 (3 deadlock agents per worker, a
cycle's group lives in one process); 2 queue consumers; the 6 weighted agent kinds (config, credits,
crossservice, pool, queue submitter, workspace) one each at 14 agents (6 + 2 + 6: at 12 the queue submitter
and workspace got none); scraped every second by the session's private Prometheus.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, LocustRun, run_locust
from toolclash.metrics import Registry, RegistryCollector, counter_metric, exposition

pytestmark = pytest.mark.xdist_group("observability")
"""Under pytest-xdist, one worker runs this module: its module-scoped servers and runs are made once."""


def prom_get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def prom_query(base: str, expr: str) -> list[dict[str, Any]]:
    return prom_get(base, "/api/v1/query", query=expr)["result"]  # type: ignore[no-any-return]


_OBSERVED_START: list[float] = []


def WINDOW() -> str:
    """A PromQL range reaching back to the observed run's start and no further: earlier runs of the test session
    exported the same series to the same Prometheus, and a fixed [5m] would sum theirs in."""
    return f"{int(time.time() - _OBSERVED_START[0]) + 1}s"


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


class ExporterScraper(threading.Thread):
    """Scrapes the run's exporter directly (the target the embedded Prometheus scrapes as job toolclash) every
    0.25 s while the run goes on, and keeps every counter sample (``_total``, histogram ``_bucket``/``_count``/
    ``_sum``) of every scrape."""

    def __init__(self, prometheus: str) -> None:
        super().__init__(daemon=True)
        from toolclash.metrics import scrape_targets

        host, port = scrape_targets(prometheus)["toolclash"]
        self.url = f"http://{host}:{port}/metrics"
        self.scrapes: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    text = resp.read().decode()
            except OSError:
                self.stop.wait(0.1)
                continue
            seen = {}
            for fam in text_string_to_metric_families(text):
                if fam.type not in ("counter", "histogram"):
                    continue
                for sample in fam.samples:
                    if sample.name.endswith(("_created", "_gcount", "_gsum")):
                        continue
                    seen[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            self.scrapes.append(seen)
            self.stop.wait(0.25)


class AlertWatcher(threading.Thread):
    """Polls Prometheus's /api/v1/alerts while the run goes on; remembers every alert seen firing."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.firing: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for alert in prom_get(self.base, "/api/v1/alerts")["alerts"]:
                    if alert["state"] == "firing":
                        self.firing.setdefault(alert["labels"]["alertname"], alert)
            except OSError:
                pass
            self.stop.wait(0.1)


SCRAPER: list[ExporterScraper] = []


@pytest.fixture(scope="module")
def observed(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[LocustRun, AlertWatcher]:
    prometheus = stack["PROMETHEUS_URL"]
    watcher = AlertWatcher(prometheus)
    watcher.start()
    scraper = ExporterScraper(prometheus)
    scraper.start()
    SCRAPER[:] = [scraper]
    port = free_port()
    _OBSERVED_START[:] = [time.time()]
    # 6 s stages: on a slow machine a worker's second-stage agents took 3.2 s to make their first call (the stress
    # profile's zero think time keeps the first agents busy), and with 3 s stages the queue never ran
    try:
        run = run_locust(["--processes", "2", "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                          "--master-port", port, "--stages", "5,14", "--stage-seconds", "6", "--stage-spawn-rate",
                          "20", "--profile", "stress", "--accounts", "1", "--strategy", "serializable",
                          "--cycle-size", "2", "--facts-rows", "20000", "--scan-rows", "5000",
                          "--fault", "ambiguous_as_fail", "--stop-timeout", "2", "--metrics-linger-s", "15"],
                         report=True, reports=tmp_path_factory.mktemp("obs"), database_url=None, services=stack,
                         locustfile="locustfiles/mixed.py", run_id="observed")
    finally:
        watcher.stop.set()
        scraper.stop.set()
        watcher.join(5)
        scraper.join(5)
    assert run.code == 1, run.output()
    return run, watcher


def test_exporter_counters_never_go_down(observed: tuple[LocustRun, AlertWatcher]) -> None:
    """Every counter and histogram series the exporter served only grew from one scrape to the next (the pool's
    in-use and waiting figures are gauges; they used to be exported as a counter that went back down)."""
    del observed  # the run itself: only its scrapes are read here
    scrapes = [s for s in SCRAPER[0].scrapes if s]
    assert len(scrapes) >= 10, len(scrapes)
    series = set().union(*scrapes)
    assert ("toolclash_pool_events_total", (("event", "acquires"),)) in series  # the pool scenario ran
    decreases = []
    last: dict[Any, float] = {}
    for i, scrape in enumerate(scrapes):
        for key, value in scrape.items():
            if key in last and value < last[key]:
                decreases.append((i, key, last[key], value))
            last[key] = value
    assert not decreases, decreases[:10]
    names = {name for name, _labels in series}
    assert not {n for n in names if "pool_events" in n and "in_use" in n}
    assert not any(dict(labels).get("event", "").startswith(("in_use", "waiting", "wait_le", "wait_gt"))
                   for _n, labels in series)


def test_run_info_and_check_states_are_exported(observed: tuple[LocustRun, AlertWatcher],
                                                stack: dict[str, str]) -> None:
    run, _ = observed
    base = stack["PROMETHEUS_URL"]
    info = prom_query(base, 'last_over_time(toolclash_run_info{run_id="observed"}[' + WINDOW() + '])')
    scenarios = {r["metric"]["scenario"]: r["metric"]["strategy"] for r in info}
    assert scenarios["credits"] == "serializable" and "deadlock" in scenarios, scenarios
    stage_start = prom_query(base, "max_over_time(toolclash_ramp_stage_start_timestamp_seconds[" + WINDOW() + "])")
    assert stage_start and abs(float(stage_start[0]["value"][1]) - time.time()) < 600, stage_start
    states = _last(base, "toolclash_check_state")
    by_check: dict[str, dict[str, float]] = {}
    for labels, value in states.items():
        label = json.loads(labels)
        by_check.setdefault(label["check"], {})[label["state"]] = value
    for check in run.verdict["checks"]:  # a state set: exactly one state is 1
        got = by_check[check["name"]]
        assert sorted(got.values()) == [0.0, 0.0, 1.0], (check["name"], got)
    assert by_check["credits.ledger"]["invalid"] == 1.0


def test_planted_fault_fires_the_check_alert_in_prometheus(observed: tuple[LocustRun, AlertWatcher],
                                                           stack: dict[str, str]) -> None:
    run, watcher = observed
    assert run.check("credits.ledger")["valid"] is False
    alert = watcher.firing.get("ToolclashCheckInvalid")
    assert alert is not None, (watcher.firing, run.output())
    assert alert["labels"]["check"] in {c["name"] for c in run.verdict["checks"] if c["valid"] is False}
    # the ALERTS series Prometheus keeps agrees
    seen = prom_query(stack["PROMETHEUS_URL"],
                      'max_over_time(ALERTS{alertname="ToolclashCheckInvalid",alertstate="firing"}[' + WINDOW() + '])')
    assert {s["metric"]["check"] for s in seen} >= {alert["labels"]["check"]}


def _last(base: str, metric: str) -> dict[str, float]:
    rows = prom_query(base, f"last_over_time({metric}[{WINDOW()}])")
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in rows}


def test_worker_metrics_are_summed_on_the_master(observed: tuple[LocustRun, AlertWatcher],
                                                 stack: dict[str, str]) -> None:
    run, _ = observed
    base = stack["PROMETHEUS_URL"]
    fig = run.verdict["figures"]["credits"]
    counters = run.verdict["counters"]
    calls = _last(base, "toolclash_tool_calls_total")
    by_outcome: dict[str, float] = {}
    deduct: dict[str, float] = {}
    for labels, value in calls.items():
        label = json.loads(labels)
        by_outcome[label["outcome"]] = by_outcome.get(label["outcome"], 0.0) + value
        if label["tool"] == "deduct":
            deduct[label["outcome"]] = deduct.get(label["outcome"], 0.0) + value
    assert by_outcome.get("ok") == counters["calls_ok"], (by_outcome, counters)  # every tool of every scenario
    assert deduct.get("ok") == fig["ok"], (deduct, fig)
    # calls cut short by the stop never reach Locust's request event, so the metrics leave them out
    from toolclash.history import read_history

    ops = read_history(run.run_dir).ops
    interrupted = sum(1 for op in ops if op.get("error_class") == "interrupted" and op["tool"] == "deduct")
    reported = [op["result"] for op in ops if op.get("error_class") != "interrupted"]
    assert sum(deduct.values()) == fig["calls"] - interrupted, (deduct, fig, interrupted)
    # histogram buckets summed across workers: the +Inf bucket counts every call
    inf = sum(_last(base, 'toolclash_tool_call_duration_seconds_bucket{tool="deduct",le="+Inf"}').values())
    assert inf == fig["calls"] - interrupted
    retries = sum(_last(base, "toolclash_retries_total").values())
    assert retries == sum(sum(r.get("retries", {}).values()) for r in reported) > 0
    conflicts = _last(base, "toolclash_conflicts_total")  # 40001 of credits and config, 40P01 of the deadlocks…
    assert sum(conflicts.values()) == sum(len(r.get("sqlstates", [])) for r in reported) > 0
    # both workers and the master reported their CPU and memory
    processes = {json.loads(k)["process"] for k in _last(base, "toolclash_process_resident_memory_bytes")}
    assert processes == {"master", "w0", "w1"}, processes
    # the master started Debian's postgres exporter where the embedded Prometheus expects it
    pg_up = prom_query(base, 'max_over_time(pg_up{job="postgres"}[' + WINDOW() + '])')
    assert [float(r["value"][1]) for r in pg_up] == [1.0], pg_up
    stages = prom_query(base, "max_over_time(toolclash_ramp_stage_agents[" + WINDOW() + "])")
    assert [float(r["value"][1]) for r in stages] == [14.0], stages


def test_server_exporters_ran_against_the_stacks_redis_and_pgbouncer(observed: tuple[LocustRun, AlertWatcher],
                                                                     stack: dict[str, str]) -> None:
    """Debian's redis and pgbouncer exporters, started by the master where the embedded Prometheus scrapes them,
    saw the run's servers; they stopped with the run."""
    from toolclash.metrics import scrape_targets

    base = stack["PROMETHEUS_URL"]
    # the pgbouncer exporter (1.7) has no up metric of its own: Prometheus's up{job} stands for it
    for expr in ('max_over_time(redis_up{job="redis"}[' + WINDOW() + '])',
                 'max_over_time(up{job="redis"}[' + WINDOW() + '])',
                 'max_over_time(up{job="pgbouncer"}[' + WINDOW() + '])'):
        found = prom_query(base, expr)
        assert [float(r["value"][1]) for r in found] == [1.0], (expr, found)
    clients = prom_query(base, 'max_over_time(redis_connected_clients{job="redis"}[' + WINDOW() + '])')
    assert float(clients[0]["value"][1]) >= 1, clients
    databases = prom_query(base, 'max_over_time(pgbouncer_databases{job="pgbouncer"}[' + WINDOW() + '])')
    assert float(databases[0]["value"][1]) >= 2, databases  # toolclash and toolclash_tx at least
    # SHOW STATS read through the shim's renamed column (a row per database in use: the console at least)
    requests = prom_query(base, 'last_over_time(pgbouncer_requests_total{job="pgbouncer"}[' + WINDOW() + '])')
    assert "pgbouncer" in {r["metric"]["database"] for r in requests}, requests
    for job in ("postgres", "redis", "pgbouncer"):  # stopped at the end of the run: nothing listens there
        host, port = scrape_targets(base)[job]
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((host, port)) != 0, f"the {job} exporter still listens on {host}:{port}"


def test_scenario_metrics_reach_prometheus(observed: tuple[LocustRun, AlertWatcher], stack: dict[str, str]) -> None:
    """The deadlock, pool and queue scenarios' histograms and gauges, recorded in the workers (the queue's on
    the master), agree with the history."""
    from toolclash.history import read_history

    run, _ = observed
    base = stack["PROMETHEUS_URL"]
    ops = [op for op in read_history(run.run_dir).ops if op.get("error_class") != "interrupted"]
    # deadlock: one detection per resolved cycle (a victim cut off by the stop is in neither), in range
    detections = sum(_last(base, 'toolclash_deadlock_detection_seconds_count{tool="lock_round"}').values())
    resolved = run.verdict["figures"]["deadlock"]["detection"]["n"]
    assert 0 < detections <= resolved, (detections, resolved)
    p99 = prom_query(base, "histogram_quantile(0.99, sum by (le) "
                           "(last_over_time(toolclash_deadlock_detection_seconds_bucket[" + WINDOW() + "])))")
    slowest = run.verdict["figures"]["deadlock"]["detection"]["max_ms"] / 1000  # a bucket's edge at most above
    assert 0 < float(p99[0]["value"][1]) <= max(2.0, 2 * slowest), (p99, slowest)
    rounds = [op for op in ops if op["tool"] == "lock_round"]
    waits = sum(_last(base, "toolclash_lock_wait_seconds_count").values())
    assert waits == sum(1 for op in rounds for t in op["result"].get("tries", []) if t.get("t_req") is not None
                        and (t.get("t_got") or t.get("t_err"))) > 0
    victims = sum(_last(base, 'toolclash_deadlock_events_total{event="victims"}').values())
    assert victims == sum(1 for op in rounds for t in op["result"].get("tries", []) if t.get("sqlstate") == "40P01")
    # pool: one acquire wait per served analytical query; the size gauge is the client pool's, per process
    served = [op for op in ops if op["tool"] == "analyze" and op.get("reason") != "pool-timeout"
              and (op.get("result") or {}).get("wait_ms") is not None]
    acquired = sum(_last(base, 'toolclash_pool_acquire_wait_seconds_count{pool="client"}').values())
    assert acquired == len(served) > 0, (acquired, len(served))
    size = prom_query(base, 'max_over_time(toolclash_pool_size{pool="client"}[' + WINDOW() + '])')
    assert float(size[0]["value"][1]) in {20.0, 40.0}, size  # --pool-size 20 in one or both workers
    # queue: depth by priority and capacity, sampled from Redis by the master alone
    depth = prom_query(base, "max_over_time(toolclash_queue_depth[" + WINDOW() + "])")
    assert {r["metric"]["priority"] for r in depth} == {"critical", "normal", "bulk", "all"}, depth
    capacity = prom_query(base, "max_over_time(toolclash_queue_capacity[" + WINDOW() + "])")
    assert [(r["metric"]["priority"], float(r["value"][1])) for r in capacity] == [("all", 50.0)], capacity
    admitted = sum(_last(base, 'toolclash_queue_events_total{event="admitted"}').values())
    assert admitted == sum(1 for op in ops if op["tool"] == "submit" and op["outcome"] == "ok") > 0


def test_alert_rules_pass_their_unit_tests() -> None:
    proc = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=ROOT / "prometheus",
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alert_rule_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The rule tests can fail: a conflict alert with the comparison turned around must not pass them."""
    rules = (ROOT / "prometheus" / "alerts.yml").read_text()
    broken = rules.replace("> max(toolclash_conflict_rate_threshold)", "< max(toolclash_conflict_rate_threshold)")
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts_test.yml").write_text((ROOT / "prometheus" / "alerts_test.yml").read_text())
    proc = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0 and "ToolclashConflictRateHigh" in proc.stdout + proc.stderr


def _exposed(collector: RegistryCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(exposition(collector).decode()):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_registry_merges_worker_deltas_by_summing() -> None:
    """Two workers' deltas, shipped twice each, give the same exposition as one process seeing every call."""
    single, master = Registry(), Registry()
    workers = [Registry(), Registry()]
    calls = [("deduct", "serializable", "ok", 0.004, 2, {"serialization": 1}, ["40001"], 0.002),
             ("deduct", "serializable", "fail", 0.7, 10, {"serialization": 9}, ["40001"] * 9, 0.3),
             ("deduct", "serializable", "ok", 0.0009, 1, {}, [], 0.0)]
    for round_ in range(2):
        for i, worker in enumerate(workers):
            for call in calls[i + round_:]:
                worker.record_call(*call)
                single.record_call(*call)
            master.merge(worker.take_delta(f"w{i}"))
    assert all(not d["c"] and not d["h"] for d in (w.take_delta("w") for w in workers))  # nothing sent twice
    none: tuple[dict[str, int], list[Any]] = ({}, [])
    merged, expected = _exposed(RegistryCollector(master, lambda: none)), _exposed(RegistryCollector(single,
                                                                                                     lambda: none))
    assert merged == expected
    key = ("toolclash_tool_call_duration_seconds_bucket",
           (("le", "+Inf"), ("strategy", "serializable"), ("tool", "deduct")))
    assert merged[key] == 8.0  # 3 + 2 calls in round one, 2 + 1 in round two: summed, not averaged


def test_runtime_counters_map_to_labelled_metrics_without_knowing_them() -> None:
    assert counter_metric("queue_redelivered") == ("toolclash_queue_events_total", (("event", "redelivered"),))
    assert counter_metric("pool_in_use") is None and counter_metric("pool_waiting") is None  # +1/-1: gauges
    assert counter_metric("pool_waits") == ("toolclash_pool_events_total", (("event", "waits"),))
    assert counter_metric("pool_timeouts") == ("toolclash_pool_events_total", (("event", "timeouts"),))
    assert counter_metric("some_new_thing") == ("toolclash_events_total", (("event", "some_new_thing"),))
    assert counter_metric("retries_serialization") is None  # already in toolclash_retries_total{tool,cause}
    exposed = _exposed(RegistryCollector(Registry(), lambda: ({"queue_redelivered": 3, "calls_ok": 5}, [])))
    assert exposed[("toolclash_queue_events_total", (("event", "redelivered"),))] == 3.0
    assert not any(name.startswith("toolclash_events") for name, _ in exposed)


# --- Grafana: every dashboard uses the provisioned datasource, every panel's PromQL runs and returns data ---

AWAITING_SCENARIOS: set[str] = set()
"""Metrics no scenario records yet: their panels must parse but may be empty. Empty since the deadlock, pool and
queue scenarios record theirs (the observed run exercises every scenario); a name goes here only with a reason."""
GRAFANA = ROOT / "grafana"


def _metric_names(expr: str) -> set[str]:
    import re

    names = set(re.findall(r"\btoolclash_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) if not n.endswith("_total") else n for n in names}


def _dashboards() -> list[dict[str, Any]]:
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert len(files) >= 6, files
    return [json.loads(f.read_text()) for f in files]


def test_dashboards_use_the_provisioned_datasource_uid() -> None:
    import yaml

    from toolclash.metrics import METRICS

    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "toolclash.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = set()
    for dash in _dashboards():
        uids.add(dash["uid"])
        assert "${DS_" not in json.dumps(dash), dash["uid"]
        assert dash["panels"], dash["uid"]
        for panel in dash["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, (dash["uid"], panel["title"])
            assert panel["targets"], (dash["uid"], panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid, (dash["uid"], panel["title"])
                unknown = _metric_names(target["expr"]) - set(METRICS)
                assert not unknown, (dash["uid"], panel["title"], unknown)  # a typo in a metric name fails here
    assert len(uids) == len(_dashboards())


def test_every_dashboard_query_returns_data_after_a_real_run(observed: tuple[LocustRun, AlertWatcher],
                                                             stack: dict[str, str]) -> None:
    from toolclash.metrics import METRICS

    run, _ = observed
    base = stack["PROMETHEUS_URL"]
    started = json.loads((run.run_dir / "options.json").read_text())["started_at"]
    window = {"start": str(started - 5), "end": str(time.time()), "step": "1"}
    empty, awaiting = [], []
    for dash in _dashboards():
        for panel in dash["panels"]:
            has_data = False
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "15s").replace("$__interval", "1s")
                data = prom_get(base, "/api/v1/query_range", query=expr, **window)  # a parse error fails here
                has_data = has_data or any(series["values"] for series in data["result"])
            names = {n for t in panel["targets"] for n in _metric_names(t["expr"])}
            if not has_data:  # a panel of server metrics only (pg_…) is never "awaiting" a scenario
                waits = bool(names) and names <= AWAITING_SCENARIOS
                (awaiting if waits else empty).append(f"{dash['uid']}: {panel['title']}")
        for note in dash.get("annotations", {}).get("list", []):  # stage, fault and run marks: they must parse
            assert not _metric_names(note["expr"]) - set(METRICS), note
            data = prom_get(base, "/api/v1/query_range", query=note["expr"], **window)
            if note["name"] != "Faults":  # the observed run schedules no faults
                assert any(series["values"] for series in data["result"]), note
    assert not empty, empty
    print(f"panels waiting for a scenario to record their metrics ({len(awaiting)}): {awaiting}")


# --- report.html: self-contained, every plot loads in a real headless Chromium; --baseline gates ---


def test_report_renders_with_every_plot_in_chromium(observed: tuple[LocustRun, AlertWatcher],
                                                    stack: dict[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from toolclash.history import read_history

    run, _ = observed
    report = run.run_dir / "report.html"
    text = report.read_text()
    password = urllib.parse.urlsplit(stack["DATABASE_URL"]).password
    assert password and password not in text and "toolclash:***@" in text  # options shown, secrets masked
    assert "http://" not in text.replace("http://127.0.0.1", "") and "<script" not in text  # self-contained
    assert "credits.ledger" in text and "data:image/png;base64," in text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(report.as_uri())
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(images) >= 4, images
    assert all(complete and width > 100 for _alt, complete, width in images), images
    titles = {alt for alt, _c, _w in images}
    assert {"Throughput and agents over time", "Latency percentiles over time", "Conflict rate per stage",
            "Deadlock detection time"} <= titles
    # the other scenarios' plots: drawn only when the run gave that scenario agents (pool: exactly then)
    tools = {op["tool"] for op in read_history(run.run_dir).ops}
    assert ("Pool acquire wait over time" in titles) == ("analyze" in tools), (titles, tools)
    assert "Queue wait by priority" not in titles or "submit" in tools, (titles, tools)
    assert "Analytics lag over time" not in titles or "grant_tool_access" in tools, (titles, tools)


def _doctored_baseline(run_dir: Path, dest: Path, p95_factor: float) -> Path:
    """A copy of *run_dir* whose P95 figures are *p95_factor* times the real ones."""
    shutil.copytree(run_dir, dest)
    verdict = json.loads((dest / "checks.json").read_text())
    for fig in (*verdict["figures"].values(), *verdict["summary"]["scenarios"].values()):
        fig["p95_ms"] = fig["p95_ms"] * p95_factor
    (dest / "checks.json").write_text(json.dumps(verdict))
    return dest


def test_baseline_regression_is_a_missed_gate(observed: tuple[LocustRun, AlertWatcher], database_url: str,
                                              tmp_path: Path) -> None:
    from checks.verdict import evaluate

    run, _ = observed
    itself = tmp_path / "itself"
    shutil.copytree(run.run_dir, itself)
    options = json.loads((itself / "options.json").read_text())
    (itself / "options.json").write_text(json.dumps({**options, "baseline": str(run.run_dir)}))
    same = evaluate(itself)["baseline"]
    assert {(g["scope"], g["gate"]) for g in same["gates"]} >= {("credits", "baseline_throughput_ratio"),
                                                                 ("credits", "baseline_p95_ratio")}, same
    assert all(g["met"] for g in same["gates"]), same  # a run against itself: every scenario's two gates met
    faster = _doctored_baseline(run.run_dir, tmp_path / "faster", p95_factor=0.001)  # a baseline 1000x quicker
    slower = run_locust(["-u", "4", "-r", "4", "-t", "3s", "--wait-min", "0.05", "--wait-max", "0.1",
                         "--metrics-port", "0", "--baseline", str(faster), "--baseline-throughput-drop", "1"],
                        report=True, reports=tmp_path, database_url=database_url, run_id="slower")
    assert slower.code == 4, slower.output()  # the data is right; only the comparison missed
    assert all(c["valid"] is True for c in slower.verdict["checks"])
    missed = [g for g in slower.verdict["gates"] if not g["met"]]
    assert [g["gate"] for g in missed] == ["baseline_p95_ratio"], missed
    assert "Against baseline" in (slower.run_dir / "report.html").read_text()
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(slower.run_dir)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == slower.code == 4, again.stdout[-2000:] + again.stderr[-2000:]
    assert "baseline_p95_ratio" in again.stdout


# --- bad input: one line, exit 2, no traceback ---


@pytest.mark.parametrize(("args", "services", "expected"), [
    (["--metrics-port", "BUSY"], {}, "cannot serve metrics on 127.0.0.1:"),
    (["--metrics-port", "70000"], {}, "--metrics-port 70000 is not a port"),
    ([], {"PROMETHEUS_URL": "http://127.0.0.1:1"}, "Prometheus at http://127.0.0.1:1 did not answer"),
    (["--baseline", "reports/no-such-run"], {}, "--baseline reports/no-such-run is not a finished run directory"),
])
def test_bad_exporter_settings_stop_the_run_in_one_line(args: list[str], services: dict[str, str], expected: str,
                                                        database_url: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [str(busy.getsockname()[1]) if a == "BUSY" else a for a in args]
        run = run_locust(["-u", "1", "-r", "1", "-t", "2s", *args], report=True, reports=tmp_path,
                         database_url=database_url, services=services)
    assert run.code == 2, run.output()
    lines = [ln for ln in run.proc.stderr.splitlines() if ln.startswith("toolclash:")]
    assert len(lines) == 1 and expected in lines[0], run.output()
    assert "Traceback" not in run.proc.stderr
    assert not run.run_dir.exists()
