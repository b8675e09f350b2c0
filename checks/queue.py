"""Checks of the queue scenario: every job accounted for, no duplicated effect, capacity, priority, rate limits.

Inputs: the ``submit`` and ``execute`` operations of the history, and the final state captured by
:func:`toolclash.tools.queue.snapshot`:

* ``effects`` — PostgreSQL rows ``[seq, effect_key, job_id, delivery, priority, consumer]``, one per
  applied effect (the exactly-once evidence; PostgreSQL is durable, so this side is always known);
* ``redis.jobs`` — ``job -> [agent, priority, admitted_us, claimed_us, done_us, deliveries, state]``
  on the Redis server's clock (first claim; 0 = not yet; state q queued, f in flight, d done), plus the
  high-water mark of occupancy, the queue's final sizes and the server's identity;
* ``meta`` — what reset noted: the run marker written to Redis, the Redis server's run id, the limits.

Redis may have restarted during the run (its server run id changed) or lost its data (the run marker
is gone). Then a job acknowledged to an agent but absent from Redis with no effect is *unknown*
(the backend cannot tell whether it was lost by the restart), never silently fine or falsely lost.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from checks import UNKNOWN, CheckResult, Checks, Evidence, result, run_checks
from checks.gates import gate, percentile
from checks.plotting import PlotInput, pyplot
from toolclash.history import FAIL, OK
from toolclash.tools.queue import SCENARIO as QUEUE

TOOLS = ("submit", "execute")
PRIORITY_NAMES = ("critical", "normal", "bulk")
BUSINESS_REJECTIONS = QUEUE.rejections
# job record fields
AGENT, PRIO, ADMITTED, CLAIMED, DONE, DELIVERIES, STATE = range(7)


def _name(prio: int) -> str:
    return PRIORITY_NAMES[prio] if 0 <= prio < len(PRIORITY_NAMES) else str(prio)


class QueueView:
    """Indexes built once and shared by the checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.submits: dict[str, Mapping[str, Any]] = {}
        self.executes: list[Mapping[str, Any]] = []
        for op in ops:
            if op["tool"] == "submit":
                self.submits[op["op_id"]] = op
            elif op["tool"] == "execute":
                self.executes.append(op)
        meta = final.get("meta") or {}
        self.meta = meta
        self.config: dict[str, Any] = dict(meta.get("config") or {})
        """The limits the run's reset recorded; a limit it did not record is never assumed (its check is unknown)."""
        self.effects: dict[str, list[list[Any]]] = defaultdict(list)
        for row in final.get("effects") or []:
            self.effects[row[2]].append(row)
        self.redis: Mapping[str, Any] | None = final.get("redis")
        self.redis_error = final.get("redis_error")
        self.restarted = bool(self.redis and meta and self.redis.get("server_run_id") != meta.get("redis_run_id"))
        self.data_lost = bool(self.redis and meta and self.redis.get("marker") != meta.get("marker"))
        self.jobs: Mapping[str, list[Any]] | None = None if self.redis is None or self.data_lost \
            else self.redis.get("jobs")
        self.queued: frozenset[str] | None = None
        """Jobs still in the ready set or leased (None: the snapshot did not list them; trust the records)."""
        if self.redis is not None and "ready_jobs" in self.redis:
            self.queued = frozenset(self.redis["ready_jobs"]) | frozenset(self.redis.get("inflight_jobs") or ())
        self.incomplete = frozenset(incomplete_processes)

    _columns: dict[str, np.ndarray] | None = None

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """The job records as int64 columns (priority, admitted, claimed, done, deliveries), built once."""
        if self._columns is None:
            recs = list((self.jobs or {}).values())
            n = len(recs)
            self._columns = {key: np.fromiter((r[i] for r in recs), dtype=np.int64, count=n)
                             for key, i in (("prio", PRIO), ("admitted", ADMITTED), ("claimed", CLAIMED),
                                            ("done", DONE), ("deliveries", DELIVERIES))}
        return self._columns

    def still_queued(self, job: str, rec: list[Any]) -> bool:
        """Queued or leased after the drain: someone will still execute it (a job claimed without a lease
        whose consumer died is in neither set: nobody ever will)."""
        if rec[STATE] not in ("q", "f"):
            return False
        return self.queued is None or job in self.queued

    @property
    def redis_doubt(self) -> str | None:
        """Why Redis's side of the final state cannot be trusted to hold every admitted job (None: it can)."""
        if self.redis is None:
            return f"the Redis state was not captured ({self.redis_error or 'unknown reason'})"
        if self.data_lost:
            return "Redis lost the run's data (its run marker is gone): a restart without persistence"
        if self.restarted:
            return "Redis restarted during the run (its server run id changed)"
        return None

    def from_incomplete_process(self, op_id: str) -> bool:
        return op_id.rpartition("-")[0] in self.incomplete

    def missing_limits(self, *keys: str) -> CheckResult | None:
        """None when the reset recorded every limit in *keys*; else what the check cannot judge without them."""
        missing = [k for k in keys if self.config.get(k) is None]
        if not missing:
            return None
        return result("", UNKNOWN, {"missing_limits": missing}, None, "not checked: needs the limits the run's "
                      f"reset recorded (queue metadata: {', '.join(missing)})")


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


