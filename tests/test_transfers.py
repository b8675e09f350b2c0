"""The transfers scenario under load: at READ COMMITTED audits see half a transfer, named; at REPEATABLE READ every
audit sees the constant total and conflicting transfers are retried; the planted fault is caught."""

from __future__ import annotations

from pathlib import Path

from checks import transfers as tc
from tests.conftest import run_locust

LOAD = ["-u", "6", "-r", "6", "-t", "4s", "--profile", "stress", "--sync", "1", "--tool-think-ms", "2"]
LOCUSTFILE = "locustfiles/transfers.py"


def test_read_skew_at_read_committed_names_the_transfer(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "read_committed"], reports=tmp_path, database_url=database_url,
                     locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    audits = run.check("transfers.audits")
    assert audits["valid"] is False and audits["counts"]["wrong_totals"] > 0
    first = audits["evidence"][0]
    assert first["op_id"] and first["saw_total"] != first["constant_total"]
    assert first["half_of"] and first["half_of"][0]["op_id"] in audits["summary"]
    assert run.check("transfers.ledger")["valid"] is True  # the money is all there; only the audits were wrong
    iso = run.check("transfers.isolation")
    assert iso["valid"] is True and iso["counts"]["allowed"].get("G-single", 0) > 0, iso["counts"]


def test_read_skew_is_a_prohibited_cycle_when_serializable_is_expected(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "read_committed", "--expect-isolation", "serializable"],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    iso = run.check("transfers.isolation")
    assert iso["valid"] is False and iso["counts"]["prohibited"].get("G-single", 0) > 0, iso["counts"]


def test_repeatable_read_audits_see_the_constant_total(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "repeatable_read"], reports=tmp_path, database_url=database_url,
                     locustfile=LOCUSTFILE)
    assert run.code in (0, 4), run.output()
    assert all(c["valid"] is True for c in run.verdict["checks"]), run.verdict["checks"]
    assert run.check("transfers.audits")["counts"]["audits"] > 50
    assert run.verdict["figures"]["transfers"]["retries_by_cause"].get("serialization", 0) > 0


def test_ambiguous_commit_reported_as_fail_is_caught(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "serializable", "--fault", "ambiguous_as_fail"], reports=tmp_path,
                     database_url=database_url, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    ledger = run.check("transfers.ledger")
    assert ledger["valid"] is False and ledger["counts"]["phantom"] > 0


def test_audit_check_on_a_tiny_history() -> None:
    audit = {"run_id": "t", "op_id": "p-2", "process": "p", "agent": "p-a2", "tool": "audit",
             "strategy": "read_committed", "args": {"accounts": 2}, "invoke_ts": 1.0, "complete_ts": 1.1,
             "outcome": "ok", "attempts": 1, "error_class": None, "reason": None,
             "result": {"seen": [[1, 100, 0], [2, 110, 1]], "total": 210}}
    final = {"isolation": {"level": "read_committed", "expect": ""},
             "transfer_accounts": [{"id": 1, "balance": 90, "initial": 100, "version": 1},
                                   {"id": 2, "balance": 110, "initial": 100, "version": 1}],
             "transfer_ledger": [{"seq": 1, "op_id": "p-1", "from": 1, "to": 2, "amount": 10, "from_version": 1,
                                  "to_version": 1, "agent": "p-a1"}]}
    res = {r.name: r for r in tc.check_all([audit], final)}
    assert res["transfers.audits"].valid is False
    assert res["transfers.audits"].evidence[0]["half_of"][0]["op_id"] == "p-1"
    assert res["transfers.isolation"].counts["allowed"] == {"G-single": 1}
