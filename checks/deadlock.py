"""Checks of the deadlock scenario: atomic rounds, counters, victims by priority, server's deadlock count.

Inputs: the ``lock_round`` operations of the history (``args`` name the cycle, member, priority and
resources; ``result.tries`` the client-side times of each attempt: ``t_first`` first lock held,
``t_req`` second lock requested, ``t_err``/``sqlstate`` the attempt's error) and the final state of
:func:`toolclash.tools.deadlock.snapshot` (resources, writes and rounds keyed by op id, the server's
``pg_stat_database.deadlocks`` delta, open transactions).

Figures (also the gates' inputs): detection time = victim's error − the moment the cycle was
complete (the last member's request for its second lock), p50/p95/p99/max and a histogram; victims
by priority; forward progress per agent (ok rounds, longest call); cascade recovery time = from a
cascade's start until the ok-throughput over a sliding window is back to >= 90 % of the rate in the
second before the cascade.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, result, run_checks
from checks.gates import gate, percentile
from checks.plotting import PlotInput, fmt, pyplot
from checks.server import owner_process
from toolclash.history import FAIL, OK

TOOL = "lock_round"
VICTIM_STATES = ("40P01", "55P03")
DEADLOCK_STATE = "40P01"
VICTIM_SHARE = 0.99
"""Least share of resolved cycles whose victim must be the lowest-priority member."""
HISTOGRAM_MS = (25, 50, 100, 150, 200, 300, 500, 1000)
BASELINE_S = 1.0
"""Pre-cascade throughput is measured over this window, ending ``BASELINE_GAP_S`` before the cascade."""
BASELINE_GAP_S = 0.1
RECOVERED = 0.9
STEP_S = 0.01


def _tries(op: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((op.get("result") or {}).get("tries") or [])


def _first_try(op: Mapping[str, Any]) -> Mapping[str, Any]:
    tries = _tries(op)
    return tries[0] if tries else {}


class DeadlockView:
    """Indexes built once and shared by the checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.ops: dict[str, Mapping[str, Any]] = {}
        for op in ops:
            if op["tool"] == TOOL:
                self.ops[op["op_id"]] = op
        self.has_state = "writes" in final and "rounds" in final and "resources" in final
        self.writes: dict[str, set[str]] = defaultdict(set)
        for w in final.get("writes", []):
            self.writes[w["op_id"]].add(w["resource"])
        self.rounds: dict[str, Mapping[str, Any]] = {r["op_id"]: r for r in final.get("rounds", [])}
        self.resources: dict[str, int] = {r["id"]: int(r["counter"]) for r in final.get("resources", [])}
        self.server: Mapping[str, Any] | None = final.get("server")
        self.open_transactions: list[Mapping[str, Any]] | None = final.get("open_transactions")
        self.incomplete = frozenset(incomplete_processes)
        self.final = final
        self.cycles = find_cycles(self.ops.values())

    def from_incomplete_process(self, op_id: str) -> bool:
        return op_id.rpartition("-")[0] in self.incomplete


