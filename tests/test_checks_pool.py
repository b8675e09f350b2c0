"""The pool checks on tiny hand-written histories: one anomaly each (Jepsen/Elle style).

Operation records are ``analyze`` calls built by :func:`op`; the final state is what
:func:`toolclash.tools.pool.snapshot` captures (``facts_rows``, ``pool_states``, ``bouncer``).
"""

from __future__ import annotations

from typing import Any

from checks import UNKNOWN, CheckResult
from checks import pool as cp
from toolclash.scenario import REGISTRY

RUN_ID = "t-pool"
NAMES = ("pool.accounted", "pool.aggregates", "pool.client_idle", "pool.bouncer_idle")
T0 = 1_700_000_000.0


def op(n: int, outcome: str = "ok", *, process: str = "p1", agent: str = "p1-a1", lo: int = 1, hi: int = 100,
       reason: str | None = None, error_class: str | None = None, wait_ms: float = 0.1, at: float | None = None,
       rows: int | None = None, **result: Any) -> dict[str, Any]:
    """One ``analyze`` record with every contract field filled."""
    invoke_ts = T0 + n if at is None else T0 + at
    res: dict[str, Any] = {"wait_ms": wait_ms, "pool": "client", **result}
    if outcome == "ok":
        res.setdefault("rows", hi - lo + 1 if rows is None else rows)
        res.setdefault("query_ms", 500.0)
    return {"run_id": RUN_ID, "op_id": f"{process}-{n}", "process": process, "agent": agent, "tool": "analyze",
            "strategy": "client", "args": {"lo": lo, "hi": hi}, "invoke_ts": invoke_ts,
            "complete_ts": invoke_ts + wait_ms / 1000 + 0.5, "outcome": outcome, "attempts": 1,
            "error_class": error_class, "reason": reason, "result": res}


def state(process: str = "p1", *, in_use: int = 0, waiting: int = 0, holders: list[dict[str, Any]] | None = None,
          leaks: list[dict[str, Any]] | None = None, timeouts: int = 0) -> dict[str, Any]:
    """A process's ``pool_state`` record (written by its last agent to stop)."""
    return {"op_id": f"{process}-999", "process": process, "agent": "last-agent", "tool": "pool_state",
            "outcome": "ok", "result": {"kind": "client", "pool": "client", "size": 20, "in_use": in_use, "idle": 3,
                                        "waiting": waiting, "holders": holders or [], "leaks": leaks or [],
                                        "counters": {"pool_timeouts": timeouts}}}


def final(*states: dict[str, Any], pool: str = "client", bouncer: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"facts_rows": 1000, "pool": pool, "pool_states": list(states) or [state()]}
    if bouncer is not None:
        out["bouncer"] = bouncer
    return out


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    got = {r.name: r for r in results}
    assert set(got) == set(NAMES), got
    return got


def test_registered() -> None:
    assert REGISTRY["pool"].checks == "checks.pool"


def test_clean_history_is_valid_everywhere() -> None:
    ops = [op(1), op(2, "fail", reason="pool-timeout", error_class="PoolTimeout", wait_ms=5000.0),
           op(3, "fail", reason="cancelled", error_class="57014"),
           op(4, "unknown", reason="interrupted-during-statement", error_class="interrupted")]
    res = by_name(cp.check_all(ops, final(state(timeouts=1))))
    assert {n: r.valid for n, r in res.items()} == dict.fromkeys(NAMES, True)
    assert res["pool.accounted"].counts["pool-timeout"] == 1 and res["pool.accounted"].counts["cancelled"] == 1
    assert res["pool.accounted"].counts["interrupted"] == 1


def test_a_call_that_failed_otherwise_is_unaccounted() -> None:
    ops = [op(1), op(2, "fail", reason="connection-lost", error_class="08006", message="server closed")]
    res = by_name(cp.check_all(ops, final()))["pool.accounted"]
    assert res.valid is False and res.counts["unaccounted"] == 1
    assert res.evidence[0]["op_id"] == "p1-2" and res.evidence[0]["reason"] == "connection-lost"


def test_pool_timeout_count_must_match_the_pool() -> None:
    ops = [op(1, "fail", reason="pool-timeout", error_class="PoolTimeout", wait_ms=100.0)]
    res = by_name(cp.check_all(ops, final(state(timeouts=3))))["pool.accounted"]
    assert res.valid is False
    assert res.evidence[0]["pool_timeouts"] == 3 and res.evidence[0]["pool_timeout_calls"] == 1