# ------------------------------------------------------------------------------------------ accounting


def accounting(v: QueueView) -> CheckResult:
    """Every acknowledged submission is executed once or still queued after the drain; none is lost; nothing
    rejected or never submitted was executed."""
    name = "queue.accounting"
    c: Counter[str] = Counter()
    ev = Evidence()
    doubt = v.redis_doubt
    jobs = v.jobs if v.jobs is not None else {}
    effects = v.effects
    acknowledged = executed = 0
    for job, op in v.submits.items():
        outcome = op["outcome"]
        if outcome == OK:
            acknowledged += 1
            if job in effects:  # the common case, first
                executed += 1
                continue
            rec = jobs.get(job)
            if rec is not None and v.still_queued(job, rec):
                c["queued_after_drain"] += 1
            elif rec is not None and rec[STATE] == "d":
                c["done_without_effect"] += 1
                ev.add({"job": job, "agent": op["agent"], "what": "a consumer acked it but its effect is missing",
                        "record": rec})
            elif rec is not None:
                c["lost"] += 1
                ev.add({"job": job, "agent": op["agent"], "priority": op["args"].get("priority"), "record": rec,
                        "what": "acknowledged, claimed, never executed, and neither queued nor leased: lost"})
            elif doubt is not None:
                c["missing_after_restart"] += 1
            else:
                c["lost"] += 1
                ev.add({"job": job, "agent": op["agent"], "priority": op["args"].get("priority"),
                        "what": "acknowledged (ok) but never executed and no longer queued: lost"})
            continue
        eff = effects.get(job)
        rec = jobs.get(job)
        if outcome == FAIL:
            c["rejected" if op.get("reason") in BUSINESS_REJECTIONS else "failed"] += 1
            if eff or rec is not None:
                c["phantom"] += 1
                ev.add({"job": job, "agent": op["agent"], "what": f"reported fail ({op.get('reason')}) but "
                        f"{'executed' if eff else 'admitted'}", "effects": len(eff or ())})
        else:
            c["unknown_admitted" if eff or rec is not None else "unknown_not_admitted"] += 1
    c["acknowledged"], c["executed"] = acknowledged, executed
    doubtful = 0
    submits = v.submits
    strays = [j for j in jobs if j not in submits] + [j for j in effects if j not in submits and j not in jobs]
    for job in strays:
        if v.from_incomplete_process(job):
            doubtful += 1
            continue
        c["phantom"] += 1
        ev.add({"job": job, "what": "a job no agent recorded submitting", "effects": len(effects.get(job, ())),
                "record": jobs.get(job)})
    c["from_incomplete_history"] = doubtful
    counts = dict(sorted(c.items()))
    if ev:
        return result(name, False, counts, ev, f"{c['lost']} lost, {c['phantom']} phantom, "
                      f"{c['done_without_effect']} done without effect")
    if c["queued_after_drain"]:  # nobody executed them (a consumer that never executes would look just so)
        drained = (v.redis or {}).get("drain") or {}
        for job, op in v.submits.items():
            if op["outcome"] == OK and job not in effects and job in jobs and v.still_queued(job, jobs[job]):
                ev.add({"job": job, "agent": op["agent"], "record": jobs[job],
                        "what": "acknowledged and never executed: still queued when the drain ended"})
        how = "it gave up at its deadline" if drained.get("timed_out") else f"drain: {drained or 'none recorded'}"
        return result(name, UNKNOWN, counts, ev, f"{c['queued_after_drain']} acknowledged job(s) never executed: "
                      f"still queued after the drain ({how}); whether they ever will be is not known")
    if c["missing_after_restart"]:
        return result(name, UNKNOWN, counts, ev, f"{c['missing_after_restart']} acknowledged job(s) neither executed "
                      f"nor in Redis: {doubt}, so lost or never kept cannot be told")
    if doubtful:
        return result(name, UNKNOWN, counts, ev, f"{doubtful} job(s) from a process whose history is incomplete")
    return result(name, True, counts, ev, f"{c['executed']} executed, none lost"
                  + (f" (Redis restarted: {doubt})" if doubt else ""))


