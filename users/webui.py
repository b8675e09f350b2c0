"""A "Consistency" tab in Locust's web UI (the mechanism of Locust's ``examples/extend_web_ui.py``).

The tab is a table Locust's own front end draws from ``extended_stats`` in each ``/stats/requests`` answer
(polled every 2 s while a run is under way, and once when the page loads), in numbered sections: the **verdict** first
(valid / anomaly / unknown / SLA missed, or "run under way"), then every **check** with its summary and a link
to its evidence, every **SLA gate**, and the **live** figures (stage, agents, conflict rate over the last seconds
against the threshold, retries by cause, scenario counters and gauges). A small script added to Locust's page
puts a coloured verdict banner above the tab's table, with links to the evidence of every check that is not
valid: ``/toolclash/evidence/<check>`` (all of a check's evidence) and ``/toolclash/report`` (report.html).
"""

from __future__ import annotations

import html
import json
import time
from collections import deque
from typing import Any

from toolclash.metrics import PREFIXES

TAB = "consistency"
STRUCTURE = [{"key": "name", "title": "Section"}, {"key": "item", "title": "Item"},
             {"key": "value", "title": "Value"}, {"key": "detail", "title": "Detail"}]
"""Locust's table sorts its rows by the column keyed ``name`` (stably): that column holds the numbered section."""
SECTIONS = {"verdict": "1 verdict", "checks": "2 checks", "gates": "3 SLA gates", "live": "4 live figures"}
WINDOW_S = 10.0
"""The live conflict rate is measured over this many seconds of polls."""
EVIDENCE_URL = "/toolclash/evidence/"
BANNER = {0: "VALID", 1: "ANOMALY", 2: "COULD NOT RUN", 3: "UNKNOWN", 4: "SLA MISSED"}
"""The banner's word for each exit code of the verdict."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def banner(rt: Any) -> tuple[str, str]:
    """(word, sentence) of the verdict banner."""
    verdict = rt.verdict
    if verdict is None:
        if rt.run_active:
            return "RUN UNDER WAY", "no verdict yet: the checks run when the load stops"
        if rt.exit_code == 2:
            return "COULD NOT RUN", "the run could not start (see the log): exit code 2"
        if rt.run_id:
            return "JUDGING", "the load stopped; the checks are reading the history and the final state"
        return "NO VERDICT YET", "start a run; its verdict appears here when it stops"
    code = int(verdict["exit_code"])
    return BANNER.get(code, f"EXIT {code}"), f"exit code {code}: {verdict['meaning']}"


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

        def row(group: str, name: str, value: Any, detail: Any = "") -> None:
            out.append({"name": SECTIONS[group], "item": name, "value": _fmt(value), "detail": _fmt(detail)})

        verdict = rt.verdict
        word, sentence = banner(rt)
        row("verdict", "verdict", word, sentence)
        row("verdict", "run", rt.run_id or "–", "under way" if rt.run_active else "stopped")
        if verdict is not None:
            for check in verdict["checks"]:
                valid = {True: "valid", False: "INVALID"}.get(check["valid"], "UNKNOWN")
                link = f" — evidence: {EVIDENCE_URL}{check['name']}" if check.get("evidence") else ""
                row("checks", check["name"], valid, f"{check.get('summary', '')}{link}")
            for gate in verdict["gates"]:
                fig = "n/a" if gate["figure"] is None else _fmt(gate["figure"])
                row("gates", f"{gate['scope']}.{gate['gate']}", "met" if gate["met"] else "MISSED",
                    f"{fig} {gate['op']} {_fmt(gate['threshold'])}")
        self._live(row)
        return out

    def _live(self, row: Any) -> None:
        rt = self.obs.rt
        stage = rt.current_stage()
        row("live", "stage", f"{stage['stage']} ({stage['users']} agents)" if stage else "no ramp stage")
        runner = rt.environment.runner if rt.environment is not None else None
        if runner is not None:
            row("live", "agents", runner.user_count)
        now = time.monotonic()
        attempts, retries = self._totals()
        self._samples.append((now, attempts, retries))
        old = next((s for s in self._samples if now - s[0] <= WINDOW_S), self._samples[0])
        d_att, d_ret = attempts - old[1], retries - old[2]
        threshold = rt.settings.gate_conflict_rate if rt.settings is not None else float("nan")
        live = d_ret / d_att if d_att else (retries / attempts if attempts else 0.0)
        row("live", "conflict rate (live)", live,
            f"threshold {threshold:.4g}: {'ABOVE' if live >= threshold else 'below'}")
        row("live", "conflict rate (run)", retries / attempts if attempts else 0.0,
            f"{int(retries)} conflicts in {int(attempts)} attempts")
        causes: dict[str, float] = {}
        for (metric, labels), value in self.obs.registry.counters.items():
            if metric == "toolclash_retries_total":
                cause = dict(labels).get("cause", "")
                causes[cause] = causes.get(cause, 0.0) + value
        row("live", "retries by cause", int(sum(causes.values())),
            ", ".join(f"{k} {int(v)}" for k, v in sorted(causes.items())) or "none")
        counters = dict(rt.counters.items())
        row("live", "in-doubt calls", counters.get("calls_unknown", 0), "outcome unknown: resolved by the checks")
        for prefix, _metric in PREFIXES:
            if prefix == "barrier_":
                continue
            seen = {k: v for k, v in counters.items() if k.startswith(prefix)}
            if seen:
                row("live", prefix.rstrip("_") + " events", sum(seen.values()),
                    ", ".join(f"{k} {v}" for k, v in sorted(seen.items())))
        self.obs.update_breakers()
        states: dict[str, float] = {}
        for (metric, labels, _src), value in self.obs.registry.gauges.items():
            if metric == "toolclash_breaker_agents":
                state = dict(labels).get("state", "")
                states[state] = states.get(state, 0.0) + value
        if states:
            row("live", "circuit breakers", f"{int(states.get('open', 0))} open",
                ", ".join(f"{k} {int(v)}" for k, v in sorted(states.items())))
        extra = [g for source in self.obs.sources for g in source()]
        active = [dict(labels) for metric, labels, value in extra if metric == "toolclash_fault_active" and value]
        windows = sum(value for metric, _labels, value in extra if metric == "toolclash_fault_windows_total")
        if any(metric == "toolclash_fault_active" for metric, _l, _v in extra):
            row("live", "faults active", len(active), ", ".join(f"{a['kind']} {a['target']}" for a in active)
                or f"none now ({int(windows)} window(s) so far)")
        aborted = any(metric == "toolclash_run_aborted" and value for metric, _l, value in extra)
        row("live", "emergency stop", "STOPPED EARLY" if aborted else "armed", "the red Stop now button (POST "
            "/toolclash/stop) stops every worker, heals the faults and judges the run")
        gauges: dict[str, float] = {}
        for (metric, labels, _src), value in self.obs.registry.gauges.items():
            if metric.startswith(("toolclash_pool_", "toolclash_queue_")):
                name = metric.removeprefix("toolclash_") + "".join(f" {v}" for _k, v in labels)
                gauges[name] = gauges.get(name, 0.0) + value
        for name, value in sorted(gauges.items()):
            row("live", name, value)


SCRIPT = """<script>
(function () {
  // toolclash: the verdict banner above the Consistency tab's table (see users/webui.py)
  var COLORS = {"VALID": "#1b7f3b", "ANOMALY": "#b00020", "UNKNOWN": "#a15c00", "SLA MISSED": "#c75000",
                "COULD NOT RUN": "#b00020", "RUN UNDER WAY": "#1f5fa8", "JUDGING": "#1f5fa8",
                "NO VERDICT YET": "#555"};
  var state = null;
  function esc(s) { var d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }
  function poll() {
    fetch("/toolclash/banner").then(function (r) { return r.json(); })
      .then(function (j) { state = j; draw(); }).catch(function () {});
  }
  function draw() {
    var on = new URLSearchParams(location.search).get("tab") === "consistency";
    var el = document.getElementById("toolclash-banner");
    var table = document.querySelector("table");
    if (!on || !state || !table) { if (el) { el.remove(); } return; }
    var anchor = table.closest(".MuiTableContainer-root") || table.parentElement;
    if (!el) { el = document.createElement("div"); el.id = "toolclash-banner"; }
    if (el.nextSibling !== anchor) { anchor.parentElement.insertBefore(el, anchor); }
    var html = "<strong style='font-size:1.3em;letter-spacing:.04em'>" + esc(state.word) + "</strong> &nbsp;"
      + esc(state.sentence);
    if (state.links.length) {
      html += "<div style='margin-top:.4em'>evidence: " + state.links.map(function (l) {
        return "<a style='color:#fff;text-decoration:underline;margin-right:1em' href='" + esc(l.href) + "'>"
          + esc(l.name) + "</a>"; }).join("") + "</div>";
    }
    if (state.report) {
      html += "<div style='margin-top:.3em'><a style='color:#fff;text-decoration:underline' href='/toolclash/report'>"
        + "report.html</a></div>";
    }
    if (el.getAttribute("data-html") !== html) { el.innerHTML = html; el.setAttribute("data-html", html); }
    el.setAttribute("data-verdict", state.word);
    el.style.cssText = "background:" + (COLORS[state.word] || "#555") + ";color:#fff;padding:.8em 1em;"
      + "margin:.5em 0;border-radius:4px;font-family:sans-serif";
  }
  poll();
  setInterval(poll, 2000);
  setInterval(draw, 500);
})();
</script>"""


def banner_state(rt: Any) -> dict[str, Any]:
    """What the banner shows: its word and sentence, links to the evidence of each check that is not valid."""
    word, sentence = banner(rt)
    links = [{"name": c["name"], "href": EVIDENCE_URL + c["name"]}
             for c in (rt.verdict or {}).get("checks", []) if c["valid"] is not True]
    report = rt.run_dir is not None and (rt.run_dir / "report.html").is_file() and not rt.run_active
    return {"word": word, "sentence": sentence, "links": links, "report": bool(report)}


def evidence_page(rt: Any, name: str) -> tuple[str, int]:
    """An HTML page with every evidence item checks.json holds for check *name*."""
    check = next((c for c in (rt.verdict or {}).get("checks", []) if c["name"] == name), None)
    if check is None:
        return f"<p>No check {html.escape(name)} in the last verdict.</p>", 404
    valid = {True: "valid", False: "INVALID"}.get(check["valid"], "UNKNOWN")
    items = "".join(f"<li><pre>{html.escape(json.dumps(e, indent=1, default=str))}</pre></li>"
                    for e in check.get("evidence", []))
    more = int(check.get("evidence_total") or 0) - len(check.get("evidence", []))
    tail = f"<p>… {more} more: see checks.json in the run directory.</p>" if more > 0 else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title></head>"
            f"<body style='font-family:sans-serif;margin:2em'><p><a href='/?tab=consistency'>back to the "
            f"Consistency tab</a></p><h1>{html.escape(name)}: {valid}</h1><p>{html.escape(check.get('summary', ''))}"
            f"</p><p>counts: <code>{html.escape(json.dumps(check.get('counts', {}), default=str))}</code></p>"
            f"<h2>Evidence ({check.get('evidence_total', 0)})</h2><ol>{items}</ol>{tail}</body></html>", 200)


def install(web_ui: Any, observer: Any) -> ConsistencyTab:
    """Add the tab to *web_ui* (Locust's WebUI): template arguments, the extended stats in each poll, the banner
    script on Locust's page and the routes it links to."""
    from flask import jsonify, make_response, request, send_file

    tab = ConsistencyTab(observer)
    rt = observer.rt
    web_ui.template_args["extended_tabs"] = [{"title": "Consistency", "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": STRUCTURE}]

    @web_ui.app.after_request
    def extend_stats(response: Any) -> Any:
        try:
            if request.path == "/stats/requests" and response.is_json:
                response.set_data(json.dumps({**response.json, "extended_stats": [{"key": TAB,
                                                                                   "data": tab.rows()}]}))
            elif request.path == "/" and response.mimetype == "text/html" and not response.direct_passthrough:
                page = response.get_data(as_text=True)
                if "</body>" in page and "toolclash-banner" not in page:
                    response.set_data(page.replace("</body>", SCRIPT + "</body>", 1))
        except Exception:  # noqa: BLE001 - never break Locust's own pages
            pass
        return response

    web_ui.app.add_url_rule("/toolclash/banner", "toolclash_banner", lambda: jsonify(banner_state(rt)))

    def evidence(name: str) -> Any:
        body, status = evidence_page(rt, name)
        return make_response(body, status)

    web_ui.app.add_url_rule("/toolclash/evidence/<path:name>", "toolclash_evidence", evidence)

    def report() -> Any:
        if rt.run_dir is None or not (rt.run_dir / "report.html").is_file():
            return make_response("no report yet: it is written when the run stops", 404)
        return send_file(rt.run_dir / "report.html", mimetype="text/html")

    web_ui.app.add_url_rule("/toolclash/report", "toolclash_report", report)
    return tab
