"""The queue checks on tiny hand-written histories: one anomaly each (Jepsen/Elle style).

Each history is a few ``submit`` records built by :func:`sub`; the final state is what
:func:`toolclash.tools.queue.snapshot` captures: PostgreSQL ``effects``, Redis ``jobs`` (times in µs on
the Redis clock), and the ``meta`` noted at reset. Capacity 3, 2 admissions per agent per second,
100 ms inversion tolerance.
"""

from __future__ import annotations

from typing import Any

from checks import UNKNOWN, CheckResult, worst
from checks import queue as cq

T0 = 1_700_000_000_000_000
MS = 1000
NAMES = ("queue.accounting", "queue.duplicates", "queue.capacity", "queue.priority", "queue.rate_limit")
CONFIG = {"queue_capacity": 3, "queue_rate_per_agent": 2, "queue_rate_global": 100, "queue_rate_window_s": 1.0,
          "queue_inversion_tolerance_ms": 100.0, "gate_critical_wait_p95_ms": 1000.0}


def sub(n: int, outcome: str, *, agent: str = "p1-a1", prio: int = 1, at_ms: int = 0, occupancy: int = 1,
        reason: str | None = None) -> dict[str, Any]:
    """One ``submit`` record; an ok one carries what the admission script replied."""
    ts = (T0 + at_ms * MS) / 1e6
    result: dict[str, Any] = {}
    if outcome == "ok":
        result = {"job": f"p1-{n}", "seq": n, "admitted_us": T0 + at_ms * MS, "occupancy": occupancy}
    elif outcome == "fail":
        result = {"retry_after_ms": 100, "occupancy": occupancy}
    return {"run_id": "t", "op_id": f"p1-{n}", "process": "p1", "agent": agent, "tool": "submit", "strategy": "lua",
            "args": {"priority": prio, "try": 1}, "invoke_ts": ts, "complete_ts": ts + 0.001, "outcome": outcome,
            "attempts": 1, "error_class": None, "reason": reason, "result": result}


def job(agent: str = "p1-a1", prio: int = 1, admitted_ms: int = 0, claimed_ms: int | None = 10,
        done_ms: int | None = 60, deliveries: int = 1, state: str = "d") -> list[Any]:
    def us(ms: int | None) -> int:
        return 0 if ms is None else T0 + ms * MS

    return [agent, prio, us(admitted_ms), us(claimed_ms), us(done_ms), deliveries, state]


def final(jobs: dict[str, list[Any]] | None, effects: list[str], *, hwm: int = 1, restarted: bool = False,
          lost: bool = False, **config: Any) -> dict[str, Any]:
    rows = [[i, f"{j}:{i}", j, 1, 1, "c1"] for i, j in enumerate(effects, start=1)]
    meta = {"marker": "run-t", "redis_run_id": "srv-1", "config": {**CONFIG, **config}}
    out: dict[str, Any] = {"meta": meta, "effects": rows, "redis": None}
    if jobs is None:
        out["redis_error"] = "Connection refused"
    else:
        out["redis"] = {"marker": None if lost else "run-t", "server_run_id": "srv-2" if restarted else "srv-1",
                        "hwm": hwm, "ready": 0, "inflight": 0, "jobs": jobs, "drain": None,
                        "ready_jobs": [j for j, r in jobs.items() if r[6] == "q"],
                        "inflight_jobs": [j for j, r in jobs.items() if r[6] == "f"]}
    return out


def run(ops: list[dict[str, Any]], state: dict[str, Any], incomplete: tuple[str, ...] = ()) -> dict[str, CheckResult]:
    got = {r.name: r for r in cq.check_all(ops, state, incomplete)}
    assert set(got) == set(NAMES), got
    return got


def test_clean_history_is_valid_everywhere() -> None:
    ops = [sub(1, "ok", prio=0, at_ms=0), sub(2, "ok", at_ms=5, occupancy=2),
           sub(3, "fail", at_ms=6, reason="rate-limited-agent"), sub(4, "ok", agent="p1-a2", prio=2, at_ms=7)]
    jobs = {"p1-1": job(prio=0, admitted_ms=0, claimed_ms=1), "p1-2": job(admitted_ms=5, claimed_ms=20),
            "p1-4": job(agent="p1-a2", prio=2, admitted_ms=7, claimed_ms=30)}
    res = run(ops, final(jobs, ["p1-1", "p1-2", "p1-4"], hwm=3))
    assert {n: r.valid for n, r in res.items()} == dict.fromkeys(NAMES, True)
    assert res["queue.accounting"].counts["executed"] == 3 and res["queue.accounting"].counts["rejected"] == 1


