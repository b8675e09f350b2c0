"""The config detection matrix: 15+ agents on one configuration record, real PostgreSQL, short headless runs.

``last_writer_wins`` and each planted ``--fault`` must be caught; ``versioned``, ``field_atomic`` and
``timestamp_ordered`` must pass. The verdict is read back from reports/<run-id>/checks.json.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, LocustRun, run_locust

LOCUSTFILE = "locustfiles/config.py"
HOT = ["-u", "15", "-r", "15", "--profile", "stress", "-t", "2s"]


def run(args: list[str], database_url: str | None, tmp_path: Path) -> LocustRun:
    return run_locust([*HOT, *args], reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE)


def test_last_writer_wins_loses_other_agents_fields(database_url: str, tmp_path: Path) -> None:
    r = run(["--strategy", "last_writer_wins"], database_url, tmp_path)
    assert r.code == 1, r.output()
    lost = r.check("config.lost_updates")
    assert lost["valid"] is False and lost["counts"]["lost_updates"] > 0
    fields = lost["counts"]["lost_fields"]
    assert len(fields) >= 2 and all(f in lost["summary"] for f in fields)  # the lost fields are named
    first = lost["evidence"][0]
    assert first["op_id"] and first["field"] in fields and first["overwritten_by"]
    assert first["which_had_read_version"] < first["wrote_version"] - 1  # it wrote over a document it had not seen
    assert "config.lost_updates" in r.proc.stdout and fields[0] in r.proc.stdout
    assert r.check("config.version")["valid"] is True  # every write did bump the version
    # the verdict is reproduced from the run directory alone
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(r.run_dir)], cwd=ROOT,
                           capture_output=True, text=True, check=False)
    assert again.returncode == 1, again.stdout + again.stderr
    assert not (r.run_dir / "report.html").exists()  # --report none (the test helper's default)
    assert "acknowledged change(s) lost" in again.stdout


@pytest.mark.parametrize("strategy", ["versioned", "field_atomic"])
def test_correct_strategies_keep_every_field(strategy: str, database_url: str, tmp_path: Path) -> None:
    r = run(["--strategy", strategy], database_url, tmp_path)
    assert r.code in (0, 4), r.output()
    verdict = r.verdict
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
    fig = verdict["figures"]["config"]
    assert fig["ok"] > 50 and fig["writes"] == fig["ok"], fig
    assert r.check("config.version")["valid"] is True
    if r.code == 4:  # a hot record may miss a gate: then the summary must name it
        assert [g for g in verdict["gates"] if not g["met"]] and "NO" in r.proc.stdout, r.output()
    counters = verdict["counters"]
    assert counters["config_writes"] == fig["ok"]
    assert counters.get("config_conflicts", 0) == fig["conflicts"]  # live counters agree with the history
    if strategy == "versioned":
        assert fig["conflicts"] > 0 and fig["conflicts_per_write"] > 0, fig  # contention was real, and retried
        assert counters["config_backoff_ms"] > 0
    else:
        assert fig["conflicts"] == 0 and fig["failed"] == 0, fig  # a single-field update cannot conflict


def test_versioned_gives_up_as_conflict_exhausted_and_leaves_no_trace(database_url: str, tmp_path: Path) -> None:
    r = run(["--strategy", "versioned", "--max-tries", "2", "--tool-think-ms", "1"], database_url, tmp_path)
    assert r.code in (0, 4), r.output()
    assert all(c["valid"] is True for c in r.verdict["checks"]), r.verdict["checks"]
    fig = r.verdict["figures"]["config"]
    assert fig["conflict_exhausted"] > 0, fig
    trace = r.check("config.fail_no_trace")
    assert trace["counts"]["conflict_exhausted"] == fig["conflict_exhausted"] == r.verdict["counters"][
        "config_conflict_exhausted"]
    assert r.code == 4 and not next(g for g in r.verdict["gates"] if g["gate"] == "success_rate")["met"]


def test_timestamp_ordered_rejects_stale_writes_and_keeps_the_newest(database_url: str, tmp_path: Path) -> None:
    """Three fields for 15 agents: five agents share each field, so older timestamps lose at the write."""
    r = run(["--strategy", "timestamp_ordered", "--fields", "3", "--tool-think-ms", "2"], database_url, tmp_path)
    assert r.code in (0, 4), r.output()
    assert all(c["valid"] is True for c in r.verdict["checks"]), r.verdict["checks"]
    order = r.check("config.timestamp_order")
    assert order["counts"]["timestamped_writes"] > 50 and order["counts"]["stale_rejections"] > 0, order
    fig = r.verdict["figures"]["config"]
    assert fig["rejected"] == fig["stale_timestamp"] == order["counts"]["stale_rejections"], fig


def test_unchecked_timestamps_are_caught(database_url: str, tmp_path: Path) -> None:
    r = run(["--strategy", "timestamp_ordered", "--fields", "3", "--tool-think-ms", "2", "--fault",
             "timestamp_unchecked"], database_url, tmp_path)
    assert r.code == 1, r.output()
    order = r.check("config.timestamp_order")
    assert order["valid"] is False and order["counts"]["regressions"] > 0
    assert order["evidence"][0]["ts"] < order["evidence"][0]["whose_ts"]


def test_acknowledged_but_rolled_back_is_caught(database_url: str, tmp_path: Path) -> None:
    r = run(["--strategy", "field_atomic", "--fault", "ack_before_commit"], database_url, tmp_path)
    assert r.code == 1, r.output()
    lost = r.check("config.lost_updates")
    assert lost["valid"] is False and lost["evidence"][0]["op_id"] and lost["evidence"][0]["field"]
    assert r.check("config.version")["valid"] is False
    assert r.check("config.write_log")["counts"]["missing"] > 0


def test_committed_but_reported_fail_is_caught(database_url: str, tmp_path: Path) -> None:
    r = run(["--strategy", "versioned", "--fault", "ambiguous_as_fail"], database_url, tmp_path)
    assert r.code == 1, r.output()
    trace = r.check("config.fail_no_trace")
    assert trace["valid"] is False and trace["evidence"][0]["reason"] == "commit-timeout"
    assert r.check("config.version")["valid"] is False


def test_truncated_write_is_caught_by_the_final_document(database_url: str, tmp_path: Path) -> None:
    """--fault truncated_write: the document keeps each value without its last character while the write log holds
    what the agent asked for; the final document is not the fold of the acknowledged writes."""
    r = run(["--strategy", "field_atomic", "--fault", "truncated_write"], database_url, tmp_path)
    assert r.code == 1, r.output()
    doc = r.check("config.final_document")
    assert doc["valid"] is False and doc["counts"]["fields_wrong"], doc
    ev = doc["evidence"][0]
    assert ev["found"] == ev["expected"][:-1] and ev["expected_op"], ev
    assert r.check("config.write_log")["valid"] is True  # the log holds what was asked: only the document is off
    assert "config.final_document" in r.proc.stdout and "FALSE" in r.proc.stdout


def test_bad_option_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = run_locust(["-u", "15", "-t", "1s", "--fields", "0"], reports=tmp_path, database_url=None,
                   locustfile=LOCUSTFILE)
    assert r.code == 2, r.output()
    assert "--fields must be between 1 and 999" in r.proc.stderr and "Traceback" not in r.proc.stderr
