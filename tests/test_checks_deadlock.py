"""The deadlock checks on tiny hand-written histories: one anomaly each."""

from __future__ import annotations

import math
from typing import Any

from checks import UNKNOWN
from checks import deadlock as cd
from toolclash.tools.deadlock import SCENARIO as DEADLOCK

T = 1000.0  # wall-clock origin of the hand-written histories
NAMES = ("deadlock.atomic_rounds", "deadlock.counters", "deadlock.no_open_transaction", "deadlock.victims",
         "deadlock.server_count")

LIMITS = {o.name: o.default for o in DEADLOCK.options}
"""The scenario's declared gate thresholds (a run's options.json holds them all)."""


def op(seq: int, member: int, outcome: str = "ok", *, cycle: str = "p1:r1:g0", size: int = 3,
       priority: int | None = None, tries: list[dict[str, Any]] | None = None, invoke: float = T,
       complete: float = T + 0.2, reason: str | None = None, cascade: int | None = None) -> dict[str, Any]:
    """Member *member* of *cycle* locks g0:r<member> then g0:r<member+1>."""
    group = cycle.rsplit(":", 1)[1]
    args: dict[str, Any] = {"kind": "cycle", "cycle": cycle, "member": member, "size": size,
                            "priority": member if priority is None else priority,
                            "first": f"{group}:r{member}", "second": f"{group}:r{(member + 1) % size}"}
    if cascade is not None:
        args["cascade"] = cascade
    args["backend_pid"] = 100 + member
    result: dict[str, Any] = {"tries": tries if tries is not None else [{"t_first": T, "t_req": T + 0.01}]}
    retries = sum(1 for t in result["tries"] if t.get("sqlstate")) if outcome == "ok" else 0
    if retries:
        result["retries"] = {"deadlock": retries}
    return {"op_id": f"p1-{seq}", "agent": f"p1-a{member + 1}", "tool": cd.TOOL, "strategy": "retry", "args": args,
            "invoke_ts": invoke, "complete_ts": complete, "outcome": outcome, "attempts": len(result["tries"]),
            "error_class": None, "reason": reason, "result": result}


def victim_tries(req: float = T + 0.01, err: float = T + 0.111, state: str = "40P01") -> list[dict[str, Any]]:
    return [{"t_first": T, "t_req": req, "t_err": err, "sqlstate": state}, {"t_first": err + 0.01, "t_req": err + 0.01}]


def cycle_ops(victim: int = 0, last_req: float = T + 0.02) -> list[dict[str, Any]]:
    """One resolved three-way cycle: member *victim* is aborted, 100 ms after the last request."""
    out = []
    for m in range(3):
        req = last_req if m == 2 else T + 0.01
        tries = victim_tries(req=req, err=last_req + 0.1) if m == victim else [{"t_first": T, "t_req": req}]
        out.append(op(m + 1, m, tries=tries))
    return out