def find_cycles(ops: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group cycle rounds by cycle; a cycle is complete when all its members asked for their second lock.

    Each cycle: ``key``, ``members`` (ops by member), ``complete``, ``victims`` (members whose first
    attempt ended in 40P01 / 55P03), ``t_complete`` and ``detection_ms`` (single victim only).
    """
    by_cycle: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for op in ops:
        args = op.get("args") or {}
        if args.get("kind") == "cycle":
            by_cycle[str(args["cycle"])].append(op)
    out = []
    for key, members in sorted(by_cycle.items()):
        members.sort(key=lambda o: int(o["args"]["member"]))
        size = int(members[0]["args"]["size"])
        requests = [_first_try(m).get("t_req") for m in members]
        complete = len({int(m["args"]["member"]) for m in members}) == size and all(r is not None for r in requests)
        victims = [m for m in members if _first_try(m).get("sqlstate") in VICTIM_STATES]
        cyc: dict[str, Any] = {"key": key, "members": members, "complete": complete, "victims": victims,
                               "cascade": members[0]["args"].get("cascade"), "t_complete": None, "detection_ms": None}
        if complete:
            cyc["t_complete"] = max(float(r) for r in requests if r is not None)
            if len(victims) == 1 and _first_try(victims[0]).get("t_err") is not None:
                cyc["detection_ms"] = (float(_first_try(victims[0])["t_err"]) - cyc["t_complete"]) * 1000.0
        out.append(cyc)
    return out


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


def _server_log(view: DeadlockView) -> CheckResult | None:
    log = view.final.get("server_log")
    return None if log is None else server_log(view, log)  # only when the server's log could be read


# --- checks --------------------------------------------------------------------------------------------------


def atomic_rounds(v: DeadlockView) -> CheckResult:
    """Every round is all or nothing: both writes and the round row, or none; ok ops complete, failed ones empty."""
    name = "deadlock.atomic_rounds"
    if not v.has_state:
        return result(name, UNKNOWN, {}, None, "final state has no writes/rounds")
    ev = Evidence()
    counts = {"ops": len(v.ops), "complete": 0, "partial": 0, "missing": 0, "phantom": 0, "unknown_applied": 0,
              "unknown_not_applied": 0, "rows_from_incomplete_history": 0}
    for op_id, op in v.ops.items():
        args = op["args"]
        want = {args["first"], args["second"]}
        wrote = v.writes.get(op_id, set())
        has_round = op_id in v.rounds
        full, empty = wrote == want and has_round, not wrote and not has_round
        if not (full or empty):
            counts["partial"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "outcome": op["outcome"], "cycle": args.get("cycle"),
                    "wrote": sorted(wrote), "not_written": sorted(want - wrote), "round_row": has_round,
                    "what": "partial round: part of its effects committed without the rest"})
            continue
        if op["outcome"] == OK and empty:
            counts["missing"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "what": "acknowledged (ok) but none of its writes exist"})
        elif op["outcome"] == FAIL and full:
            counts["phantom"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "reason": op.get("reason"),
                    "what": "reported fail but its writes and round row committed"})
        elif op["outcome"] not in (OK, FAIL):
            counts["unknown_applied" if full else "unknown_not_applied"] += 1
        elif full:
            counts["complete"] += 1
    doubtful = 0
    for op_id in sorted(set(v.writes) | set(v.rounds)):
        if op_id in v.ops:
            continue
        if v.from_incomplete_process(op_id):
            doubtful += 1
            continue
        counts["phantom"] += 1
        ev.add({"op_id": op_id, "wrote": sorted(v.writes.get(op_id, ())), "round_row": op_id in v.rounds,
                "what": "effects of an operation no agent recorded"})
    counts["rows_from_incomplete_history"] = doubtful
    if ev:
        return result(name, False, counts, ev, f"{counts['partial']} partial round(s), {counts['missing']} missing, "
                      f"{counts['phantom']} phantom")
    if doubtful:
        return result(name, UNKNOWN, counts, ev, f"{doubtful} round(s) from a process whose history is incomplete")
    return result(name, True, counts, ev, "every round committed both writes and its row, or nothing")


def counters(v: DeadlockView) -> CheckResult:
    """Each resource's counter = ok rounds that touched it (+ in-doubt ones whose writes exist) = its write rows."""
    name = "deadlock.counters"
    if not v.has_state:
        return result(name, UNKNOWN, {}, None, "final state has no resources")
    expected: dict[str, int] = defaultdict(int)
    rows: dict[str, int] = defaultdict(int)
    for wrote in v.writes.values():
        for res in wrote:
            rows[res] += 1
    doubt: dict[str, int] = defaultdict(int)
    for op_id, op in v.ops.items():
        args = op["args"]
        for res in (args["first"], args["second"]):
            applied_in_doubt = op["outcome"] != FAIL and res in v.writes.get(op_id, ())
            if op["outcome"] == OK or applied_in_doubt:
                expected[res] += 1
    for op_id, wrote in v.writes.items():
        if op_id not in v.ops and v.from_incomplete_process(op_id):
            for res in wrote:
                doubt[res] += 1
    ev = Evidence()
    explained = 0
    for res, counter in sorted(v.resources.items()):
        diff = counter - expected[res]
        if diff == 0 and counter == rows[res]:
            continue
        if counter == rows[res] and 0 < diff <= doubt[res]:
            explained += 1
            continue
        ev.add({"resource": res, "counter": counter, "ok_rounds": expected[res], "write_rows": rows[res],
                "difference": diff, "what": "counter differs from the acknowledged rounds that touched it"})
    counts = {"resources": len(v.resources), "mismatched": ev.total, "explainable_by_incomplete_history": explained}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} resource counter(s) do not match the ok rounds")
    if explained:
        return result(name, UNKNOWN, counts, ev, "differences could be rounds of an incomplete history")
    return result(name, True, counts, ev, "every resource counter equals the ok rounds that touched it")