# ------------------------------------------------------------------------------------------ duplicates


def duplicates(v: QueueView) -> CheckResult:
    """No job's effect applied more than once (PostgreSQL rows by job id)."""
    name = "queue.duplicates"
    ev = Evidence()
    extra = 0
    for job, rows in v.effects.items():
        if len(rows) > 1:
            extra += len(rows) - 1
            op = v.submits.get(job, {})
            ev.add({"job": job, "effects": len(rows), "agent": op.get("agent"),
                    "applied": [{"seq": r[0], "delivery": r[3], "consumer": r[5]} for r in rows[:5]],
                    "what": "a redelivered job applied its effect again"})
    counts = {"jobs_with_effects": len(v.effects), "duplicated_jobs": ev.total, "extra_effects": extra}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} job(s) applied more than once ({extra} extra effects)")
    return result(name, True, counts, ev, "every executed job applied its effect exactly once")


# ------------------------------------------------------------------------------------------ capacity


def capacity(v: QueueView) -> CheckResult:
    """Queued + in flight never exceeded the capacity: from each admission's reply, from the in-Redis
    high-water mark, and from the job records replayed in time order."""
    name = "queue.capacity"
    if (missing := v.missing_limits("queue_capacity")) is not None:
        return result(name, UNKNOWN, missing.counts, None, missing.summary)
    cap = int(v.config["queue_capacity"])
    ev = Evidence()
    over_replies = 0
    for job, op in v.submits.items():
        occ = (op.get("result") or {}).get("occupancy")
        if op["outcome"] == OK and occ is not None and int(occ) > cap:
            over_replies += 1
            ev.add({"job": job, "agent": op["agent"], "occupancy_after_admission": int(occ), "capacity": cap,
                    "source": "admission reply"})
    counts: dict[str, Any] = {"capacity": cap, "admissions_over_capacity": over_replies}
    if v.redis is None or v.jobs is None:
        counts["hwm"] = None
        if ev:
            return result(name, False, counts, ev, f"{over_replies} admission(s) beyond capacity {cap}")
        return result(name, UNKNOWN, counts, ev, v.redis_doubt or "no Redis state")
    hwm = int(v.redis.get("hwm") or 0)
    counts["hwm"] = hwm
    if hwm > cap:
        ev.add({"hwm": hwm, "capacity": cap, "source": "in-Redis high-water mark"})
    cols = v.columns
    peak, peak_at = _replay_peak(cols["admitted"], cols["done"])
    counts["replayed_peak"] = peak
    if peak > cap:
        ev.add({"replayed_peak": peak, "capacity": cap, "at_us": peak_at, "source": "job records replayed"})
    if ev:
        return result(name, False, counts, ev, f"occupancy exceeded capacity {cap} (high-water mark {hwm}, "
                      f"replayed peak {peak})")
    return result(name, True, counts, ev, f"occupancy peaked at {max(hwm, peak)} of {cap}")


def _replay_peak(starts: np.ndarray, ends: np.ndarray) -> tuple[int, int]:
    """Highest number of jobs inside [start, end) over time (end 0: still inside), and when; at equal times a
    leaving job counts first (the benefit of the doubt)."""
    if not len(starts):
        return 0, 0
    ends = ends[ends > 0]
    times = np.concatenate((starts, ends))
    deltas = np.concatenate((np.ones(len(starts), dtype=np.int64), -np.ones(len(ends), dtype=np.int64)))
    order = np.lexsort((deltas, times))
    occupancy = np.cumsum(deltas[order])
    i = int(np.argmax(occupancy))
    return int(occupancy[i]), int(times[order][i])


# ------------------------------------------------------------------------------------------ priority


