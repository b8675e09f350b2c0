"""Checks of the pool scenario: every call accounted for, aggregates right, pools idle after the run.

Inputs: the ``analyze`` operations of the history, and the final state captured by
:func:`toolclash.tools.pool.snapshot`: ``facts_rows``, ``pool_states`` (each process's client pool when
its last agent stopped: in use, waiting, holders, leaks, counters), ``pool_samples``, and ``bouncer``
(PgBouncer's SHOW POOLS after the run and the run's clients still connected). Open PostgreSQL sessions
of the run are judged by ``server.sessions`` (checks/server.py) for every scenario.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, result, run_checks
from checks.gates import gate, percentile
from checks.plotting import PlotInput, bin_seconds, pyplot
from checks.server import owner_process
from toolclash.history import FAIL, OK
from toolclash.tools.pool import CANCELLED, QUEUED_MS, TIMEOUT, TOOL


def _agent_of(application_name: str) -> str:
    """``tc:<run>:<agent>`` → ``<agent>``."""
    return application_name.split(":", 2)[-1] if application_name.count(":") >= 2 else application_name


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


@dataclass
class PoolView:
    calls: list[Mapping[str, Any]]
    final: Mapping[str, Any]
    incomplete: frozenset[str]

    @classmethod
    def of(cls, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any], incomplete: frozenset[str]) -> PoolView:
        return cls([op for op in ops if op["tool"] == TOOL], final, incomplete)


def accounted(calls: list[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete: frozenset[str] = frozenset()) -> CheckResult:
    """Every call ended ok, pool-timeout or cancelled (or was cut short by the stop); each process's client pool
    counted as many acquire timeouts as its history holds pool-timeout calls. An in-doubt call, or a process
    whose history is incomplete, makes it unknown, never false."""
    name = "pool.accounted"
    by_kind: Counter[str] = Counter()
    ev = Evidence()
    per_agent: dict[str, Counter[str]] = defaultdict(Counter)
    in_doubt: list[str] = []
    for op in calls:
        if op["outcome"] == OK:
            kind = "ok"
        elif op["outcome"] == FAIL and op.get("reason") in (TIMEOUT, CANCELLED):
            kind = str(op["reason"])
        elif op.get("error_class") == "interrupted":
            kind = "interrupted"
        elif op["outcome"] not in (OK, FAIL):
            kind = "in_doubt"
            in_doubt.append(op["op_id"])
        else:
            kind = "unaccounted"
            ev.add({"op_id": op["op_id"], "agent": op["agent"], "outcome": op["outcome"], "reason": op.get("reason"),
                    "error_class": op.get("error_class"), "message": (op.get("result") or {}).get("message")})
        by_kind[kind] += 1
        per_agent[op["agent"]][kind] += 1
    states = {s["process"]: s.get("result", {}) for s in final.get("pool_states", [])
              if s.get("result", {}).get("kind") == "client"}
    timeout_calls: Counter[str] = Counter(op["process"] for op in calls
                                          if op.get("reason") == TIMEOUT and op.get("error_class") == "PoolTimeout")
    pool_timeouts = 0
    not_compared = sorted(p for p in states if p in incomplete)
    for process, state in sorted(states.items()):
        counted = int(state.get("counters", {}).get("pool_timeouts", 0))
        pool_timeouts += counted
        if process not in incomplete and counted != timeout_calls[process]:
            ev.add({"process": process, "pool_timeouts": counted, "pool_timeout_calls": timeout_calls[process],
                    "what": "the client pool counted a different number of acquire timeouts than the history holds"})
    counts = {"calls": len(calls), **{k: by_kind.get(k, 0) for k in ("ok", TIMEOUT, CANCELLED, "interrupted",
                                                                      "in_doubt", "unaccounted")},
              "agents": len(per_agent), "pool_counted_timeouts": pool_timeouts if states else None,
              "processes_not_compared": not_compared}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} call(s) or pool count(s) not accounted for as ok / "
                      "pool-timeout / cancelled")
    if in_doubt or incomplete:
        for op_id in in_doubt:
            ev.add({"op_id": op_id, "what": "in doubt: the call's end is not known"})
        why = (f"{len(in_doubt)} call(s) in doubt" if in_doubt else "") + \
            ("; " if in_doubt and incomplete else "") + ("a process's history is incomplete" if incomplete else "")
        return result(name, UNKNOWN, counts, ev, f"not every call can be accounted for: {why}")
    if not calls:
        return result(name, True, counts, ev, "no pool agent ran: no call to account for")
    return result(name, True, counts, ev, "every call is ok, pool-timeout or cancelled")


def aggregates(calls: list[Mapping[str, Any]], final: Mapping[str, Any]) -> CheckResult:
    """Each ok aggregate counted exactly the rows of its window (the table holds ids 1..facts_rows)."""
    name = "pool.aggregates"
    facts = final.get("facts_rows")
    if facts is None:
        return result(name, UNKNOWN, {}, None, "the seed size was not captured")
    ev = Evidence()
    checked = 0
    for op in calls:
        if op["outcome"] != OK:
            continue
        lo, hi = int(op["args"]["lo"]), int(op["args"]["hi"])
        expected = max(0, min(hi, int(facts)) - max(lo, 1) + 1)
        got = (op.get("result") or {}).get("rows")
        checked += 1
        if got != expected:
            ev.add({"op_id": op["op_id"], "agent": op["agent"], "window": [lo, hi], "rows": got, "expected": expected})
    counts = {"ok_calls": checked, "wrong": ev.total, "facts_rows": facts}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} aggregate(s) counted the wrong rows")
    return result(name, True, counts, ev, "every ok aggregate counted its whole window")


def client_idle(calls: list[Mapping[str, Any]], final: Mapping[str, Any],
                incomplete: frozenset[str] = frozenset()) -> CheckResult:
    """After the run each process's client pool is idle: nothing in use, nobody waiting, no leak seen.
    A leak names the agent that held the connection, for how long and in which call."""
    name = "pool.client_idle"
    if final.get("pool") not in (None, "client"):
        return result(name, True, {"pool": final.get("pool")}, None, "the client pool was not used")
    processes = {op["process"] for op in calls}
    states = {s["process"]: s.get("result", {}) for s in final.get("pool_states", [])
              if s.get("result", {}).get("kind") == "client"}
    ev = Evidence()
    leaked_agents: set[str] = set()
    for process, state in sorted(states.items()):
        for holder in state.get("holders", []):
            leaked_agents.add(holder["agent"])
            ev.add({"process": process, "pool": state.get("pool"), "agent": holder["agent"],
                    "op_id": holder.get("op_id"), "held_s": holder.get("held_s"),
                    "what": "still holds a connection after every agent stopped: leaked"})
        for leak in state.get("leaks", []):
            if leak["agent"] in leaked_agents and any(h.get("op_id") == leak.get("op_id")
                                                      for h in state.get("holders", [])):
                continue  # already named above
            leaked_agents.add(leak["agent"])
            ev.add({"process": process, "pool": leak.get("pool"), "agent": leak["agent"], "op_id": leak.get("op_id"),
                    "held_s": leak.get("held_s"), "what": "held a connection longer than the leak threshold"})
        if int(state.get("in_use", 0)) > len(state.get("holders", [])):
            ev.add({"process": process, "pool": state.get("pool"), "in_use": state["in_use"],
                    "holders_named": len(state.get("holders", [])),
                    "what": "connections still checked out after every agent stopped (no holder named for "
                            f"{int(state['in_use']) - len(state.get('holders', []))} of them)"})
        if int(state.get("waiting", 0)):
            ev.add({"process": process, "pool": state.get("pool"), "waiting": state["waiting"],
                    "what": "acquirers still queued after the run"})
    missing = sorted(processes - set(states))
    counts = {"processes": len(processes), "pool_states": len(states), "leaked_agents": sorted(leaked_agents),
              "in_use": sum(int(s.get("in_use", 0)) for s in states.values()),
              "waiting": sum(int(s.get("waiting", 0)) for s in states.values()), "missing_state": missing}
    if ev:
        agents = ", ".join(sorted(leaked_agents)) or "-"
        return result(name, False, counts, ev, f"client pool not idle after the run; leaked by: {agents}")
    if missing:
        why = "incomplete history" if set(missing) & incomplete else "no final pool state recorded"
        return result(name, UNKNOWN, counts, ev, f"{len(missing)} process(es) without a final pool state ({why})")
    return result(name, True, counts, ev, "every client pool ended idle: in use 0, waiting 0, no leak")


def bouncer_idle(final: Mapping[str, Any], incomplete: frozenset[str] = frozenset()) -> CheckResult:
    """After the run PgBouncer has no waiting client and none of the run's clients is still connected
    (a client left behind holds a server connection: named by its application_name)."""
    name = "pool.bouncer_idle"
    bouncer = final.get("bouncer")
    if bouncer is None:
        if final.get("pool") == "pgbouncer":
            return result(name, UNKNOWN, {}, None, "PgBouncer's final state was not captured")
        return result(name, True, {}, None, "PgBouncer was not used")
    ev = Evidence()
    for pool in bouncer.get("pools", []):
        if int(pool.get("cl_waiting") or 0):
            ev.add({"database": pool["database"], "cl_waiting": pool["cl_waiting"], "cl_active": pool["cl_active"],
                    "sv_active": pool["sv_active"], "what": "clients still waiting for a server connection"})
    of_lost = 0
    for client in bouncer.get("clients", []):
        if owner_process(str(client.get("application_name") or ""), incomplete) is not None:
            of_lost += 1  # a lost process keeps its clients: not judged
            continue
        ev.add({"database": client.get("database"), "agent": _agent_of(str(client.get("application_name") or "")),
                "state": client.get("state"), "connect_time": str(client.get("connect_time")),
                "what": "a client of the run is still connected after every agent stopped: leaked"})
    counts = {"cl_waiting": sum(int(p.get("cl_waiting") or 0) for p in bouncer.get("pools", [])),
              "cl_active": sum(int(p.get("cl_active") or 0) for p in bouncer.get("pools", [])),
              "sv_active": sum(int(p.get("sv_active") or 0) for p in bouncer.get("pools", [])),
              "clients_of_run": len(bouncer.get("clients", [])), "of_processes_with_incomplete_history": of_lost}
    if ev:
        agents = sorted({e["agent"] for e in ev.items if "agent" in e})
        return result(name, False, counts, ev, "PgBouncer not idle after the run"
                      + (f"; leaked by: {', '.join(agents)}" if agents else ""))
    if of_lost:
        return result(name, UNKNOWN, counts, ev, f"{of_lost} client(s) left by a process whose history is incomplete")
    return result(name, True, counts, ev, "PgBouncer idle: no waiting client, no client of the run left")


# ------------------------------------------------------------------------------------------ figures


def recovery_episodes(calls: Iterable[Mapping[str, Any]], queued_ms: float = QUEUED_MS) -> list[dict[str, float]]:
    """Periods when the pool was exhausted: chains of overlapping acquire waits of at least *queued_ms*.
    Each runs from the first queued acquire's request until the last of them got a connection (or gave
    up): from then on an acquire waits under *queued_ms* again."""
    spans = []
    for op in calls:
        wait = (op.get("result") or {}).get("wait_ms")
        if wait is None or float(wait) < queued_ms:
            continue
        start = float(op["invoke_ts"])
        spans.append((start, start + float(wait) / 1000.0))
    spans.sort()
    episodes: list[dict[str, float]] = []
    for start, end in spans:
        if episodes and start <= episodes[-1]["end"]:
            episodes[-1]["end"] = max(episodes[-1]["end"], end)
            episodes[-1]["queued"] += 1
        else:
            episodes.append({"start": start, "end": end, "queued": 1})
    for ep in episodes:
        ep["recovery_s"] = round(ep["end"] - ep["start"], 6)
    return episodes


def figures(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any]) -> dict[str, Any]:
    """Acquire-wait distribution, queueing, timeouts, cancellations, recovery and the pools' peaks."""
    calls = [op for op in ops if op["tool"] == TOOL]
    waits = sorted(float(op["result"]["wait_ms"]) for op in calls
                   if (op.get("result") or {}).get("wait_ms") is not None)
    queries = sorted(float(op["result"]["query_ms"]) for op in calls
                     if op["outcome"] == OK and (op.get("result") or {}).get("query_ms") is not None)
    episodes = recovery_episodes(calls)
    recoveries = sorted(ep["recovery_s"] for ep in episodes)
    samples = final.get("pool_samples", [])
    bouncer_samples = final.get("bouncer_samples", [])
    return {
        "pool": final.get("pool"), "pgbouncer_mode": final.get("pgbouncer_mode"),
        "wait_p50_ms": percentile(waits, 50), "wait_p95_ms": percentile(waits, 95),
        "wait_p99_ms": percentile(waits, 99), "wait_max_ms": waits[-1] if waits else math.nan,
        "queued_calls": sum(1 for w in waits if w >= QUEUED_MS),
        "pool_timeouts": sum(1 for op in calls if op.get("reason") == TIMEOUT),
        "cancelled": sum(1 for op in calls if op.get("reason") == CANCELLED),
        "query_p50_ms": percentile(queries, 50), "query_p95_ms": percentile(queries, 95),
        "exhaustion_episodes": len(episodes),
        "recovery_max_s": recoveries[-1] if recoveries else 0.0,
        "recovery_p95_s": percentile(recoveries, 95) if recoveries else 0.0,
        "client_waiting_max": max((int(s["waiting"]) for s in samples if s.get("in_use") is not None), default=None),
        "client_in_use_max": max((int(s["in_use"]) for s in samples if s.get("in_use") is not None), default=None),
        "bouncer_cl_waiting_max": max((int(s.get("cl_waiting") or 0) for s in bouncer_samples), default=None),
        "bouncer_sv_active_max": max((int(s.get("sv_active") or 0) for s in bouncer_samples), default=None),
        "bouncer_maxwait_max_s": max((int(s.get("maxwait") or 0) + int(s.get("maxwait_us") or 0) / 1e6
                                      for s in bouncer_samples), default=None),
    }


