"""The credits checks on tiny hand-written histories: one anomaly each (Jepsen/Elle style).

Every history here is a handful of ``deduct`` records built by :func:`op`, which fills every
field of the operation-record contract; the final state is what
:func:`toolclash.tools.credits.snapshot` captures (``credit_accounts`` and ``credit_ledger``).
"""

from __future__ import annotations

from typing import Any

from checks import EVIDENCE_CAP, UNKNOWN, CheckResult, credits_fast, guarded, worst
from checks import credits as cc

RUN_ID = "t-credits"
NAMES = ("credits.conservation", "credits.no_negative", "credits.ledger", "credits.lost_updates")


def op(process: str, n: int, outcome: str, account: int, amount: int, *, reason: str | None = None,
       error_class: str | None = None, attempts: int = 1, strategy: str = "atomic",
       result: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``deduct`` operation record with every contract field filled."""
    invoke_ts = 1_700_000_000.0 + n
    return {
        "run_id": RUN_ID, "op_id": f"{process}-{n}", "process": process, "agent": f"{process}-agent",
        "tool": "deduct", "strategy": strategy, "args": {"account": account, "amount": amount},
        "invoke_ts": invoke_ts, "complete_ts": invoke_ts + 0.010, "outcome": outcome, "attempts": attempts,
        "error_class": error_class, "reason": reason, "result": result if result is not None else {},
    }


def row(seq: int, op_id: str, account: int, amount: int, before: int, after: int | None = None) -> dict[str, Any]:
    """One ``credit_ledger`` row (written in the same transaction as the balance)."""
    return {"seq": seq, "op_id": op_id, "account_id": account, "amount": amount, "balance_before": before,
            "balance_after": before - amount if after is None else after, "agent": op_id.rsplit("-", 1)[0] + "-agent"}


def account(acct_id: int, initial: int, balance: int) -> dict[str, Any]:
    return {"id": acct_id, "balance": balance, "initial_balance": initial, "version": 0}


def final(accounts: list[dict[str, Any]], ledger: list[dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"credit_accounts": accounts}
    if ledger is not None:
        out["credit_ledger"] = ledger
    return out


def check_all(ops: list[dict[str, Any]], state: Any, incomplete_processes: Any = ()) -> list[CheckResult]:
    """:func:`checks.credits.check_all`, and the same history through the columnar checks: same results."""
    slow = cc.check_all(ops, state, incomplete_processes)
    fast = credits_fast.check_all(ops, state, incomplete_processes)
    if fast is not None:
        assert [r.to_dict() for r in fast] == [r.to_dict() for r in slow]
    return slow


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    got = {r.name: r for r in results}
    assert set(got) == set(NAMES), got
    return got


def evidence_ops(res: CheckResult) -> list[str]:
    return [e["op_id"] for e in res.evidence if "op_id" in e]


# --- clean -----------------------------------------------------------------------------------


def test_clean_history_is_valid_everywhere() -> None:
    ops = [
        op("p1", 1, "ok", 1, 10),
        op("p1", 2, "ok", 1, 5),
        op("p2", 1, "fail", 2, 500, reason="insufficient-funds"),
        op("p2", 2, "ok", 2, 7),
    ]
    state = final([account(1, 100, 85), account(2, 100, 93)],
                  [row(1, "p1-1", 1, 10, 100), row(2, "p2-2", 2, 7, 100), row(3, "p1-2", 1, 5, 90)])
    res = by_name(check_all(ops, state))
    assert {n: r.valid for n, r in res.items()} == dict.fromkeys(NAMES, True)
    assert res["credits.ledger"].counts["missing"] == 0
    assert res["credits.ledger"].counts["phantom"] == 0
    assert res["credits.lost_updates"].counts == {"applied_deductions": 3, "lost_updates": 0, "lost_credits": 0,
                                                  "accounts_with_broken_chain": []}
    assert all(r.evidence == [] and r.evidence_total == 0 for r in res.values())


def test_other_tools_in_the_history_are_ignored() -> None:
    other = {**op("p1", 2, "ok", 1, 999), "tool": "update_config"}
    state = final([account(1, 100, 90)], [row(1, "p1-1", 1, 10, 100)])
    res = by_name(check_all([op("p1", 1, "ok", 1, 10), other], state))
    assert worst(r.valid for r in res.values()) is True
    assert res["credits.ledger"].counts["ops"] == 1


# --- missing and phantom effects -------------------------------------------------------------


def test_ok_op_without_its_effect_is_missing() -> None:
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 2, "ok", 1, 5)]
    # p1-2 was acknowledged, but neither its ledger row nor its deduction is there.
    state = final([account(1, 100, 90)], [row(1, "p1-1", 1, 10, 100)])
    res = by_name(check_all(ops, state))
    ledger = res["credits.ledger"]
    assert ledger.valid is False
    assert ledger.counts["missing"] == 1
    assert evidence_ops(ledger) == ["p1-2"]
    conservation = res["credits.conservation"]
    assert conservation.valid is False
    assert conservation.counts["mismatched"] == 1
    (ev,) = conservation.evidence
    assert (ev["account"], ev["expected"], ev["final"], ev["difference"]) == (1, 85, 90, 5)
    assert res["credits.no_negative"].valid is True


def test_ledger_row_of_a_failed_op_is_a_phantom() -> None:
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 2, "fail", 1, 5, reason="commit-timeout", error_class="timeout")]
    state = final([account(1, 100, 85)], [row(1, "p1-1", 1, 10, 100), row(2, "p1-2", 1, 5, 90)])
    res = by_name(check_all(ops, state))
    ledger = res["credits.ledger"]
    assert ledger.valid is False
    assert ledger.counts["phantom"] == 1
    assert evidence_ops(ledger) == ["p1-2"]
    assert "commit-timeout" in ledger.evidence[0]["what"]
    # the balance went down by an effect the history says never happened
    assert res["credits.conservation"].valid is False


def test_ledger_row_of_an_op_nobody_recorded_is_a_phantom() -> None:
    ops = [op("p1", 1, "ok", 1, 10)]
    state = final([account(1, 100, 87)], [row(1, "p1-1", 1, 10, 100), row(2, "p9-4", 1, 3, 90)])
    ledger = cc.ledger_matches_history(cc.CreditsView(ops, state))
    assert ledger.valid is False
    assert ledger.counts["phantom"] == 1
    assert evidence_ops(ledger) == ["p9-4"]
    assert ledger.evidence[0]["ledger_seq"] == 2


def test_ledger_row_with_other_arguments_than_the_call_is_a_mismatch() -> None:
    ops = [op("p1", 1, "ok", 1, 10)]
    state = final([account(1, 100, 70)], [row(1, "p1-1", 1, 30, 100)])
    ledger = cc.ledger_matches_history(cc.CreditsView(ops, state))
    assert ledger.valid is False
    assert ledger.counts["mismatch"] == 1
    assert evidence_ops(ledger) == ["p1-1"]


# --- in-doubt operations ---------------------------------------------------------------------


def test_unknown_op_with_a_ledger_row_resolves_as_applied() -> None:
    ops = [op("p1", 1, "ok", 1, 10),
           op("p1", 2, "unknown", 1, 4, reason="connection-lost-during-commit", error_class="OperationalError")]
    state = final([account(1, 100, 86)], [row(1, "p1-1", 1, 10, 100), row(2, "p1-2", 1, 4, 90)])
    res = by_name(check_all(ops, state))
    assert {n: r.valid for n, r in res.items()} == dict.fromkeys(NAMES, True)
    assert res["credits.ledger"].counts["unknown_applied"] == 1
    assert res["credits.ledger"].counts["unknown_not_applied"] == 0


def test_unknown_op_without_a_ledger_row_resolves_as_not_applied() -> None:
    ops = [op("p1", 1, "ok", 1, 10),
           op("p1", 2, "unknown", 1, 4, reason="interrupted-during-statement", error_class="interrupted")]
    state = final([account(1, 100, 90)], [row(1, "p1-1", 1, 10, 100)])
    res = by_name(check_all(ops, state))
    assert {n: r.valid for n, r in res.items()} == dict.fromkeys(NAMES, True)
    assert res["credits.ledger"].counts["unknown_applied"] == 0
    assert res["credits.ledger"].counts["unknown_not_applied"] == 1


def test_unresolvable_unknown_op_makes_conservation_unknown() -> None:
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 2, "unknown", 1, 7, reason="connection-lost-during-commit")]
    state = final([account(1, 100, 83)], ledger=None)  # no ledger: nothing tells whether p1-2 applied
    res = by_name(check_all(ops, state))
    conservation = res["credits.conservation"]
    assert conservation.valid == UNKNOWN
    assert conservation.counts == {"accounts": 1, "mismatched": 0, "explainable_by_unknown": 1, "missing_accounts": 0,
                                   "accounts_seeded": None}
    assert conservation.evidence[0]["explained_by_unknown_ops"] == ["p1-2"]
    assert conservation.evidence[0]["difference"] == 7
    assert res["credits.ledger"].valid == UNKNOWN
    assert res["credits.lost_updates"].valid == UNKNOWN
    assert res["credits.no_negative"].valid is True


def test_unknown_op_that_did_not_apply_leaves_conservation_true_without_ledger() -> None:
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 2, "unknown", 1, 7, reason="connection-lost-during-commit")]
    conservation = cc.conservation(cc.CreditsView(ops, final([account(1, 100, 90)], ledger=None)))
    assert conservation.valid is True


def test_difference_no_subset_of_unknown_amounts_makes_is_an_anomaly() -> None:
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 2, "unknown", 1, 7, reason="connection-lost-during-commit")]
    conservation = cc.conservation(cc.CreditsView(ops, final([account(1, 100, 86)], ledger=None)))
    assert conservation.valid is False
    assert conservation.counts["mismatched"] == 1
    assert conservation.evidence[0]["difference"] == -4


def test_subset_of_several_unknown_amounts() -> None:
    ops = [op("p1", 1, "unknown", 1, 7), op("p1", 2, "unknown", 1, 3), op("p2", 1, "unknown", 1, 5)]
    # 100 - 12 (7 + 5) is reachable; 100 - 11 is not (subsets: 0 3 5 7 8 10 12 15)
    reachable = cc.conservation(cc.CreditsView(ops, final([account(1, 100, 88)], ledger=None)))
    assert reachable.valid == UNKNOWN
    assert sorted(reachable.evidence[0]["explained_by_unknown_ops"]) == ["p1-1", "p1-2", "p2-1"]
    unreachable = cc.conservation(cc.CreditsView(ops, final([account(1, 100, 89)], ledger=None)))
    assert unreachable.valid is False


# --- negative balance ------------------------------------------------------------------------


def test_negative_balance() -> None:
    ops = [op("p1", 1, "ok", 1, 10)]
    state = final([account(1, 5, -5)], [row(1, "p1-1", 1, 10, 5)])
    res = by_name(check_all(ops, state))
    no_negative = res["credits.no_negative"]
    assert no_negative.valid is False
    assert no_negative.counts == {"accounts": 1, "negative_accounts": 1, "deductions_below_zero": 1}
    assert no_negative.evidence[0] == {"account": 1, "final_balance": -5}
    assert evidence_ops(no_negative) == ["p1-1"]
    # one anomaly: the books balance, the ledger matches, nothing was overwritten
    assert [n for n, r in res.items() if r.valid is not True] == ["credits.no_negative"]


# --- lost update -----------------------------------------------------------------------------


def test_lost_update_names_exactly_the_overwritten_op() -> None:
    # p1-1 and p2-1 both read 100; p1-1 committed first (seq 1) and wrote 90, p2-1 then wrote 95 over it.
    ops = [op("p1", 1, "ok", 1, 10, strategy="naive"), op("p2", 1, "ok", 1, 5, strategy="naive")]
    state = final([account(1, 100, 95)], [row(1, "p1-1", 1, 10, 100), row(2, "p2-1", 1, 5, 100)])
    res = by_name(check_all(ops, state))
    lost = res["credits.lost_updates"]
    assert lost.valid is False
    assert evidence_ops(lost) == ["p1-1"]
    assert lost.counts["lost_updates"] == 1
    assert lost.counts["lost_credits"] == 10
    ev = lost.evidence[0]
    assert (ev["overwritten_by"], ev["which_had_read"]) == ("p2-1", 100)
    assert (ev["read_balance"], ev["wrote_balance"]) == (100, 90)
    conservation = res["credits.conservation"]
    assert conservation.valid is False
    assert conservation.evidence[0]["difference"] == lost.counts["lost_credits"]
    assert res["credits.ledger"].valid is True
    assert res["credits.no_negative"].valid is True


def test_lost_update_inside_a_longer_chain() -> None:
    # a: 100→90, b: 90→80, c read 90 (a's write) → 85 overwriting b, d: 85→84.
    ops = [op("p1", 1, "ok", 1, 10), op("p2", 1, "ok", 1, 10), op("p3", 1, "ok", 1, 5), op("p1", 2, "ok", 1, 1)]
    ledger = [row(1, "p1-1", 1, 10, 100), row(2, "p2-1", 1, 10, 90), row(3, "p3-1", 1, 5, 90),
              row(4, "p1-2", 1, 1, 85)]
    res = by_name(check_all(ops, final([account(1, 100, 84)], ledger)))
    lost = res["credits.lost_updates"]
    assert evidence_ops(lost) == ["p2-1"]
    assert lost.counts["lost_credits"] == 10
    assert lost.evidence[0]["overwritten_by"] == "p3-1"
    assert res["credits.conservation"].evidence[0]["difference"] == 10


def test_chain_that_does_not_start_at_the_initial_balance_is_broken() -> None:
    ops = [op("p1", 1, "ok", 1, 10)]
    lost = cc.lost_updates(cc.CreditsView(ops, final([account(1, 100, 40)], [row(1, "p1-1", 1, 10, 50)])))
    assert lost.valid is False
    assert lost.counts["accounts_with_broken_chain"] == [1]
    assert lost.counts["lost_updates"] == 0


# --- incomplete history, duplicates, crashes -------------------------------------------------


def test_ledger_row_from_an_incomplete_process_is_unknown_not_false() -> None:
    # p2's history was cut short (lost worker): its applied deduction p2-1 is in the ledger only.
    ops = [op("p1", 1, "ok", 1, 10)]
    state = final([account(1, 100, 85)], [row(1, "p1-1", 1, 10, 100), row(2, "p2-1", 1, 5, 90)])
    ledger = cc.ledger_matches_history(cc.CreditsView(ops, state, incomplete_processes=["p2"]))
    assert ledger.valid == UNKNOWN
    assert ledger.counts["rows_from_incomplete_history"] == 1
    assert ledger.counts["phantom"] == 0
    # the same row with p2's history known complete is a phantom
    assert cc.ledger_matches_history(cc.CreditsView(ops, state)).valid is False


def test_lost_worker_makes_no_credits_check_false() -> None:
    """Data is right; only p2's history is missing. The verdict must be unknown (exit 3), not false (exit 1)."""
    ops = [op("p1", 1, "ok", 1, 10)]
    state = final([account(1, 100, 85)], [row(1, "p1-1", 1, 10, 100), row(2, "p2-1", 1, 5, 90)])
    res = by_name(check_all(ops, state, incomplete_processes={"p2": "history not closed"}))
    assert {n: r.valid for n, r in res.items() if r.valid is False} == {}
    assert worst(r.valid for r in res.values()) == UNKNOWN


def test_duplicate_op_id_in_history() -> None:
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 1, "ok", 1, 10)]
    state = final([account(1, 100, 90)], [row(1, "p1-1", 1, 10, 100)])
    res = by_name(check_all(ops, state))
    ledger = res["credits.ledger"]
    assert ledger.valid is False
    assert ledger.counts["duplicate_op_ids"] == 1
    assert ledger.evidence == [{"op_id": "p1-1", "what": "op id recorded twice in the history"}]
    assert worst(r.valid for r in res.values()) is False