def priority(v: QueueView) -> CheckResult:
    """No job started while a more urgent one had been waiting longer than the tolerance."""
    name = "queue.priority"
    if (missing := v.missing_limits("queue_inversion_tolerance_ms")) is not None:
        return result(name, UNKNOWN, missing.counts, None, missing.summary)
    tol_us = round(float(v.config["queue_inversion_tolerance_ms"]) * 1000)
    if v.jobs is None:
        return result(name, UNKNOWN, {"tolerance_ms": tol_us / 1000}, None, v.redis_doubt or "no Redis state")
    events: list[tuple[int, int, int, str]] = []  # (time, kind 0 claim / 1 admit, prio, job)
    for job, rec in v.jobs.items():
        events.append((rec[ADMITTED], 1, rec[PRIO], job))
        if rec[CLAIMED]:
            events.append((rec[CLAIMED], 0, rec[PRIO], job))
    events.sort()
    levels = 1 + max((rec[PRIO] for rec in v.jobs.values()), default=0)
    waiting: list[list[tuple[int, str]]] = [[] for _ in range(levels)]
    claimed: set[str] = set()
    ev = Evidence()
    worst_us = 0
    claims = 0
    for ts, kind, prio, job in events:
        if kind == 1:
            heapq.heappush(waiting[prio], (ts, job))
            continue
        claims += 1
        claimed.add(job)
        for p in range(prio):
            heap = waiting[p]
            while heap and heap[0][1] in claimed:
                heapq.heappop(heap)
            if heap and ts - heap[0][0] > tol_us:
                waited = ts - heap[0][0]
                worst_us = max(worst_us, waited)
                ev.add({"started": job, "priority": _name(prio), "at_us": ts, "while_waiting": heap[0][1],
                        "its_priority": _name(p), "waited_ms": round(waited / 1000, 3),
                        "what": "a lower-priority job started while a more urgent one waited"})
                break
    counts = {"claims": claims, "inversions": ev.total, "tolerance_ms": tol_us / 1000,
              "worst_wait_ms": round(worst_us / 1000, 3)}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} priority inversion(s) beyond {tol_us / 1000:g} ms")
    return result(name, True, counts, ev, "every job started after every more urgent job that waited longer "
                  "than the tolerance")


# ------------------------------------------------------------------------------------------ rate limits


def _window_violations(order: np.ndarray, all_times: np.ndarray, all_groups: np.ndarray, jobs: list[str],
                       who: list[str], limit: int, window_us: int, ev: Evidence) -> int:
    """Admissions taken in *order* (by group, then time): every admission that is the (limit+1)-th within one
    window of its group (``t[i] - t[i-limit] < W``) is a violation; the first ones are named."""
    if len(order) <= limit:
        return 0
    times, groups = all_times[order], all_groups[order]
    bad = (groups[limit:] == groups[:-limit]) & (times[limit:] - times[:-limit] < window_us)
    hits = np.flatnonzero(bad) + limit
    for i in hits[:ev.cap]:
        span = range(int(i) - limit, int(i) + 1)
        ev.add({"who": who[int(groups[i])], "admissions_in_window": limit + 1, "limit": limit,
                "window_ms": window_us / 1000, "span_ms": round(int(times[i] - times[i - limit]) / 1000, 3),
                "jobs": [jobs[int(order[j])] for j in span][:10]})
    ev.total += max(0, len(hits) - ev.cap)
    return len(hits)