def test_acknowledged_job_neither_executed_nor_queued_is_lost() -> None:
    res = run([sub(1, "ok"), sub(2, "ok")], final({"p1-1": job()}, ["p1-1"]))
    acc = res["queue.accounting"]
    assert acc.valid is False and acc.counts["lost"] == 1
    assert acc.evidence[0]["job"] == "p1-2" and "lost" in acc.evidence[0]["what"]


def test_job_still_queued_after_the_drain_is_not_lost_but_never_valid() -> None:
    """Not lost (someone may still run it), but not shown executed either: a consumer that never executes would
    leave exactly this, so the verdict is unknown, naming the job."""
    jobs = {"p1-1": job(claimed_ms=None, done_ms=None, deliveries=0, state="q")}
    acc = run([sub(1, "ok")], final(jobs, []))["queue.accounting"]
    assert acc.valid == UNKNOWN and acc.counts["queued_after_drain"] == 1 and acc.counts.get("lost", 0) == 0
    assert acc.evidence[0]["job"] == "p1-1" and "never executed" in acc.evidence[0]["what"]


def test_job_claimed_without_a_lease_and_never_executed_is_lost() -> None:
    state = final({"p1-1": job(done_ms=None, state="f")}, [])
    state["redis"]["inflight_jobs"] = []  # claimed, but no lease holds it: nobody will ever redeliver it
    acc = run([sub(1, "ok")], state)["queue.accounting"]
    assert acc.valid is False and acc.counts["lost"] == 1 and "neither queued nor leased" in acc.evidence[0]["what"]


def test_rejected_submission_that_was_executed_is_a_phantom() -> None:
    res = run([sub(1, "fail", reason="queue-full")], final({"p1-1": job()}, ["p1-1"]))
    acc = res["queue.accounting"]
    assert acc.valid is False and acc.counts["phantom"] == 1 and "queue-full" in acc.evidence[0]["what"]


def test_in_doubt_submission_is_resolved_from_the_final_state() -> None:
    ops = [sub(1, "unknown", reason="redis-connection-lost"), sub(2, "unknown", reason="redis-connection-lost")]
    res = run(ops, final({"p1-1": job()}, ["p1-1"]))
    acc = res["queue.accounting"]
    assert acc.valid is True and acc.counts["unknown_admitted"] == 1 and acc.counts["unknown_not_admitted"] == 1


def test_a_redelivered_job_applied_twice_is_a_duplicate() -> None:
    res = run([sub(1, "ok")], final({"p1-1": job(deliveries=2)}, ["p1-1", "p1-1"]))
    dup = res["queue.duplicates"]
    assert dup.valid is False and dup.counts["extra_effects"] == 1
    assert dup.evidence[0]["job"] == "p1-1" and len(dup.evidence[0]["applied"]) == 2
    assert res["queue.accounting"].valid is True  # executed (twice): not lost


def test_admission_beyond_capacity_is_named_from_the_reply_the_mark_and_the_replay() -> None:
    ops = [sub(i, "ok", at_ms=i, occupancy=i) for i in range(1, 5)]
    jobs = {f"p1-{i}": job(agent=f"p1-a{i}", admitted_ms=i, claimed_ms=10, done_ms=50) for i in range(1, 5)}
    res = run(ops, final(jobs, list(jobs), hwm=4))
    cap = res["queue.capacity"]
    assert cap.valid is False
    sources = {e["source"] for e in cap.evidence}
    assert sources == {"admission reply", "in-Redis high-water mark", "job records replayed"}
    assert cap.evidence[0]["job"] == "p1-4" and cap.counts["replayed_peak"] == 4