def test_a_wrong_aggregate_is_named() -> None:
    ops = [op(1, lo=1, hi=100), op(2, lo=950, hi=1100, rows=151)]  # the table ends at 1000: 51 rows
    res = by_name(cp.check_all(ops, final()))["pool.aggregates"]
    assert res.valid is False and res.evidence[0] == {"op_id": "p1-2", "agent": "p1-a1", "window": [950, 1100],
                                                       "rows": 151, "expected": 51}


def test_a_connection_held_after_the_run_names_the_agent() -> None:
    holder = {"agent": "p1-a7", "op_id": "p1-3", "held_s": 12.5}
    res = by_name(cp.check_all([op(1)], final(state(in_use=1, holders=[holder], leaks=[
        {"pool": "client", "agent": "p1-a7", "op_id": "p1-3", "held_s": 5.1}]))))["pool.client_idle"]
    assert res.valid is False
    assert res.counts["leaked_agents"] == ["p1-a7"] and res.evidence_total == 1  # named once, not twice
    assert res.evidence[0]["agent"] == "p1-a7" and res.evidence[0]["op_id"] == "p1-3"
    assert "p1-a7" in res.summary


def test_a_leak_reported_during_the_run_is_caught_even_if_returned_later() -> None:
    leak = {"pool": "client", "agent": "p1-a2", "op_id": "p1-1", "held_s": 31.0}
    res = by_name(cp.check_all([op(1)], final(state(leaks=[leak]))))["pool.client_idle"]
    assert res.valid is False and res.evidence[0]["what"].startswith("held a connection longer")


def test_waiters_left_after_the_run_are_caught() -> None:
    res = by_name(cp.check_all([op(1)], final(state(waiting=2))))["pool.client_idle"]
    assert res.valid is False and res.evidence[0]["waiting"] == 2


def test_a_process_without_its_final_pool_state_is_unknown() -> None:
    ops = [op(1), op(2, process="p2", agent="p2-a1")]
    res = by_name(cp.check_all(ops, final(state("p1")), ["p2"]))["pool.client_idle"]
    assert res.valid == UNKNOWN and res.counts["missing_state"] == ["p2"]
    assert "incomplete history" in res.summary


def test_bouncer_waiting_clients_and_leaked_clients_are_caught() -> None:
    bouncer = {"pools": [{"database": "toolclash_tx", "cl_active": 1, "cl_waiting": 2, "sv_active": 1}],
               "clients": [{"database": "toolclash_tx", "state": "active", "application_name": f"tc:{RUN_ID}:p1-a9",
                            "connect_time": "2026-01-01 00:00:00"}]}
    res = by_name(cp.check_all([op(1)], final(pool="pgbouncer", bouncer=bouncer)))
    bi = res["pool.bouncer_idle"]
    assert bi.valid is False and bi.counts["cl_waiting"] == 2 and bi.counts["clients_of_run"] == 1
    assert any(e.get("agent") == "p1-a9" for e in bi.evidence) and "p1-a9" in bi.summary
    assert res["pool.client_idle"].valid is True  # the client pool was not used


def test_bouncer_state_missing_in_pgbouncer_mode_is_unknown() -> None:
    res = by_name(cp.check_all([op(1)], {"facts_rows": 1000, "pool": "pgbouncer"}))
    assert res["pool.bouncer_idle"].valid == UNKNOWN


def test_recovery_episodes_chain_overlapping_waits() -> None:
    ops = [op(1, at=0.0, wait_ms=0.5),
           op(2, at=1.0, wait_ms=300.0), op(3, at=1.1, wait_ms=400.0),  # 1.0 .. 1.5
           op(4, at=1.45, wait_ms=200.0),  # overlaps: the episode runs to 1.65
           op(5, at=3.0, wait_ms=50.0),  # a second, short episode
           op(6, at=4.0, wait_ms=5.0)]  # under 10 ms: not queued
    episodes = cp.recovery_episodes(ops)
    assert [(round(e["start"] - T0, 3), round(e["recovery_s"], 3), e["queued"]) for e in episodes] == [
        (1.0, 0.65, 3), (3.0, 0.05, 1)]
    fig = cp.figures(ops, final())
    assert fig["exhaustion_episodes"] == 2 and fig["queued_calls"] == 4
    assert abs(fig["recovery_max_s"] - 0.65) < 1e-6
    gate = cp.gates(ops, final(), {"gate_pool_recovery_s": 0.5})[0]
    assert gate["met"] is False and gate["gate"] == "recovery_s"
    assert cp.gates([op(1)], final(), {"gate_pool_recovery_s": 0.5})[0]["met"] is True