def rate_limit(v: QueueView) -> CheckResult:
    """No agent, and not all agents together, had more admissions than the limit in any sliding window."""
    name = "queue.rate_limit"
    if (missing := v.missing_limits("queue_rate_window_s", "queue_rate_per_agent", "queue_rate_global")) is not None:
        return result(name, UNKNOWN, missing.counts, None, missing.summary)
    window_us = round(float(v.config["queue_rate_window_s"]) * 1_000_000)
    per_agent, overall = int(v.config["queue_rate_per_agent"]), int(v.config["queue_rate_global"])
    admitted: dict[str, tuple[int, str]] = {}  # job -> (time, agent)
    if v.jobs is not None:
        for job, rec in v.jobs.items():
            admitted[job] = (rec[ADMITTED], rec[AGENT])
    unresolved = 0
    for job, op in v.submits.items():
        if job in admitted:
            continue
        res = op.get("result") or {}
        if op["outcome"] == OK and res.get("admitted_us"):
            admitted[job] = (int(res["admitted_us"]), op["agent"])
        elif op["outcome"] not in (OK, FAIL) and v.jobs is None:
            unresolved += 1
    jobs = list(admitted)
    agents: dict[str, int] = {}
    codes = np.fromiter((agents.setdefault(a, len(agents)) for _t, a in admitted.values()), dtype=np.int64,
                        count=len(jobs))
    times = np.fromiter((t for t, _a in admitted.values()), dtype=np.int64, count=len(jobs))
    names = list(agents)
    ev = Evidence()
    agent_violations = _window_violations(np.lexsort((times, codes)), times, codes, jobs, names, per_agent,
                                          window_us, ev)
    global_violations = _window_violations(np.argsort(times, kind="stable"), times,
                                           np.zeros(len(jobs), dtype=np.int64), jobs, ["all agents"], overall,
                                           window_us, ev)
    counts = {"admissions": len(admitted), "agents": len(agents), "limit_per_agent": per_agent,
              "limit_global": overall, "window_ms": window_us / 1000, "agent_violations": agent_violations,
              "global_violations": global_violations, "unresolved_unknown_submissions": unresolved}
    if ev and v.data_lost:
        return result(name, UNKNOWN, counts, ev, f"{agent_violations + global_violations} window(s) over the limit, "
                      "but Redis lost its data and the limiter's windows with it: a limiter fault and the restart "
                      "cannot be told apart")
    if ev:
        return result(name, False, counts, ev, f"rate limit exceeded: {agent_violations} per-agent, "
                      f"{global_violations} global window(s)")
    if unresolved:
        return result(name, UNKNOWN, counts, ev, f"{unresolved} in-doubt submission(s) and no Redis records to "
                      "resolve them")
    return result(name, True, counts, ev, "no window held more admissions than its limit")


# ------------------------------------------------------------------------------------------ figures, gates


def _nearest_rank(sorted_values: np.ndarray, q: float) -> float:
    """:func:`checks.sla.percentile` (nearest rank) on an ascending array."""
    if not len(sorted_values):
        return math.nan
    return float(sorted_values[max(1, math.ceil(q / 100.0 * len(sorted_values))) - 1])


def _waits_by_priority(v: QueueView) -> dict[str, dict[str, Any]]:
    """Queue wait (admitted to first claimed) P50/P95 per priority, from the job records."""
    cols = v.columns
    out = {}
    for level, name in enumerate(PRIORITY_NAMES):
        mask = (cols["prio"] == level) & (cols["claimed"] > 0)
        values = np.sort(cols["claimed"][mask] - cols["admitted"][mask]) / 1000.0
        out[name] = {"jobs": len(values), "p50_ms": _nearest_rank(values, 50), "p95_ms": _nearest_rank(values, 95)}
    return out


def figures(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any]) -> dict[str, Any]:
    """Admissions, rejections by cause, queue wait by priority, redeliveries, processing latency, occupancy.

    The job figures (waits, depths, redeliveries) are over the jobs whose submission is among *ops*: a ramp
    stage's figures are those of the jobs submitted in that stage, not the whole run's again."""
    v = QueueView(ops, final)
    if v.jobs is not None:
        v.jobs = {job: rec for job, rec in v.jobs.items() if job in v.submits}
    rejections: Counter[str] = Counter()
    admissions = 0
    for op in v.submits.values():
        if op["outcome"] == OK:
            admissions += 1
        elif op["outcome"] == FAIL:
            rejections[op.get("reason") or "?"] += 1
    wait_by_priority = _waits_by_priority(v)
    cols = v.columns
    redeliveries = int(np.maximum(cols["deliveries"] - 1, 0).sum())
    peak_depth = {}  # ready jobs of a priority: admitted, not yet claimed
    for level, name in enumerate(PRIORITY_NAMES):
        mask = cols["prio"] == level
        peak_depth[name] = _replay_peak(cols["admitted"][mask], cols["claimed"][mask])[0]
    claimed = cols["claimed"] > 0
    peak_inflight = _replay_peak(cols["claimed"][claimed], cols["done"][claimed])[0]  # first claim to done
    processing = sorted((op["complete_ts"] - op["invoke_ts"]) * 1000.0 for op in v.executes if op["outcome"] == OK)
    redis = v.redis or {}
    return {"queue_admissions": admissions, "queue_rejections": dict(sorted(rejections.items())),
            "queue_wait_by_priority": wait_by_priority, "queue_peak_depth_by_priority": peak_depth,
            "queue_peak_inflight": peak_inflight,
            "queue_redeliveries": redeliveries,
            "queue_executions_in_history": len(v.executes),
            "queue_processing_p95_ms": percentile(processing, 95), "queue_hwm": redis.get("hwm"),
            "queue_final_ready": redis.get("ready"), "queue_final_inflight": redis.get("inflight"),
            "queue_drain": redis.get("drain"), "queue_redis_restarted": v.restarted}