def state(ops: list[dict[str, Any]], *, partial: dict[str, str] | None = None, deadlocks: int = 1,
          open_xacts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The final state the ok ops of *ops* leave; *partial* maps op ids to the only resource they wrote."""
    writes, rounds, counters = [], [], {}
    for o in ops:
        for res in (o["args"]["first"], o["args"]["second"]):
            counters.setdefault(res, 0)
    for o in ops:
        if o["outcome"] != "ok":
            continue
        both = [o["args"]["first"], o["args"]["second"]]
        wrote = [partial[o["op_id"]]] if partial and o["op_id"] in partial else both
        for res in wrote:
            writes.append({"op_id": o["op_id"], "resource": res})
            counters[res] += 1
        rounds.append({"op_id": o["op_id"], "agent": o["agent"], "cycle": o["args"]["cycle"],
                       "first": o["args"]["first"], "second": o["args"]["second"]})
    return {"resources": [{"id": k, "counter": v} for k, v in sorted(counters.items())], "writes": writes,
            "rounds": rounds, "server": {"deadlocks_delta": deadlocks}, "open_transactions": open_xacts or []}


def by_name(ops: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, Any]:
    got = {r.name: r for r in cd.check_all(ops, final)}
    assert set(got) == set(NAMES)
    return got


def test_resolved_cycle_is_valid_everywhere() -> None:
    ops = cycle_ops()
    res = by_name(ops, state(ops))
    assert {n: r.valid for n, r in res.items()} == dict.fromkeys(NAMES, True)
    assert res["deadlock.victims"].counts["victims_by_priority"] == {"0": 1}
    det = cd.figures(ops, state(ops))["detection"]
    assert det["n"] == 1 and math.isclose(det["p99_ms"], 100.0, abs_tol=0.01)
    assert det["histogram_ms"]["100-150"] == 1


def test_partial_round_is_caught() -> None:
    ops = cycle_ops()
    # the victim ignored its 40P01 and committed its first write and its round row only
    res = by_name(ops, state(ops, partial={"p1-1": "g0:r0"}))
    atomic = res["deadlock.atomic_rounds"]
    assert atomic.valid is False and atomic.counts["partial"] == 1
    assert atomic.evidence[0]["op_id"] == "p1-1" and atomic.evidence[0]["not_written"] == ["g0:r1"]
    counters = res["deadlock.counters"]
    assert counters.valid is False
    assert [e["resource"] for e in counters.evidence] == ["g0:r1"]
    assert counters.evidence[0]["difference"] == -1


def test_ok_round_without_effects_and_failed_round_with_effects() -> None:
    ops = cycle_ops()
    ops[1]["outcome"], ops[1]["reason"] = "fail", "victim-gave-up"  # reported fail, but it committed
    final = state([*ops[:1], {**ops[1], "outcome": "ok"}, *ops[2:]])
    final["writes"] = [w for w in final["writes"] if w["op_id"] != "p1-3"]  # p1-3 ok, but nothing of it exists
    final["rounds"] = [r for r in final["rounds"] if r["op_id"] != "p1-3"]
    atomic = cd.atomic_rounds(cd.DeadlockView(ops, final))
    assert atomic.valid is False
    assert (atomic.counts["missing"], atomic.counts["phantom"], atomic.counts["partial"]) == (1, 1, 0)
    assert {e["op_id"] for e in atomic.evidence} == {"p1-2", "p1-3"}


def test_unknown_round_resolves_from_its_writes() -> None:
    ops = cycle_ops()
    ops[2]["outcome"] = "unknown"  # cut short during commit; its writes are there: applied
    final = state([*ops[:2], {**ops[2], "outcome": "ok"}])
    res = by_name(ops, final)
    assert res["deadlock.atomic_rounds"].valid is True
    assert res["deadlock.atomic_rounds"].counts["unknown_applied"] == 1
    assert res["deadlock.counters"].valid is True


def test_wrong_victim_names_the_others() -> None:
    ops = cycle_ops(victim=2)
    victims = cd.victims(cd.DeadlockView(ops, state(ops)))
    assert victims.valid is False
    ev = victims.evidence[0]
    assert [m["priority"] for m in ev["victims"]] == [2]
    assert sorted(m["priority"] for m in ev["others"]) == [0, 1] and ev["lowest_priority"] == 0


def test_one_wrong_victim_in_a_hundred_cycles_is_tolerated_two_are_not() -> None:
    def many(wrong: int) -> list[dict[str, Any]]:
        ops = []
        for c in range(100):
            for o in cycle_ops(victim=2 if c < wrong else 0):
                ops.append({**o, "op_id": f"p1-{c}-{o['op_id']}", "args": {**o["args"], "cycle": f"p1:r{c}:g0"}})
        return ops

    ok = cd.victims(cd.DeadlockView(many(1), {}))
    assert ok.valid is True and ok.counts["share"] == 0.99
    bad = cd.victims(cd.DeadlockView(many(2), {}))
    assert bad.valid is False and bad.counts["other_victim"] == 2


def test_incomplete_cycle_is_not_judged() -> None:
    ops = cycle_ops()[:2]  # the third member never asked for its lock: no cycle
    victims = cd.victims(cd.DeadlockView(ops, {}))
    assert victims.valid == UNKNOWN and victims.counts["cycles_resolved"] == 0
    assert cd.figures(ops, {})["detection"]["n"] == 0


def test_detection_time_counts_from_the_last_request() -> None:
    ops = cycle_ops(last_req=T + 0.05)
    ops[0]["result"]["tries"][0]["t_err"] = T + 0.08  # 30 ms after the cycle closed
    cyc = cd.find_cycles(ops)[0]
    assert cyc["complete"] and math.isclose(cyc["t_complete"], T + 0.05)
    assert math.isclose(cyc["detection_ms"], 30.0, abs_tol=0.01)


def test_server_count_must_match_the_agents() -> None:
    ops = cycle_ops()
    assert cd.server_deadlocks(cd.DeadlockView(ops, state(ops, deadlocks=1))).valid is True
    more = cd.server_deadlocks(cd.DeadlockView(ops, state(ops, deadlocks=3)))
    assert more.valid is False and more.counts == {"server_deadlocks": 3, "client_deadlocks": 1, "calls_cut_short": 0}
    fewer = cd.server_deadlocks(cd.DeadlockView(ops, state(ops, deadlocks=0)))
    assert fewer.valid is False
    cut = [*ops, op(9, 1, "unknown", cycle="p1:r2:g0", tries=[{"t_first": T, "t_req": T}])]
    assert cd.server_deadlocks(cd.DeadlockView(cut, state(ops, deadlocks=2))).valid is True  # its victim after stop
    no_server = {k: v for k, v in state(ops).items() if k != "server"}
    assert cd.server_deadlocks(cd.DeadlockView(ops, no_server)).valid == UNKNOWN


def test_open_transaction_is_caught() -> None:
    ops = cycle_ops()
    left = [{"pid": 7, "user": "tc_deadlock_p0", "application_name": "tc:r:p1-a1", "state": "idle in transaction",
             "xact_age_s": 3.0}]
    res = cd.no_open_transaction(cd.DeadlockView(ops, state(ops, open_xacts=left)))
    assert res.valid is False and res.evidence[0]["pid"] == 7


def test_starved_agent_misses_the_gate() -> None:
    ops = cycle_ops()
    for seq in (7, 8):
        ops.append({**op(seq, 0, "fail", cycle=f"p1:r{seq}:g0", reason="victim-gave-up")})
    ops.append(op(10, 1, cycle="p1:r7:g0"))
    fig = cd.figures(ops, state(ops))
    assert fig["progress"]["starved_agents"] == 0  # a1 had an ok round in the first cycle
    only_failures = [o for o in ops if not (o["agent"] == "p1-a1" and o["outcome"] == "ok")]
    gates = {g["gate"]: g for g in cd.gates(only_failures, state(ops), {**LIMITS, "gate_detection_ms": 500.0})}
    assert gates["starved_agents"]["met"] is False and gates["starved_agents"]["figure"] == 1


def test_detection_gate() -> None:
    ops = cycle_ops()
    gates = {g["gate"]: g for g in cd.gates(ops, state(ops), {**LIMITS, "gate_detection_ms": 50.0})}
    assert gates["detection_p99_ms"]["met"] is False
    assert "cascade_recovery_s" not in gates  # no cascade in this history
    assert {g["gate"]: g["met"] for g in cd.gates(ops, state(ops), LIMITS)}["detection_p99_ms"] is True


def test_planned_deadlocks_are_left_out_of_the_conflict_rate() -> None:
    ops = cycle_ops()
    fig = cd.figures(ops, state(ops))
    assert fig["conflict_rate_all"] == 1 / 4 and fig["conflict_rate"] == 0
    assert fig["planned_deadlock_retries"] == 1


def solo(seq: int, at: float) -> dict[str, Any]:
    o = op(seq, 0, invoke=at - 0.005, complete=at, tries=[{"t_first": at, "t_req": at}])
    o["args"] = {"kind": "solo", "cycle": f"p1-a{seq % 10}:solo", "first": "x1", "second": "x2"}
    return o


def test_cascade_recovery_time() -> None:
    # 100 ok rounds/s for 2 s, a cascade at T+2 that stops everything for 0.3 s, then 100/s again
    ops = [solo(i, T + i / 100) for i in range(200)]
    ops += [solo(1000 + i, T + 2.3 + i / 100) for i in range(150)]
    cascade = [op(2000 + m, m, cycle="p1:c1:g0", cascade=1, invoke=T + 2.0, complete=T + 2.3) for m in range(3)]
    item = cd.cascades(ops + cascade, cd.find_cycles(cascade))[0]
    assert item["cycles"] == 1 and math.isclose(item["baseline_ok_per_s"], 100.0, abs_tol=1.0)
    assert 0.2 <= item["recovery_s"] <= 0.35, item  # the window of 0.2 s may close over the dip's end
    limits = {**LIMITS, "gate_recovery_s": 0.2, "cascade_min_cycles": 1}
    gates = {g["gate"]: g for g in cd.gates(ops + cascade, {}, limits)}
    assert gates["cascade_recovery_s"]["met"] is False and gates["cascade_cycles"]["met"] is True


def test_cascade_that_never_recovers_is_infinite() -> None:
    ops = [solo(i, T + i / 100) for i in range(200)]
    ops += [solo(1000 + i, T + 2.3 + i / 20) for i in range(40)]  # back at only 20/s
    cascade = [op(2000 + m, m, cycle="p1:c1:g0", cascade=1, invoke=T + 2.0, complete=T + 2.3) for m in range(3)]
    item = cd.cascades(ops + cascade, cd.find_cycles(cascade))[0]
    assert item["recovery_s"] == math.inf and "never" in item["note"]


def test_other_tools_are_ignored() -> None:
    ops = cycle_ops()
    other = {**op(9, 0), "tool": "deduct"}
    res = by_name([*ops, other], state(ops))
    assert res["deadlock.atomic_rounds"].counts["ops"] == 3


def test_server_log_reports_match_the_victims_by_pid() -> None:
    ops = cycle_ops()  # the victim is member 0, backend pid 100
    log = {"deadlock_reports": 1, "deadlock_victim_pids": {"100": 1}, "lock_timeout_pids": {}}
    res = by_name_with_log(ops, log)
    assert res.valid is True and res.counts["missing_in_log"] == 0
    wrong_pid = by_name_with_log(ops, {**log, "deadlock_victim_pids": {"102": 1}})
    assert wrong_pid.valid is False and wrong_pid.counts["missing_in_log"] == 1
    assert {e["backend_pid"] for e in wrong_pid.evidence} == {"100", "102"}
    nothing_logged = by_name_with_log(ops, {"deadlock_reports": 0})
    assert nothing_logged.valid is False and nothing_logged.evidence[0]["backend_pid"] == "100"
    assert "deadlock.server_log" not in {r.name for r in cd.check_all(ops, state(ops))}  # log unreadable: no check


def by_name_with_log(ops: list[dict[str, Any]], log: dict[str, Any]) -> Any:
    got = {r.name: r for r in cd.check_all(ops, {**state(ops), "server_log": log})}
    return got["deadlock.server_log"]


def test_longest_wait_is_reported_and_gated() -> None:
    ops = cycle_ops()
    ops[2]["complete_ts"] = T + 6.0  # member 2 waited 6 s for its round
    fig = cd.figures(ops, state(ops))["progress"]
    assert fig["max_wait_agent"] == "p1-a3" and math.isclose(fig["max_wait_ms"], 6000.0)
    gates = {g["gate"]: g for g in cd.gates(ops, state(ops), {**LIMITS, "gate_max_wait_ms": 5000.0})}
    assert gates["max_wait_ms"]["met"] is False
    assert {g["gate"]: g["met"] for g in cd.gates(cycle_ops(), state(ops), LIMITS)}["max_wait_ms"] is True


def test_an_agent_that_won_only_before_its_group_was_whole_is_starved() -> None:
    """Member 0 wins its first round while the others are still spawning (a round of one: no cycle), then loses
    every whole cycle: it is starved. Without a whole cycle in the history, that lone win still counts."""
    alone = op(1, 0, cycle="p1:r1:g0")  # the group had one member: no cycle formed
    lost = []
    for r, seq in ((2, 10), (3, 20)):
        for m in range(3):
            tries = victim_tries() if m == 0 else [{"t_first": T, "t_req": T + 0.01}]
            lost.append(op(seq + m, m, "fail" if m == 0 else "ok", cycle=f"p1:r{r}:g0", tries=tries,
                           reason="victim-gave-up" if m == 0 else None))
    fig = cd.figures([alone, *lost], state([alone, *lost]))
    assert fig["progress"]["starved"] == ["p1-a1"], fig["progress"]
    assert cd.progress([alone, lost[0], lost[3]])["starved_agents"] == 0  # no whole cycle given: the win counts