def gates(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
          limits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Recovery after an exhausting burst: the longest episode under ``gate_pool_recovery_s``."""
    episodes = recovery_episodes(op for op in ops if op["tool"] == TOOL)
    worst = max((ep["recovery_s"] for ep in episodes), default=0.0)
    out = gate("pool", "recovery_s", worst, "<", float(limits["gate_pool_recovery_s"]))
    out["note"] = "" if episodes else "the pool was never exhausted"
    return [out]


def plots(p: PlotInput) -> list[tuple[str, Any]]:
    """Acquire wait of every analytical call over time, with its p50/p95 per time bin."""
    import pandas as pd

    rows = [(float(op["invoke_ts"]), float(op["result"]["wait_ms"]), op.get("reason") == TIMEOUT)
            for op in p.ops if op["tool"] == TOOL and (op.get("result") or {}).get("wait_ms") is not None]
    if not rows or p.t0 is None:
        return []
    plt = pyplot()
    df = pd.DataFrame(rows, columns=["t", "wait_ms", "timeout"])
    df["t"] -= p.t0
    step = bin_seconds(float(df["t"].max()))
    served, timed_out = df[~df["timeout"]], df[df["timeout"]]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.scatter(served["t"], served["wait_ms"], s=6, color="lightsteelblue", label="served call")
    if len(timed_out):
        ax.scatter(timed_out["t"], timed_out["wait_ms"], s=18, marker="x", color="firebrick", label="pool timeout")
    if len(served):
        q = served.groupby((served["t"] // step) * step + step / 2)["wait_ms"].quantile([0.5, 0.95]).unstack()
        for col, label in zip(q.columns, ("p50", "p95"), strict=True):
            ax.plot(q.index, q[col], label=f"{label} ({step:g} s bins)", linewidth=1.2)
    ax.set_xlabel("seconds since start (call invoked)")
    ax.set_ylabel("acquire wait (ms)")
    ax.legend(loc="upper left")
    p.shade(ax)
    ax.set_title("Pool acquire wait over time (analytical calls)")
    return [("Pool acquire wait over time", fig)]


SPEC = Checks(
    view=PoolView.of,
    checks=(("pool.accounted", lambda v: accounted(v.calls, v.final, v.incomplete)),
            ("pool.aggregates", lambda v: aggregates(v.calls, v.final)),
            ("pool.client_idle", lambda v: client_idle(v.calls, v.final, v.incomplete)),
            ("pool.bouncer_idle", lambda v: bouncer_idle(v.final, v.incomplete))),
    figures=figures,
    gates=gates,
    plots=plots,
)
