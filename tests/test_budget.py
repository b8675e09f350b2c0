"""The team budget scenario under load: write skew at REPEATABLE READ exits 1 naming the two spends; SERIALIZABLE
and the two lock-based fixes keep every team within its limit; the planted fault is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from checks import budget as bc
from tests.conftest import run_locust

LOAD = ["-u", "4", "-r", "4", "-t", "4s", "--profile", "stress", "--sync", "1"]
LOCUSTFILE = "locustfiles/budget.py"


def test_write_skew_at_repeatable_read_names_the_two_spends(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "repeatable_read"], reports=tmp_path, database_url=database_url,
                     locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    limit = run.check("budget.limit")
    assert limit["valid"] is False and limit["counts"]["teams_over_limit"] > 0
    pair = limit["evidence"][0]["skew"][0]
    assert pair["kind"] == "write skew (G2-item)"
    x, y = pair["ops"]
    assert x["op_id"] != y["op_id"] and x["member"] != y["member"]
    assert x["read_total"] + x["amount"] <= limit["evidence"][0]["limit"]  # each one checked the limit …
    assert x["read_wallets"][y["member"] - 1] < y["wallet_after"]  # … without the other's spend
    assert x["op_id"] in limit["summary"] and y["op_id"] in limit["summary"]
    assert x["op_id"] in run.proc.stdout and y["op_id"] in run.proc.stdout
    iso = run.check("budget.isolation")  # snapshot isolation allows write skew: counted, not failed
    assert iso["valid"] is True and iso["counts"]["allowed"].get("G2-item", 0) > 0, iso["counts"]
    assert not iso["counts"]["prohibited"]


def test_write_skew_is_a_prohibited_cycle_when_serializable_is_expected(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "repeatable_read", "--expect-isolation", "serializable"],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    iso = run.check("budget.isolation")
    assert iso["valid"] is False and iso["counts"]["prohibited"].get("G2-item", 0) > 0, iso["counts"]


@pytest.mark.parametrize("strategy", ["serializable", "lock_team", "materialize"])
def test_correct_strategies_keep_every_team_within_its_limit(strategy: str, database_url: str,
                                                             tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", strategy], reports=tmp_path, database_url=database_url,
                     locustfile=LOCUSTFILE)
    assert run.code in (0, 4), run.output()
    assert all(c["valid"] is True for c in run.verdict["checks"]), run.verdict["checks"]
    assert run.check("budget.limit")["counts"]["applied_spends"] > 50
    assert run.check("budget.isolation")["counts"]["anomalies"]["G2-item"] == 0
    if run.code == 4:  # a missed gate is named in the summary
        missed = [g for g in run.verdict["gates"] if not g["met"]]
        assert missed and f"{missed[0]['scope']}.{missed[0]['gate']}" in run.proc.stdout


def test_ambiguous_commit_reported_as_fail_is_caught(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "lock_team", "--fault", "ambiguous_as_fail"], reports=tmp_path,
                     database_url=database_url, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    ledger = run.check("budget.ledger")
    assert ledger["valid"] is False and ledger["counts"]["phantom"] > 0
    assert "reported failed" in ledger["evidence"][0]["what"]


def test_limit_check_on_a_tiny_history() -> None:
    def row(seq: int, member: int, amount: int, seen: list[int], before: int) -> dict[str, object]:
        return {"seq": seq, "op_id": f"p-{seq}", "team": 1, "member": member, "amount": amount, "before": before,
                "after": before + amount, "seen": seen, "agent": f"p-a{member}"}

    final = {"isolation": {"level": "repeatable_read", "expect": ""}, "budget_teams": [{"id": 1, "limit": 100}],
             "budget_wallets": [{"team": 1, "member": 1, "spent": 60}, {"team": 1, "member": 2, "spent": 50}],
             "budget_spends": [row(1, 1, 60, [0, 0], 0), row(2, 2, 50, [0, 0], 0)]}
    res = {r.name: r for r in bc.check_all([], final)}
    limit = res["budget.limit"]
    assert limit.valid is False and [o["op_id"] for o in limit.evidence[0]["skew"][0]["ops"]] == ["p-1", "p-2"]
    assert res["budget.isolation"].counts["allowed"] == {"G2-item": 1}
