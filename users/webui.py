"""A "Consistency" tab in Locust's web UI (the mechanism of Locust's ``examples/extend_web_ui.py``).

The tab is a table Locust's own front end draws from ``extended_stats`` in each ``/stats/requests``
answer (polled every 2 s while a run is under way, and once when the page loads): the stage, agents,
conflict rate over the last seconds against the profile's threshold, retries by cause, deadlock, pool
and queue figures when a scenario records them, and after stop the verdict with each check's evidence
and every SLA gate.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from toolclash.metrics import PREFIXES

TAB = "consistency"
STRUCTURE = [{"key": "name", "title": "Item"}, {"key": "value", "title": "Value"}, {"key": "detail", "title": "Detail"}]
WINDOW_S = 10.0
"""The live conflict rate is measured over this many seconds of polls."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ConsistencyTab:
    def __init__(self, observer: Any) -> None:
        self.obs = observer
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=200)

    def _totals(self) -> tuple[float, float]:
        reg = self.obs.registry
        attempts = sum(v for (m, _l), v in reg.counters.items() if m == "toolclash_tool_attempts_total")
        retries = sum(v for (m, _l), v in reg.counters.items() if m == "toolclash_retries_total")
        return attempts, retries

    def rows(self) -> list[dict[str, str]]:
        rt = self.obs.rt
        out: list[dict[str, str]] = []

        def row(name: str, value: Any, detail: Any = "") -> None:
            out.append({"name": name, "value": _fmt(value), "detail": _fmt(detail)})

        stage = rt.current_stage()
        row("run", rt.run_id or "–", "under way" if rt.run_active else "stopped")
        row("stage", f"{stage['stage']} ({stage['users']} agents)" if stage else "no ramp stage")
        runner = rt.environment.runner if rt.environment is not None else None
        if runner is not None:
            row("agents", runner.user_count)
        now = time.monotonic()
        attempts, retries = self._totals()
        self._samples.append((now, attempts, retries))
        old = next((s for s in self._samples if now - s[0] <= WINDOW_S), self._samples[0])
        d_att, d_ret = attempts - old[1], retries - old[2]
        threshold = rt.settings.gate_conflict_rate if rt.settings is not None else float("nan")
        live = d_ret / d_att if d_att else (retries / attempts if attempts else 0.0)
        row("conflict rate (live)", live, f"threshold {threshold:.4g}: {'ABOVE' if live >= threshold else 'below'}")
        row("conflict rate (run)", retries / attempts if attempts else 0.0, f"{int(retries)} conflicts in "
            f"{int(attempts)} attempts")
        causes: dict[str, float] = {}
        for (metric, labels), value in self.obs.registry.counters.items():
            if metric == "toolclash_retries_total":
                cause = dict(labels).get("cause", "")
                causes[cause] = causes.get(cause, 0.0) + value
        row("retries by cause", int(sum(causes.values())), ", ".join(f"{k} {int(v)}" for k, v in sorted(causes.items()))
            or "none")
        counters = dict(rt.counters.items())
        for prefix, _metric in PREFIXES:
            if prefix == "barrier_":
                continue
            seen = {k: v for k, v in counters.items() if k.startswith(prefix)}
            if seen:
                row(prefix.rstrip("_") + " events", sum(seen.values()), ", ".join(f"{k} {v}" for k, v in
                                                                                  sorted(seen.items())))
        self.obs.update_breakers()
        states: dict[str, float] = {}
        for (metric, labels, _src), value in self.obs.registry.gauges.items():
            if metric == "toolclash_breaker_agents":
                state = dict(labels).get("state", "")
                states[state] = states.get(state, 0.0) + value
        if states:
            row("circuit breakers", f"{int(states.get('open', 0))} open",
                ", ".join(f"{k} {int(v)}" for k, v in sorted(states.items())))
        extra = [g for source in self.obs.sources for g in source()]
        active = [dict(labels) for metric, labels, value in extra if metric == "toolclash_fault_active" and value]
        windows = sum(value for metric, _labels, value in extra if metric == "toolclash_fault_windows_total")
        if any(metric == "toolclash_fault_active" for metric, _l, _v in extra):
            row("faults active", len(active), ", ".join(f"{a['kind']} {a['target']}" for a in active)
                or f"none now ({int(windows)} window(s) so far)")
        aborted = any(metric == "toolclash_run_aborted" and value for metric, _l, value in extra)
        row("emergency stop", "STOPPED EARLY" if aborted else "armed", "the red Stop now button (POST "
            "/toolclash/stop) stops every worker, heals the faults and judges the run")
        gauges: dict[str, float] = {}
        for (metric, labels, _src), value in self.obs.registry.gauges.items():
            if metric.startswith(("toolclash_pool_", "toolclash_queue_")):
                name = metric.removeprefix("toolclash_") + "".join(f" {v}" for _k, v in labels)
                gauges[name] = gauges.get(name, 0.0) + value
        for name, value in sorted(gauges.items()):
            row(name, value)
        verdict = rt.verdict
        if verdict is not None:
            row("verdict", f"exit code {verdict['exit_code']}", verdict["meaning"])
            for check in verdict["checks"]:
                valid = {True: "valid", False: "INVALID"}.get(check["valid"], "UNKNOWN")
                evidence = "; ".join(json.dumps(e, default=str) for e in check.get("evidence", [])[:2])
                row(f"check {check['name']}", valid, f"{check.get('summary', '')}"
                    + (f" — evidence: {evidence}" if evidence else ""))
            for gate in verdict["gates"]:
                fig = "n/a" if gate["figure"] is None else _fmt(gate["figure"])
                row(f"gate {gate['scope']}.{gate['gate']}", "met" if gate["met"] else "MISSED",
                    f"{fig} {gate['op']} {_fmt(gate['threshold'])}")
        return out


def install(web_ui: Any, observer: Any) -> ConsistencyTab:
    """Add the tab to *web_ui* (Locust's WebUI): template arguments and the extended stats in each poll."""
    from flask import request

    tab = ConsistencyTab(observer)
    web_ui.template_args["extended_tabs"] = [{"title": "Consistency", "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": STRUCTURE}]

    @web_ui.app.after_request
    def extend_stats(response: Any) -> Any:
        if request.path != "/stats/requests" or not response.is_json:
            return response
        try:
            response.set_data(json.dumps({**response.json, "extended_stats": [{"key": TAB, "data": tab.rows()}]}))
        except Exception:  # noqa: BLE001 - never break Locust's own stats polling
            pass
        return response

    return tab