def no_open_transaction(v: DeadlockView) -> CheckResult:
    """No session of the run is left inside a transaction (a victim that never rolled back, a leak); one of a
    process whose history is incomplete (a lost worker keeps its sessions) makes it unknown."""
    name = "deadlock.no_open_transaction"
    if v.open_transactions is None:
        return result(name, UNKNOWN, {}, None, "final state has no session facts")
    ev = Evidence()
    of_lost = 0
    for s in v.open_transactions:
        if owner_process(str(s.get("application_name") or ""), v.incomplete) is not None:
            of_lost += 1
            continue
        ev.add(dict(s))
    counts = {"open": ev.total, "of_processes_with_incomplete_history": of_lost}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} transaction(s) left open")
    if of_lost:
        return result(name, UNKNOWN, counts, ev, f"{of_lost} transaction(s) left open by a process whose history "
                      "is incomplete")
    return result(name, True, counts, ev, "no transaction left open")


def _member(op: Mapping[str, Any]) -> dict[str, Any]:
    return {"op_id": op["op_id"], "agent": op["agent"], "priority": int(op["args"]["priority"]),
            "deadlock_timeout": op["args"].get("deadlock_timeout")}


def victims(v: DeadlockView) -> CheckResult:
    """The victim of each resolved cycle is its lowest-priority member in >= 99 % of cycles."""
    name = "deadlock.victims"
    ev = Evidence()
    right = wrong = unresolved = 0
    by_priority: dict[str, int] = defaultdict(int)
    for cyc in v.cycles:
        if not cyc["complete"]:
            continue
        if not cyc["victims"]:
            unresolved += 1
            continue
        lowest = min(int(m["args"]["priority"]) for m in cyc["members"])
        for victim in cyc["victims"]:
            by_priority[str(victim["args"]["priority"])] += 1
        if len(cyc["victims"]) == 1 and int(cyc["victims"][0]["args"]["priority"]) == lowest:
            right += 1
            continue
        wrong += 1
        ids = {vv["op_id"] for vv in cyc["victims"]}
        ev.add({"cycle": cyc["key"], "victims": [_member(m) for m in cyc["victims"]],
                "others": [_member(m) for m in cyc["members"] if m["op_id"] not in ids], "lowest_priority": lowest,
                "what": "the victim was not the lowest-priority member" if len(ids) == 1 else "several victims"})
    resolved = right + wrong
    counts = {"cycles_resolved": resolved, "lowest_priority_victim": right, "other_victim": wrong,
              "complete_without_victim": unresolved, "victims_by_priority": dict(sorted(by_priority.items())),
              "share": right / resolved if resolved else None}
    if not resolved and not v.ops:
        return result(name, True, counts, ev, "no deadlock agent ran: no cycle to judge")
    if not resolved:
        return result(name, UNKNOWN, counts, ev, "no complete cycle was resolved: nothing to judge")
    if right / resolved < VICTIM_SHARE:
        return result(name, False, counts, ev, f"victim was the lowest priority in only {right}/{resolved} cycles")
    levels = ", ".join(f"level {p}: {n}" for p, n in sorted(by_priority.items()))
    return result(name, True, counts, ev, f"victim was the lowest priority in {right}/{resolved} cycles "
                  f"(victims by priority {levels})")


def client_deadlocks(ops: Iterable[Mapping[str, Any]]) -> int:
    return sum(1 for op in ops for t in _tries(op) if t.get("sqlstate") == DEADLOCK_STATE)