def test_an_ack_and_an_admission_in_the_same_microsecond_get_the_benefit_of_the_doubt() -> None:
    jobs = {"p1-1": job(admitted_ms=0, done_ms=5), "p1-2": job(admitted_ms=1, done_ms=50),
            "p1-3": job(admitted_ms=2, done_ms=50), "p1-4": job(agent="p1-a2", admitted_ms=5, done_ms=50)}
    ops = [sub(i, "ok", agent="p1-a2" if i == 4 else "p1-a1", at_ms=j[2] // MS - T0 // MS, occupancy=3)
           for i, j in enumerate(jobs.values(), start=1)]
    res = run(ops, final(jobs, list(jobs), hwm=3))
    assert res["queue.capacity"].valid is True and res["queue.capacity"].counts["replayed_peak"] == 3


def test_bulk_started_while_critical_waited_is_an_inversion() -> None:
    jobs = {"p1-1": job(prio=2, admitted_ms=0, claimed_ms=300), "p1-2": job(prio=0, admitted_ms=100, claimed_ms=400)}
    res = run([sub(1, "ok", prio=2, at_ms=0), sub(2, "ok", prio=0, at_ms=100)], final(jobs, list(jobs)))
    pr = res["queue.priority"]
    assert pr.valid is False and pr.counts["inversions"] == 1
    ev = pr.evidence[0]
    assert (ev["started"], ev["priority"], ev["while_waiting"], ev["its_priority"]) == ("p1-1", "bulk", "p1-2",
                                                                                      "critical")
    assert ev["waited_ms"] == 200


def test_inversion_within_the_tolerance_passes() -> None:
    jobs = {"p1-1": job(prio=2, admitted_ms=0, claimed_ms=150), "p1-2": job(prio=0, admitted_ms=100, claimed_ms=160)}
    res = run([sub(1, "ok", prio=2), sub(2, "ok", prio=0, at_ms=100)], final(jobs, list(jobs)))
    assert res["queue.priority"].valid is True


def test_three_admissions_of_one_agent_within_a_second_break_its_limit() -> None:
    times = (0, 600, 1100, 1500)  # 600, 1100, 1500 fall in one window of 1 s
    ops = [sub(i, "ok", at_ms=t) for i, t in enumerate(times, start=1)]
    jobs = {f"p1-{i}": job(admitted_ms=t, claimed_ms=t + 1, done_ms=t + 2) for i, t in enumerate(times, start=1)}
    res = run(ops, final(jobs, list(jobs)))
    rl = res["queue.rate_limit"]
    assert rl.valid is False and rl.counts["agent_violations"] == 1
    assert rl.evidence[0]["who"] == "p1-a1" and rl.evidence[0]["jobs"] == ["p1-2", "p1-3", "p1-4"]


def test_a_window_over_the_limit_after_redis_lost_its_data_is_unknown() -> None:
    times = (0, 600, 900)  # only the history knows them: the limiter's state went with the data
    ops = [sub(i, "ok", at_ms=t) for i, t in enumerate(times, start=1)]
    rl = run(ops, final({}, ["p1-1", "p1-2", "p1-3"], lost=True))["queue.rate_limit"]
    assert rl.valid == UNKNOWN and rl.counts["agent_violations"] == 1 and rl.evidence[0]["who"] == "p1-a1"


def test_admissions_exactly_one_window_apart_are_within_the_limit() -> None:
    times = (0, 500, 1000, 1500)
    ops = [sub(i, "ok", at_ms=t) for i, t in enumerate(times, start=1)]
    jobs = {f"p1-{i}": job(admitted_ms=t, claimed_ms=t + 1, done_ms=t + 2) for i, t in enumerate(times, start=1)}
    assert run(ops, final(jobs, list(jobs)))["queue.rate_limit"].valid is True


def test_after_a_restart_that_kept_the_data_the_run_is_still_judged() -> None:
    res = run([sub(1, "ok")], final({"p1-1": job()}, ["p1-1"], restarted=True))
    assert res["queue.accounting"].valid is True and "restarted" in res["queue.accounting"].summary


def test_a_job_missing_after_a_restart_is_unknown_not_lost() -> None:
    res = run([sub(1, "ok"), sub(2, "ok")], final({"p1-1": job()}, ["p1-1"], restarted=True))
    acc = res["queue.accounting"]
    assert acc.valid == UNKNOWN and acc.counts["missing_after_restart"] == 1 and acc.counts.get("lost", 0) == 0


def test_redis_data_lost_makes_redis_side_checks_unknown_but_pg_side_still_judged() -> None:
    ops = [sub(1, "ok"), sub(2, "ok", occupancy=2)]
    res = run(ops, final({}, ["p1-1", "p1-1"], lost=True))
    assert res["queue.accounting"].valid == UNKNOWN
    assert res["queue.duplicates"].valid is False  # PostgreSQL's side is durable: still decided
    assert res["queue.priority"].valid == UNKNOWN and res["queue.capacity"].valid == UNKNOWN


def test_redis_not_captured_is_unknown_never_true() -> None:
    res = run([sub(1, "ok")], final(None, []))
    assert res["queue.accounting"].valid == UNKNOWN and "Connection refused" in res["queue.accounting"].summary
    assert worst(r.valid for r in res.values()) == UNKNOWN


def test_job_from_a_process_whose_history_is_incomplete_is_unknown() -> None:
    jobs = {"p1-1": job(), "p2-7": job(agent="p2-a1")}
    res = run([sub(1, "ok")], final(jobs, ["p1-1", "p2-7"]), incomplete=("p2",))
    assert res["queue.accounting"].valid == UNKNOWN
    res = run([sub(1, "ok")], final(jobs, ["p1-1", "p2-7"]))
    assert res["queue.accounting"].valid is False and res["queue.accounting"].counts["phantom"] == 1


def test_figures_and_the_critical_wait_gate() -> None:
    jobs = {"p1-1": job(prio=0, admitted_ms=0, claimed_ms=10, done_ms=1000),
            "p1-2": job(prio=2, admitted_ms=0, claimed_ms=900, done_ms=950, deliveries=2)}
    ops = [sub(1, "ok", prio=0), sub(2, "ok", prio=2), sub(3, "fail", reason="queue-full")]
    state = final(jobs, list(jobs))
    fig = cq.figures(ops, state)
    assert fig["queue_wait_by_priority"]["critical"]["p95_ms"] == 10
    assert fig["queue_wait_by_priority"]["bulk"]["p95_ms"] == 900
    assert fig["queue_rejections"] == {"queue-full": 1} and fig["queue_redeliveries"] == 1
    assert fig["queue_peak_depth_by_priority"] == {"critical": 1, "normal": 0, "bulk": 1}
    assert fig["queue_peak_inflight"] == 2  # p1-1 in flight 10..1000 ms, p1-2 900..950 ms
    (gate,) = cq.gates(ops, state, {"gate_critical_wait_p95_ms": 5.0})
    assert gate["met"] is False and gate["figure"] == 10


def test_missing_queue_metadata_is_never_replaced_by_the_declared_defaults() -> None:
    """Without the limits the reset recorded, capacity, priority and rate limits cannot be judged: unknown, naming
    what is missing (a default capacity assumed in their place could pass an overfilled queue)."""
    jobs = {f"p1-{i}": job(claimed_ms=None, done_ms=None, deliveries=0, state="q") for i in range(1, 4)}
    out = final(jobs, [], hwm=3)
    out["meta"] = {**out["meta"], "config": {}}
    res = run([sub(i, "ok") for i in range(1, 4)], out)
    for name in ("queue.capacity", "queue.priority", "queue.rate_limit"):
        assert res[name].valid == UNKNOWN and res[name].summary.startswith("not checked: needs"), res[name]
        assert res[name].counts["missing_limits"], res[name]


def test_a_stage_figures_only_its_own_jobs() -> None:
    """A ramp stage's figures are given the stage's operations and the whole run's final state: the job figures
    (waits by priority, redeliveries) are those of the jobs submitted in the stage, not the run's again."""
    jobs = {"p1-1": job(prio=0, admitted_ms=0, claimed_ms=10, done_ms=20),
            "p1-2": job(prio=0, admitted_ms=30, claimed_ms=1530, done_ms=1570, deliveries=2)}
    state = final(jobs, list(jobs))
    first, second = [sub(1, "ok", prio=0)], [sub(2, "ok", prio=0)]
    assert cq.figures(first, state)["queue_wait_by_priority"]["critical"] == {"jobs": 1, "p50_ms": 10, "p95_ms": 10}
    assert cq.figures(first, state)["queue_redeliveries"] == 0
    assert cq.figures(second, state)["queue_wait_by_priority"]["critical"]["p95_ms"] == 1500
    assert cq.figures(second, state)["queue_redeliveries"] == 1
    assert cq.figures(first + second, state)["queue_wait_by_priority"]["critical"]["jobs"] == 2
