"""The crossservice checks on tiny hand-written histories: one anomaly each, and the clean cases."""

from __future__ import annotations

from typing import Any

from checks import UNKNOWN
from checks.crossservice import check_all, figures


def op(op_id: str, outcome: str = "ok", mode: str = "2pc", reason: str | None = None) -> dict[str, Any]:
    return {"op_id": op_id, "tool": "grant_tool_access", "strategy": mode, "outcome": outcome, "reason": reason,
            "agent": "p0-a1", "args": {"agent": "agent-1", "tool": "browser", "cost": 5}}


def final(*, debits: tuple[str, ...] = (), grants: tuple[str, ...] = (), refunds: tuple[str, ...] = (),
          revoked: tuple[str, ...] = (), decisions: dict[str, str] | None = None, sagas: dict[str, str] | None = None,
          usage: tuple[str, ...] | None = None, refund_events: tuple[str, ...] | None = None,
          prepared_main: tuple[str, ...] = (), prepared_auth: tuple[str, ...] = (), pending: tuple[str, ...] = (),
          balance: int | None = None) -> dict[str, Any]:
    """A consistent final state by default: events mirror debits and refunds, the balance matches."""
    usage = debits if usage is None else usage
    refund_events = refunds if refund_events is None else refund_events
    spent = 5 * len(debits) - 5 * len(refunds)
    return {
        "accounts": [{"agent": "agent-1", "balance": 100 - spent if balance is None else balance,
                      "initial_balance": 100}],
        "debits": [{"op_id": o, "agent": "agent-1", "tool": "browser", "cost": 5, "mode": "2pc"} for o in debits],
        "refunds": [{"op_id": o, "agent": "agent-1", "cost": 5} for o in refunds],
        "sagas": [{"op_id": o, "state": s, "updated_by": "agent"} for o, s in (sagas or {}).items()],
        "decisions": [{"op_id": o, "decision": d, "decided_by": "coordinator"} for o, d in (decisions or {}).items()],
        "outbox": ([{"event_id": f"{o}:usage", "op_id": o, "kind": "usage", "agent": "agent-1", "cost": 5,
                     "created_at": 1.0, "relayed_at": 1.2, "deliveries": 1} for o in debits if o not in pending]
                   + [{"event_id": f"{o}:usage", "op_id": o, "kind": "usage", "agent": "agent-1", "cost": 5,
                       "created_at": 1.0, "relayed_at": None, "deliveries": 0} for o in pending]),
        "prepared_main": [{"gid": f"xs:{o}:m", "prepared": 1.0} for o in prepared_main],
        "grants": [{"op_id": o, "agent": "agent-1", "tool": "browser", "granted": True, "revoked": o in revoked}
                   for o in grants],
        "prepared_auth": [{"gid": f"xs:{o}:a", "prepared": 1.0} for o in prepared_auth],
        "clickhouse_events": ([{"event_id": f"{o}:usage:{i}", "op_id": o, "kind": "usage", "agent": "agent-1",
                                "cost": 5} for i, o in enumerate(usage)]
                              + [{"event_id": f"{o}:refund", "op_id": o, "kind": "refund", "agent": "agent-1",
                                  "cost": 5} for o in refund_events]),
        "clickhouse_raw_rows": len(usage) + len(refund_events),
    }


def by_name(ops: list[dict[str, Any]], state: dict[str, Any], incomplete: tuple[str, ...] = ()) -> dict[str, Any]:
    return {r.name: r for r in check_all(ops, state, incomplete)}


def test_clean_2pc_and_saga_history_passes() -> None:
    ops = [op("p0-1"), op("p0-2", "fail"), op("p0-3", "unknown"), op("p0-4", "fail", "saga", "injected-fault"),
           op("p0-5", "ok", "saga")]
    state = final(debits=("p0-1", "p0-3", "p0-4", "p0-5"), grants=("p0-1", "p0-3", "p0-4", "p0-5"),
                  revoked=("p0-4",), refunds=("p0-4",), decisions={"p0-1": "commit", "p0-3": "commit", "p0-2": "abort"},
                  sagas={"p0-4": "compensated", "p0-5": "done"})
    results = by_name(ops, state)
    assert {name: r.valid for name, r in results.items()} == {
        "crossservice.atomic": True, "crossservice.prepared": True, "crossservice.credits": True,
        "crossservice.analytics": True}
    assert results["crossservice.atomic"].counts["unknown_committed"] == 1  # resolved by reading the stores
    assert figures(ops, state)["analytics_lag_p95_ms"] > 0


def test_debit_without_grant_names_the_op_and_main() -> None:
    r = by_name([op("p0-1", "fail", "saga")], final(debits=("p0-1",), sagas={"p0-1": "failed"}))["crossservice.atomic"]
    assert r.valid is False
    assert r.evidence[0]["op_id"] == "p0-1" and r.evidence[0]["store"] == "main"