def gates(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
          limits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Critical jobs' queue wait P95 stays under ``--gate-critical-wait-p95-ms`` while bulk jobs may wait."""
    fig = _waits_by_priority(QueueView((), final))["critical"]  # the history is not needed for this one
    value = fig["p95_ms"] if fig["jobs"] else None
    return [gate("queue", "critical_wait_p95_ms", value, "<", float(limits["gate_critical_wait_p95_ms"]),
                 "no critical job was started")]


def queue_depth(jobs: Iterable[list[Any]]) -> Any:
    """Ready jobs per priority over time (epoch seconds), replayed from the queue's job records: +1 when a job
    is admitted, -1 when it is first claimed (an admission sorts before a claim at the same microsecond)."""
    import pandas as pd

    events = []
    for rec in jobs:
        if int(rec[ADMITTED]):
            events.append((int(rec[ADMITTED]) / 1e6, PRIORITY_NAMES[int(rec[PRIO])], 1))
            if int(rec[CLAIMED]):
                events.append((int(rec[CLAIMED]) / 1e6, PRIORITY_NAMES[int(rec[PRIO])], -1))
    df = pd.DataFrame(sorted(events, key=lambda e: (e[0], -e[2])), columns=["t", "priority", "delta"])
    df["delta"] = df["delta"].astype("int64")  # an empty frame's columns are object dtype
    df["depth"] = df.groupby("priority")["delta"].cumsum()
    return df


def _depth_plot(p: PlotInput) -> Any:
    df = queue_depth(((p.final("queue").get("redis") or {}).get("jobs") or {}).values())
    if not len(df):
        return None
    plt = pyplot()
    base = p.t0 if p.t0 is not None else float(df["t"].min())
    df["t"] -= base
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for name in PRIORITY_NAMES:
        part = df[df["priority"] == name]
        if len(part):
            ax.step(part["t"], part["depth"], where="post", label=name, linewidth=1.2)
    capacity = p.setting("queue_capacity", None)
    note = ""
    if capacity is not None:
        note = f"; capacity {capacity} for the whole queue, ready + in flight"
        if float(df["depth"].max()) >= 0.2 * float(capacity):  # else the line would flatten the curves
            ax.axhline(float(capacity), color="red", linestyle=":", label="capacity (ready + in flight)")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("ready jobs (admitted, not claimed)")
    ax.legend(loc="best", title="priority")
    p.shade(ax, base)
    ax.set_title(f"Queue depth by priority (replayed from the job records{note})")
    return fig


def _wait_plot(p: PlotInput) -> Any:
    waits = {name: w for name, w in (p.figures("queue").get("queue_wait_by_priority") or {}).items() if w.get("jobs")}
    if not waits:
        return None
    plt = pyplot()
    names = list(waits)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = range(len(names))
    for offset, key, color in ((-0.2, "p50_ms", "steelblue"), (0.2, "p95_ms", "darkorange")):
        vals = [float(waits[n][key]) if waits[n].get(key) is not None else math.nan for n in names]
        ax.bar([i + offset for i in x], vals, width=0.4, color=color, label=key.replace("_ms", ""))
    limit = p.setting("gate_critical_wait_p95_ms", None)
    if limit is not None and "critical" in names:
        i = names.index("critical")
        ax.hlines(float(limit), i - 0.45, i + 0.45, color="red", linestyle=":", label="critical P95 gate")
    ax.set_xticks(list(x), [f"{n} ({waits[n]['jobs']} jobs)" for n in names])
    ax.set_ylabel("queue wait, admitted → first claimed (ms)")
    ax.legend(loc="best")
    ax.set_title("Queue wait by priority")
    return fig


def plots(p: PlotInput) -> list[tuple[str, Any]]:
    """Queue depth by priority over time, and queue wait by priority."""
    out = []
    for title, draw in (("Queue depth by priority", _depth_plot), ("Queue wait by priority", _wait_plot)):
        fig = draw(p)
        if fig is not None:
            out.append((title, fig))
    return out


SPEC = Checks(
    view=QueueView,
    checks=(("queue.accounting", accounting), ("queue.duplicates", duplicates), ("queue.capacity", capacity),
            ("queue.priority", priority), ("queue.rate_limit", rate_limit)),
    figures=figures,
    gates=gates,
    plots=plots,
)