def test_evidence_is_capped_with_the_total_kept() -> None:
    n = EVIDENCE_CAP + 5
    ops = [op("p1", i, "ok", 1, 1) for i in range(1, n + 1)]
    ledger = cc.ledger_matches_history(cc.CreditsView(ops, final([account(1, 100, 100)], [])))
    assert ledger.valid is False
    assert ledger.counts["missing"] == n
    assert len(ledger.evidence) == EVIDENCE_CAP
    assert ledger.evidence_total == n
    assert evidence_ops(ledger) == [f"p1-{i}" for i in range(1, EVIDENCE_CAP + 1)]


def test_a_crashing_check_is_unknown_and_the_others_still_judge() -> None:
    ops = [op("p1", 1, "ok", 1, 10)]
    malformed = {"credit_accounts": [{"id": 1, "initial_balance": 100}],  # no balance column
                 "credit_ledger": [row(1, "p1-1", 1, 10, 100)]}
    res = by_name(check_all(ops, malformed))
    assert set(res) == set(NAMES)
    crashed = res["credits.conservation"]
    assert crashed.valid == UNKNOWN
    assert crashed.evidence_total == 1
    assert crashed.evidence[0]["error"].startswith("KeyError")
    assert res["credits.ledger"].valid is True  # needs no balance: judged despite its neighbour's crash

    one = guarded("credits.conservation", lambda: cc.conservation(cc.CreditsView(ops, malformed)))
    assert one is not None and one.valid == UNKNOWN