def server_deadlocks(v: DeadlockView) -> CheckResult:
    """The server's ``pg_stat_database.deadlocks`` delta equals the 40P01 errors the agents saw.

    The server may count more by as many calls as were cut short by the stop (a backend can be
    chosen as victim after its client went away); never fewer.
    """
    name = "deadlock.server_count"
    if not v.server or "deadlocks_delta" not in v.server:
        return result(name, UNKNOWN, {}, None, "final state has no server deadlock count")
    seen = client_deadlocks(v.ops.values())
    delta = int(v.server["deadlocks_delta"])
    cut_short = sum(1 for op in v.ops.values() if op["outcome"] not in (OK, FAIL))
    counts = {"server_deadlocks": delta, "client_deadlocks": seen, "calls_cut_short": cut_short}
    ev = Evidence()
    if v.incomplete:  # the victims of a process whose history is incomplete are not in the agents' count
        return result(name, UNKNOWN, counts, ev, f"not compared: the server counted {delta} deadlock(s), the "
                      f"agents' records {seen}, but a process's history is incomplete")
    if delta == seen:
        return result(name, True, counts, ev, f"server and agents both counted {seen} deadlock(s)")
    if seen < delta <= seen + cut_short:
        return result(name, True, counts, ev, f"server counted {delta - seen} more deadlock(s) than agents saw, "
                      "all explainable by calls cut short by the stop")
    ev.add({"server_deadlocks": delta, "client_deadlocks": seen,
            "what": "the server's deadlock counter and the agents' 40P01 errors disagree"})
    return result(name, False, counts, ev, f"server counted {delta} deadlock(s), agents saw {seen}")


