"""What CI gets from a run: junit.xml (read back with junitparser, a JUnit parser from PyPI: one case per check and
per SLA gate, an anomaly's failure carrying its evidence), summary.md, the exit code next to Locust's
--exit-code-on-error, and the headless progress lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from junitparser import Error, Failure, JUnitXml

from checks.ci import junit_xml, summary_md
from tests.conftest import ROOT, run_locust
from toolclash.run import process_exit_code


def _cases(path: Path) -> dict[str, Any]:
    xml = JUnitXml.fromfile(str(path))
    return {case.name: case for suite in xml for case in suite}


def test_an_anomaly_is_a_failing_case_with_its_evidence(database_url: str, tmp_path: Path) -> None:
    run = run_locust(["-u", "6", "-r", "6", "-t", "3s", "--strategy", "naive", "--accounts", "1", "--wait-min", "0",
                      "--wait-max", "0.01", "--metrics-port", "0", "--progress-s", "0"],
                     reports=tmp_path, database_url=database_url)
    assert run.code == 1, run.output()
    verdict = run.verdict
    cases = _cases(run.run_dir / "junit.xml")
    expected = {c["name"] for c in verdict["checks"]} | {f"{g['scope']}.{g['gate']}" for g in verdict["gates"]}
    assert set(cases) == expected and len(cases) == len(verdict["checks"]) + len(verdict["gates"])
    lost = cases["credits.lost_updates"]
    failures = [r for r in lost.result if isinstance(r, Failure)]
    assert failures and failures[0].type == "anomaly", lost.result
    op_id = verdict["checks"][[c["name"] for c in verdict["checks"]].index("credits.lost_updates")]["evidence"][0]
    assert str(next(iter(op_id.values()))) in (failures[0].text or "")  # the evidence rides in the failure
    assert cases["credits.no_negative"].is_passed
    summary = (run.run_dir / "summary.md").read_text()
    assert "anomaly (exit code 1)" in summary and "`credits.lost_updates`" in summary
    # python -m checks --write writes the same files again from the run directory alone
    (run.run_dir / "junit.xml").unlink()
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(run.run_dir), "--write", "--progress"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1, again.stderr
    steps = [ln for ln in again.stderr.splitlines() if ln.startswith("python -m checks: [")]
    assert any("checking credits:" in ln for ln in steps) and "judged" in steps[-1], again.stderr
    assert set(_cases(run.run_dir / "junit.xml")) == expected


def test_valid_run_with_rejections_exit_code_on_error_and_progress(database_url: str, tmp_path: Path) -> None:
    """Insufficient funds (business rejections) are failed requests to Locust but correct answers to toolclash:
    the run is valid (exit 0) unless --exit-code-on-error asks for a code; progress lines come every second."""
    args = ["-u", "4", "-r", "4", "-t", "4s", "--initial-balance", "30", "--wait-min", "0.01", "--wait-max", "0.02",
            "--metrics-port", "0"]
    plain = run_locust([*args, "--progress-s", "0"], reports=tmp_path, database_url=database_url, run_id="plain")
    assert plain.code == 0, plain.output()
    assert plain.verdict["figures"]["credits"]["rejected"] > 0  # there were failed requests
    assert "progress:" not in plain.proc.stderr
    asked = run_locust([*args, "--progress-s", "1", "--exit-code-on-error", "5"], reports=tmp_path,
                       database_url=database_url, run_id="asked")
    assert asked.code == 5, asked.output()
    assert asked.verdict["exit_code"] == 0  # the verdict itself is valid; the 5 is Locust's finding
    progress = [ln for ln in asked.proc.stderr.splitlines() if ln.startswith("progress: ")]
    assert len(progress) >= 2, asked.output()
    assert re.search(r"progress: \d+\.\d s, 4 agents, [\d.]+ calls/s, conflict rate [\d.]+% \(gate 5%\), "
                     r"retries \d+, in doubt \d+, failed or rejected \d+, gates at risk: none", progress[-1]), progress
    cases = _cases(asked.run_dir / "junit.xml")
    assert all(case.is_passed for case in cases.values())


def test_exit_code_on_error_applies_only_to_a_valid_verdict() -> None:
    assert process_exit_code(0, on_error=5, failed_requests=True) == 5
    assert process_exit_code(0, on_error=5, failed_requests=False) == 0
    assert all(process_exit_code(code, on_error=5, failed_requests=True) == code for code in (1, 2, 3, 4))
    assert process_exit_code(0, on_error=0, failed_requests=True) == 0


def test_unknown_checks_are_errors_and_missed_gates_failures() -> None:
    verdict = {"run_id": "r", "exit_code": 3, "meaning": "verdict unknown", "summary": {"duration_s": 2.5},
               "checks": [{"name": "history.complete", "valid": "unknown", "summary": "1 process lost",
                           "evidence": [{"process": "w1"}], "evidence_total": 1},
                          {"name": "credits.ledger", "valid": True, "summary": "ok", "evidence": [],
                           "evidence_total": 0}],
               "gates": [{"scope": "credits", "gate": "p95_ms", "figure": 2500.0, "op": "<", "threshold": 2000.0,
                          "met": False, "note": ""}]}
    xml = JUnitXml.fromstring(junit_xml(verdict))
    cases = {case.name: case for suite in xml for case in suite}
    assert isinstance(cases["history.complete"].result[0], Error) and "w1" in cases["history.complete"].result[0].text
    assert isinstance(cases["credits.p95_ms"].result[0], Failure)
    assert "2500 < 2000" in cases["credits.p95_ms"].result[0].message
    assert cases["credits.ledger"].is_passed
    md = summary_md(verdict)
    assert "unknown (exit code 3)" in md and "`credits.p95_ms`" in md and "| 2500 | < 2000 |" in md