def test_a_final_state_that_cannot_be_indexed_makes_every_check_unknown() -> None:
    not_a_mapping: Any = ["credit_accounts"]
    res = by_name(check_all([op("p1", 1, "ok", 1, 10)], not_a_mapping))
    assert set(res) == set(NAMES)
    assert all(r.valid == UNKNOWN for r in res.values())
    assert res["credits.lost_updates"].evidence[0]["error"].startswith("AttributeError")


def test_worst_verdict_wins() -> None:
    assert worst([True, True]) is True
    assert worst([True, UNKNOWN]) == UNKNOWN
    assert worst([UNKNOWN, False, True]) is False
    assert worst([True, None]) == UNKNOWN  # anything not exactly True is not a pass
    assert worst([]) is True


def test_an_account_seeded_at_reset_but_absent_from_the_final_state_is_an_anomaly() -> None:
    """Before: conservation only looked at the accounts the final state holds, so a vanished account passed."""
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 2, "ok", 2, 5)]
    state = {**final([account(1, 100, 90)], [row(1, "p1-1", 1, 10, 100)]), "accounts_seeded": 3}
    conservation = cc.conservation(cc.CreditsView(ops, state))
    assert conservation.valid is False
    assert {e["account"] for e in conservation.evidence if "absent" in e.get("what", "")} == {2, 3}
    assert conservation.counts["missing_accounts"] == 2