def test_grant_without_debit_names_auth() -> None:
    r = by_name([op("p0-1", "unknown")], final(grants=("p0-1",)))["crossservice.atomic"]
    assert r.valid is False and r.evidence[0]["store"] == "auth"


def test_ok_but_nothing_committed_is_caught() -> None:
    r = by_name([op("p0-1")], final())["crossservice.atomic"]
    assert r.valid is False and "acknowledged (ok)" in r.evidence[0]["what"]


def test_fail_but_committed_is_caught() -> None:
    r = by_name([op("p0-1", "fail")], final(debits=("p0-1",), grants=("p0-1",), decisions={"p0-1": "commit"}))
    assert r["crossservice.atomic"].valid is False
    assert "reported fail" in r["crossservice.atomic"].evidence[0]["what"]


def test_commit_decision_with_missing_effects_is_caught() -> None:
    r = by_name([op("p0-1", "unknown")], final(decisions={"p0-1": "commit"}, prepared_main=("p0-1",)))
    assert r["crossservice.atomic"].valid is False
    assert r["crossservice.atomic"].evidence[0]["store"] == "main+auth"
    left = r["crossservice.prepared"]
    assert left.valid is False and left.evidence[0] == {
        "store": "main", "gid": "xs:p0-1:m", "op_id": "p0-1", "outcome": "unknown", "decision": "commit",
        "what": "prepared transaction left in doubt"}


def test_prepared_left_on_auth_is_caught() -> None:
    r = by_name([op("p0-1", "fail")], final(prepared_auth=("p0-1",)))["crossservice.prepared"]
    assert r.valid is False and r.evidence[0]["store"] == "auth" and r.counts == {"main": 0, "auth": 1}


def test_saga_state_disagreeing_with_the_stores_is_caught() -> None:
    r = by_name([op("p0-1", "ok", "saga")], final(debits=("p0-1",), grants=("p0-1",), sagas={"p0-1": "compensating"}))
    assert r["crossservice.atomic"].valid is False
    assert r["crossservice.atomic"].evidence[0]["store"] == "main (saga state)"


def test_unbalanced_account_is_caught() -> None:
    r = by_name([op("p0-1")], final(debits=("p0-1",), grants=("p0-1",), decisions={"p0-1": "commit"}, balance=100))
    credits = r["crossservice.credits"]
    assert credits.valid is False and credits.evidence[0]["expected"] == 95 and credits.evidence[0]["final"] == 100


def test_double_counted_usage_is_caught_with_agent_totals() -> None:
    r = by_name([op("p0-1")], final(debits=("p0-1",), grants=("p0-1",), decisions={"p0-1": "commit"},
                                    usage=("p0-1", "p0-1")))["crossservice.analytics"]
    assert r.valid is False
    assert r.evidence[0] == {"op_id": "p0-1", "store": "clickhouse", "usage_events": 2, "expected_usage": 1,
                             "refund_events": 0, "expected_refund": 0, "what": "counted more than once"}
    assert r.evidence[1]["clickhouse_total"] == 10 and r.evidence[1]["main_committed_total"] == 5


def test_missing_event_after_drain_is_caught_but_pending_outbox_is_unknown() -> None:
    ops = [op("p0-1")]
    base = {"debits": ("p0-1",), "grants": ("p0-1",), "decisions": {"p0-1": "commit"}, "usage": ()}
    drained = by_name(ops, final(**base))["crossservice.analytics"]  # type: ignore[arg-type]
    assert drained.valid is False and drained.evidence[0]["what"] == "missing"
    lagging = by_name(ops, final(**base, pending=("p0-1",)))["crossservice.analytics"]  # type: ignore[arg-type]
    assert lagging.valid == UNKNOWN and "did not drain" in lagging.summary


def test_event_of_an_operation_that_did_not_happen_is_caught() -> None:
    r = by_name([op("p0-1", "fail")], final(usage=("p0-1",)))["crossservice.analytics"]
    assert r.valid is False and "did not happen" in r.evidence[0]["what"]


def test_clickhouse_unreachable_at_capture_is_unknown() -> None:
    state = final()
    del state["clickhouse_events"]
    state["clickhouse_error"] = "Connection refused"
    r = by_name([], state)["crossservice.analytics"]
    assert r.valid == UNKNOWN and "Connection refused" in r.summary


def test_effects_from_an_incomplete_process_are_unknown_not_false() -> None:
    state = final(debits=("p1-7",), grants=("p1-7",), decisions={"p1-7": "commit"})
    assert by_name([], state, ("p1",))["crossservice.atomic"].valid == UNKNOWN
    assert by_name([], state)["crossservice.atomic"].valid is False
