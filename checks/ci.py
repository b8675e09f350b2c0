"""The verdict in the formats CI systems read natively, written next to ``checks.json`` by the judge (and by
``python -m checks --run DIR --write``):

* ``junit.xml`` — JUnit XML: one test case per check and per SLA gate. A check that found an anomaly and a
  missed gate are ``<failure>`` elements carrying the evidence; a check that could not decide (unknown) is an
  ``<error>`` (it did not fail, it could not run to the end). GitLab (``artifacts:reports:junit``), Jenkins
  (``junit``) and GitHub test-report actions show it as test results.
* ``summary.md`` — Markdown for a CI job summary (``cat summary.md >> "$GITHUB_STEP_SUMMARY"``): the verdict,
  what failed with its first evidence, and every gate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

JUNIT, SUMMARY = "junit.xml", "summary.md"
EVIDENCE_SHOWN = 5
"""Evidence items in a failure's text (and in the summary); checks.json has up to 20 and the total."""

TITLE = {0: "valid", 1: "anomaly", 2: "could not run", 3: "unknown", 4: "SLA missed"}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _evidence(check: Mapping[str, Any], n: int = EVIDENCE_SHOWN) -> list[str]:
    items = [json.dumps(e, default=str, sort_keys=True) for e in (check.get("evidence") or [])[:n]]
    more = int(check.get("evidence_total") or 0) - len(items)
    if more > 0:
        items.append(f"… {more} more in checks.json")
    return items


def _gate_name(gate: Mapping[str, Any]) -> str:
    return f"{gate['scope']}.{gate['gate']}"


def _gate_text(gate: Mapping[str, Any]) -> str:
    text = f"{_fmt(gate.get('figure'))} {gate['op']} {_fmt(gate['threshold'])}"
    return text + (f" ({gate['note']})" if gate.get("note") else "")


def junit_xml(verdict: Mapping[str, Any]) -> str:
    """The verdict as a JUnit XML document: a suite of checks and a suite of SLA gates."""
    run_id = str(verdict.get("run_id") or "")
    duration = (verdict.get("summary") or {}).get("duration_s")
    root = ET.Element("testsuites", name=f"toolclash run {run_id}")
    checks = ET.SubElement(root, "testsuite", name="toolclash checks")
    gates = ET.SubElement(root, "testsuite", name="toolclash SLA gates")
    props = ET.SubElement(checks, "properties")
    for key, value in (("run_id", run_id), ("exit_code", verdict.get("exit_code")),
                       ("meaning", verdict.get("meaning"))):
        ET.SubElement(props, "property", name=key, value=_fmt(value))
    counts = {"checks": [0, 0, 0], "gates": [0, 0, 0]}  # tests, failures, errors
    for check in verdict.get("checks", []):
        name = str(check["name"])
        case = ET.SubElement(checks, "testcase", name=name, classname=f"toolclash.checks.{name.split('.')[0]}",
                             time="0")
        counts["checks"][0] += 1
        summary = str(check.get("summary") or "")
        if check.get("valid") is False:
            counts["checks"][1] += 1
            failure = ET.SubElement(case, "failure", message=summary or "anomaly", type="anomaly")
            failure.text = "\n".join([summary, *_evidence(check)])
        elif check.get("valid") is not True:
            counts["checks"][2] += 1
            error = ET.SubElement(case, "error", message=summary or "unknown", type="unknown")
            error.text = "\n".join([summary, *_evidence(check)])
        else:
            ET.SubElement(case, "system-out").text = summary
    for gate in verdict.get("gates", []):
        case = ET.SubElement(gates, "testcase", name=_gate_name(gate), classname=f"toolclash.gates.{gate['scope']}",
                             time="0")
        counts["gates"][0] += 1
        if gate.get("met") is True:
            ET.SubElement(case, "system-out").text = _gate_text(gate)
        else:
            counts["gates"][1] += 1
            ET.SubElement(case, "failure", message=f"SLA gate missed: {_gate_text(gate)}",
                          type="sla").text = _gate_text(gate)
    for suite, key in ((checks, "checks"), (gates, "gates")):
        tests, failures, errors = counts[key]
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
        suite.set("skipped", "0")
        suite.set("time", _fmt(duration) if key == "checks" and isinstance(duration, float | int)
                  and not math.isnan(duration) else "0")
    root.set("tests", str(counts["checks"][0] + counts["gates"][0]))
    root.set("failures", str(counts["checks"][1] + counts["gates"][1]))
    root.set("errors", str(counts["checks"][2] + counts["gates"][2]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _cell(text: Any) -> str:
    return _fmt(text).replace("|", "\\|").replace("\n", " ")


def summary_md(verdict: Mapping[str, Any]) -> str:
    """The verdict as Markdown for a CI job summary."""
    code = int(verdict.get("exit_code", 2))
    checks = verdict.get("checks", [])
    gates = verdict.get("gates", [])
    bad = [c for c in checks if c.get("valid") is not True]
    missed = [g for g in gates if g.get("met") is not True]
    lines = [f"## toolclash run `{verdict.get('run_id')}`: {TITLE.get(code, 'exit ' + str(code))} (exit code {code})",
             "", str(verdict.get("meaning", "")), "",
             f"{len(checks) - len(bad)} of {len(checks)} checks valid; {len(gates) - len(missed)} of {len(gates)} "
             "SLA gates met.", ""]
    if bad:
        lines += ["### Checks that are not valid", "", "| check | verdict | summary |", "| --- | --- | --- |"]
        lines += [f"| `{c['name']}` | {'**anomaly**' if c.get('valid') is False else 'unknown'} | "
                  f"{_cell(c.get('summary'))} |" for c in bad]
        lines.append("")
        for c in bad:
            ev = _evidence(c)
            if ev:
                lines += [f"<details><summary>evidence of {c['name']}</summary>", "", "```", *ev, "```", "",
                          "</details>", ""]
    if missed:
        lines += ["### SLA gates missed", "", "| gate | figure | threshold | note |", "| --- | --- | --- | --- |"]
        lines += [f"| `{_gate_name(g)}` | {_cell(g.get('figure'))} | {g['op']} {_cell(g['threshold'])} | "
                  f"{_cell(g.get('note') or '')} |" for g in missed]
        lines.append("")
    lines += ["<details><summary>every check and gate</summary>", "", "| name | result |", "| --- | --- |"]
    lines += [f"| `{c['name']}` | {_cell({True: 'valid', False: 'anomaly'}.get(c.get('valid'), 'unknown'))} |"
              for c in checks]
    lines += [f"| `{_gate_name(g)}` | {'met' if g.get('met') else 'missed'}: {_cell(_gate_text(g))} |"
              for g in gates]
    lines += ["", "</details>", "", "Full verdict: `checks.json`; plots and evidence: `report.html` (same directory).",
              ""]
    return "\n".join(lines)


def write_ci_files(run_dir: str | Path, verdict: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``junit.xml`` and ``summary.md`` into *run_dir* (each atomically); return their paths."""
    out = []
    for name, text in ((JUNIT, junit_xml(verdict)), (SUMMARY, summary_md(verdict))):
        path = Path(run_dir) / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        out.append(path)
    return out[0], out[1]