def _victim_pids(ops: Iterable[Mapping[str, Any]], state: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for op in ops:
        pid = (op.get("args") or {}).get("backend_pid")
        for t in _tries(op):
            if t.get("sqlstate") == state:
                out[str(pid)] += 1
    return out


def server_log(v: DeadlockView, log: Mapping[str, Any]) -> CheckResult:
    """The server log's reports (``deadlock detected``, ``lock timeout``) name the backends of the agents'
    victims, one report per victim error: none missing, none extra (beyond calls cut short by the stop)."""
    name = "deadlock.server_log"
    cut_short = sum(1 for op in v.ops.values() if op["outcome"] not in (OK, FAIL))
    ev = Evidence()
    missing = extra = 0
    for state, key in ((DEADLOCK_STATE, "deadlock_victim_pids"), ("55P03", "lock_timeout_pids")):
        seen = _victim_pids(v.ops.values(), state)
        logged: Counter[str] = Counter({str(k): int(n) for k, n in (log.get(key) or {}).items()})
        for pid, n in sorted((seen - logged).items()):
            missing += n
            ev.add({"backend_pid": pid, "sqlstate": state, "agent_errors": seen[pid], "log_reports": logged[pid],
                    "what": "the agent saw the error but the server's log has no report of it"})
        over = logged - seen
        extra += sum(over.values())
        if sum(over.values()) > cut_short:
            for pid in sorted(over):
                ev.add({"backend_pid": pid, "sqlstate": state, "agent_errors": seen[pid], "log_reports": logged[pid],
                        "what": "the server's log reports a victim no agent saw"})
    counts = {"deadlock_reports": log.get("deadlock_reports"), "lock_timeout_reports": log.get("lock_timeout_reports"),
              "lock_wait_lines": log.get("lock_wait_lines"), "missing_in_log": missing, "extra_in_log": extra,
              "calls_cut_short": cut_short}
    if v.incomplete:  # a victim of a process whose history is incomplete is in the log but not in the records
        return result(name, UNKNOWN, counts, ev, f"not compared: a process's history is incomplete ({missing} "
                      f"missing, {extra} extra in the log)")
    if ev:
        return result(name, False, counts, ev, f"server log and agents disagree: {missing} missing, {extra} extra")
    return result(name, True, counts, ev, f"server log reports {log.get('deadlock_reports')} deadlock(s) and "
                  f"{log.get('lock_timeout_reports')} lock timeout(s), matching the agents' victims by backend pid")


# --- figures and gates ---------------------------------------------------------------------------------------


def _histogram(values: list[float]) -> dict[str, int]:
    out: dict[str, int] = {}
    lower = 0
    for bound in HISTOGRAM_MS:
        out[f"{lower}-{bound}"] = sum(1 for x in values if lower <= x < bound)
        lower = bound
    out[f">={lower}"] = sum(1 for x in values if x >= lower)
    return out


def detection(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    values = sorted(c["detection_ms"] for c in cycles if c["detection_ms"] is not None)
    return {"n": len(values), "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95),
            "p99_ms": percentile(values, 99), "max_ms": values[-1] if values else math.nan,
            "histogram_ms": _histogram(values)}


def progress(ops: Iterable[Mapping[str, Any]], cycles: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Per agent: ok rounds, decided calls and longest call; starved = >= 2 decided calls and no ok.

    An agent that took part in whole cycles (*cycles* that are complete) must have won one of them: a round won
    while its group was not whole (members still spawning) formed no cycle, so it does not save an agent that then
    lost every cycle from being starved."""
    agents: dict[str, dict[str, Any]] = {}
    cycles = list(cycles)
    no_cycle = {id(m) for c in cycles if not c["complete"] for m in c["members"]}
    in_cycles = {m["agent"] for c in cycles if c["complete"] for m in c["members"]}
    for op in ops:
        a = agents.setdefault(op["agent"], {"ok": 0, "decided": 0, "max_wait_ms": 0.0, "won_cycle": 0})
        if op["outcome"] in (OK, FAIL) and op.get("error_class") != "interrupted":
            a["decided"] += 1
            a["ok"] += op["outcome"] == OK
            a["won_cycle"] += op["outcome"] == OK and id(op) not in no_cycle
            a["max_wait_ms"] = max(a["max_wait_ms"], (op["complete_ts"] - op["invoke_ts"]) * 1000.0)
    starved = sorted(name for name, a in agents.items()
                     if a["decided"] >= 2 and (a["won_cycle"] if name in in_cycles else a["ok"]) == 0)
    worst = max(agents.items(), key=lambda kv: kv[1]["max_wait_ms"], default=(None, {"max_wait_ms": math.nan}))
    oks = [a["ok"] for a in agents.values()]
    return {"agents": len(agents), "starved_agents": len(starved), "starved": starved[:20],
            "min_ok_rounds": min(oks) if oks else 0, "max_wait_ms": worst[1]["max_wait_ms"], "max_wait_agent": worst[0]}


def cascades(ops: list[Mapping[str, Any]], cycles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recovery time of each cascade that has a full baseline before it and a second of history after it."""
    starts: dict[int, float] = {}
    for op in ops:
        k = (op.get("args") or {}).get("cascade")
        if k is not None:
            starts[int(k)] = min(starts.get(int(k), math.inf), float(op["invoke_ts"]))
    if not starts:
        return []
    done = sorted(float(op["complete_ts"]) for op in ops if op["outcome"] == OK)
    first_invoke = min(float(op["invoke_ts"]) for op in ops)
    out = []
    for k, start in sorted(starts.items()):
        cyc = [c for c in cycles if c["cascade"] == k]
        item: dict[str, Any] = {"cascade": k, "start": start, "cycles": sum(1 for c in cyc if c["complete"]),
                                "victims": sum(len(c["victims"]) for c in cyc), "recovery_s": None}
        base_from, base_to = start - BASELINE_GAP_S - BASELINE_S, start - BASELINE_GAP_S
        if base_from < first_invoke or not done or done[-1] < start + 1.0:
            item["note"] = "not measured: no full baseline before it or cut short by the stop"
            out.append(item)
            continue
        rate = (bisect_left(done, base_to) - bisect_left(done, base_from)) / BASELINE_S
        item["baseline_ok_per_s"] = rate
        if rate <= 0:
            item["note"] = "not measured: no throughput before the cascade"
            out.append(item)
            continue
        window = max(0.2, min(1.0, 20.0 / rate))
        item["window_s"] = window
        s = start
        while s + window <= done[-1]:
            n = bisect_left(done, s + window) - bisect_left(done, s)
            if n >= RECOVERED * rate * window:
                item["recovery_s"] = s - start
                break
            s += STEP_S
        if item["recovery_s"] is None:
            item["note"] = "throughput never came back to 90 % of the baseline"
            item["recovery_s"] = math.inf
        out.append(item)
    return out


def figures(ops: list[Mapping[str, Any]], final: Mapping[str, Any]) -> dict[str, Any]:
    """Detection histogram, victims, progress, cascades, server count; conflict rate without planned deadlocks.

    Every cycle is built to deadlock once: its victim's one retry is the scenario's purpose, not
    contention. ``conflict_rate`` counts only conflicts beyond that one per resolved cycle
    (``conflict_rate_all`` keeps every conflict).
    """
    ops = [op for op in ops if op["tool"] == TOOL]
    cycles = find_cycles(ops)
    attempts = sum(int(op.get("attempts") or 0) for op in ops)
    conflicts = sum(n for op in ops for n in ((op.get("result") or {}).get("retries") or {}).values())
    planned = sum(1 for c in cycles if len(c["victims"]) == 1 and len(_tries(c["victims"][0])) > 1)
    all_cascades = cascades(ops, cycles)
    measured = [c for c in all_cascades if c["recovery_s"] is not None]
    server = final.get("server") or {}
    return {
        "conflict_rate_all": conflicts / attempts if attempts else math.nan,
        "conflict_rate": max(0, conflicts - planned) / attempts if attempts else math.nan,
        "planned_deadlock_retries": planned,
        "cycles": sum(1 for c in cycles if c["complete"]),
        "detection": detection(cycles),
        "victims_by_priority": _count(str(vv["args"]["priority"]) for c in cycles for vv in c["victims"]),
        "progress": progress(ops, cycles),
        "cascades": all_cascades,
        "cascade_recovery_max_s": max((c["recovery_s"] for c in measured), default=None),
        "cascade_cycles_min": min((c["cycles"] for c in measured), default=None),
        "server_deadlocks": server.get("deadlocks_delta"),
        "client_deadlocks": client_deadlocks(ops),
    }


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in values:
        out[x] += 1
    return dict(sorted(out.items()))


def gates(ops: list[Mapping[str, Any]], final: Mapping[str, Any], limits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Detection p99 < --gate-detection-ms; no starved agent; longest call < --gate-max-wait-ms; in cascade
    mode recovery and cascade size."""
    fig = figures(ops, final)
    out = [
        gate("deadlock", "detection_p99_ms", fig["detection"]["p99_ms"], "<", float(limits["gate_detection_ms"]),
             "no cycle was resolved"),
        gate("deadlock", "starved_agents", fig["progress"]["starved_agents"], "<", 1, "no agent ran"),
        gate("deadlock", "max_wait_ms", fig["progress"]["max_wait_ms"], "<", float(limits["gate_max_wait_ms"]),
             "no call completed"),
    ]
    if any((op.get("args") or {}).get("cascade") is not None for op in ops if op["tool"] == TOOL):
        out.append(gate("deadlock", "cascade_recovery_s", fig["cascade_recovery_max_s"], "<",
                        float(limits["gate_recovery_s"]), "no cascade could be measured"))
        out.append(gate("deadlock", "cascade_cycles", fig["cascade_cycles_min"], ">=",
                        float(limits["cascade_min_cycles"]), "no cascade could be measured"))
    return out


def plots(p: PlotInput) -> list[tuple[str, Any]]:
    """The detection-time histogram of the resolved cycles."""
    det = p.figures("deadlock").get("detection") or {}
    hist = det.get("histogram_ms") or {}
    if not det.get("n") or not hist:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(list(hist), list(hist.values()), color="slategray")
    limit = float(p.setting("gate_detection_ms", 500.0))
    ax.set_xlabel("detection time (ms): the victim's error − the last member's request for its second lock")
    ax.set_ylabel("resolved cycles")
    ax.set_title(f"Deadlock detection time: {det['n']} cycles, p50 {fmt(det.get('p50_ms'))} ms, "
                 f"p95 {fmt(det.get('p95_ms'))} ms, p99 {fmt(det.get('p99_ms'))} ms (gate p99 < {limit:g} ms)")
    return [("Deadlock detection time", fig)]


SPEC = Checks(
    view=DeadlockView,
    checks=(("deadlock.atomic_rounds", atomic_rounds), ("deadlock.counters", counters),
            ("deadlock.no_open_transaction", no_open_transaction), ("deadlock.victims", victims),
            ("deadlock.server_count", server_deadlocks), ("deadlock.server_log", _server_log)),
    figures=figures,
    gates=gates,
    plots=plots,
)
