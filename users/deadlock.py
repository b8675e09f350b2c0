"""Deadlock agents: groups of agents lock resources in a cycle, released together from barriers.

The n-th deadlock agent of a process is member ``(n-1) % k`` of group ``(n-1) // k`` (k = cycle size) and
has priority level = its member number (0 is the lowest: the intended victim). Every round the
members of a group meet at the group's barrier (:class:`users.groups.GroupBarrier`, per process: a group lives in
one process), take their first lock, meet again, then ask for their second lock: the group's cycle
forms. A group that is not complete yet (agents still spawning) runs its rounds without a cycle.

Cascade mode: agents run rounds on private rows (no waits); every ``--cascade-every-s`` seconds all
of them meet at the run-wide barrier (``rt.barrier``, across workers: ``--sync-parties`` must then be
the number of deadlock agents when other agents run too) and form their cycles at once.
"""

from __future__ import annotations

import time
from typing import Any

from locust import task
from locust.exception import StopUser

from toolclash import db
from toolclash.backend import application_name
from toolclash.tools import Call
from toolclash.tools import deadlock as dl
from users.agent import Agent
from users.groups import group_barrier, next_index
from users.observe import observe

LOCK_WAITED_S = 0.01
"""An attempt that waited at least this long for its second lock counts as a lock wait (``lock_waits``)."""


class _Cycles:
    """The attempts of the members of each cycle round in flight in this process (a group lives in one
    process), so that the victim can tell when its cycle was complete; a round is forgotten when all its
    members have finished, and the oldest rounds when too many are left (members that never came)."""

    LIMIT = 512

    def __init__(self) -> None:
        self.rounds: dict[str, list[list[dict[str, Any]]]] = {}
        self.finished: dict[str, int] = {}

    def join(self, cycle: str, tries: list[dict[str, Any]]) -> None:
        self.rounds.setdefault(cycle, []).append(tries)
        while len(self.rounds) > self.LIMIT:
            oldest = next(iter(self.rounds))
            self.rounds.pop(oldest)
            self.finished.pop(oldest, None)

    def done(self, cycle: str) -> list[list[dict[str, Any]]]:
        """One member finished: the round's members' attempts (every member joined before any could finish)."""
        members = self.rounds.get(cycle, [])
        self.finished[cycle] = self.finished.get(cycle, 0) + 1
        if self.finished[cycle] >= len(members):
            self.rounds.pop(cycle, None)
            self.finished.pop(cycle, None)
        return members


_cycles = _Cycles()
_left_open: list[Any] = []
"""Sessions a victim left inside a transaction on purpose (``--fault victim_left_open``): the checks must see them."""


class DeadlockAgent(Agent):
    """An AI agent that updates two shared resources per tool call, in an order that closes a cycle."""

    abstract = False
    SCENARIO = "deadlock"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.conn: Any = None
        self.tool: dl.DeadlockTool | None = None
        self.round = 0
        self.cascades = 0
        self.t0: float | None = None
        self.aborted = False
        self.left_open = False

    def wait_time(self) -> float:
        think = self.rng.uniform(self.settings.wait_min, self.settings.wait_max)
        if self.opts.deadlock_mode == "cascade" and self.t0 is not None:
            return max(0.0, min(think, self._next_cascade_at() - time.monotonic()))
        return think

    def on_start(self) -> None:
        if not self.begin():  # the run was aborted at test_start
            self.aborted = True  # StopUser here would be logged with a traceback by Locust; the task raises it
            return
        self.size = dl.cycle_size(self.opts)
        index = next_index(self.rt.run_id)
        self.cycle_group, self.member = dl.member_of(index, self.size)
        self.level = self.member
        self.process = self.rt.process
        self.first, self.second = dl.cycle_resources(self.process, self.cycle_group, self.member, self.size)
        self.own = dl.own_resources(self.agent)
        self.barrier = group_barrier(self.rt.run_id, self.cycle_group)
        self._connect()
        self.barrier.join(self.agent)

    def _connect(self) -> bool:
        start = time.perf_counter()
        url = dl.agent_url(self.rt.urls["DATABASE_URL"], self.level, self.opts.priority)
        try:
            self.conn = self.rt.track(db.connect(url, timeout=self.settings.connect_timeout_s,
                                                 application_name=application_name(self.rt.run_id, self.agent)))
            self.session = dl.prepare_session(self.conn, self.level, self.opts.priority, self.opts.lock_timeout_ms)
            dl.ensure_resources(self.conn, [self.first, self.second, *self.own])
        except (db.ConnectError, db.psycopg2.Error) as exc:  # counted as a failure; the next task tries again
            db.close_quietly(self.conn)
            self.conn = None
            self.report_failure("connect", "postgresql", start, exc)
            return False
        self.tool = dl.DeadlockTool(self.conn, agent=self.agent, priority=self.opts.priority, fault=self.fault,
                                    rng=self.rng)
        return True

    def _next_cascade_at(self) -> float:
        assert self.t0 is not None
        return self.t0 + (self.cascades + 1) * self.opts.cascade_every_s

    def _meet(self, name: str) -> bool:
        """Cascade mode: the run-wide barrier; cycle mode: the group's (``name`` ends in its phase)."""
        if self.opts.deadlock_mode == "cascade":
            return self.rt.barrier(name, self.settings.sync_timeout_s)
        if self.barrier.wait(name.rsplit("-", 1)[1], self.agent, self.settings.sync_timeout_s):
            return True
        self.rt.bump("deadlock_group_barrier_timeouts")
        return False

    @task
    def lock_round(self) -> None:
        if self.aborted:
            raise StopUser
        if (self.conn is None or self.conn.closed) and not self._connect():
            return
        if self.opts.deadlock_mode == "cycle":
            self.round += 1
            self._cycle_round()
            return
        if self.t0 is None:  # every agent starts its clock at the same instant
            self._meet("dl-start")
            self.t0 = time.monotonic()
        if time.monotonic() >= self._next_cascade_at():
            self.cascades += 1
            self._cycle_round(cascade=self.cascades)
        else:
            self._call(self.own[0], self.own[1], f"{self.agent}:solo", {"kind": "solo"}, None)

    def _cycle_round(self, cascade: int | None = None) -> None:
        if cascade is not None:
            label = f"c{cascade}"
            self._meet(f"dl-{label}-go")
        elif self._meet("dl-group-go"):
            label = f"r{self.barrier.round}"  # the group's round: the same for every member it released
        else:
            label = f"x{self.round}-{self.agent}"  # went on alone: a cycle of one, never judged
        args = {"kind": "cycle", "round": label, "group": self.cycle_group, "member": self.member,
                "priority": self.level, "size": self.size, "priority_mode": self.opts.priority,
                "deadlock_timeout": self.session["deadlock_timeout"], "lock_timeout": self.session["lock_timeout"]}
        if cascade is not None:
            args["cascade"] = cascade
        cycle = f"{self.process}:{label}:g{self.cycle_group}"
        self._call(self.first, self.second, cycle, args,
                   lambda: self._meet(f"dl-{label}-locked" if cascade is not None else "dl-group-locked"))

    def _call(self, first: str, second: str, cycle: str, args: dict[str, Any], between: Any) -> None:
        assert self.tool is not None
        tool = self.tool
        args = {**args, "cycle": cycle, "first": first, "second": second, "backend_pid": self.conn.get_backend_pid()}
        in_cycle = args["kind"] == "cycle"

        def run(c: Call) -> Call:
            if in_cycle:  # the group's members are in this process: the victim reads their request times
                _cycles.join(cycle, c.result.setdefault("tries", []))
            return tool.lock_round(c, first, second, cycle=cycle, between=between)

        call = self.client.call(dl.TOOL, self.strategy, args, run)
        self._record(call, cycle if in_cycle else None)
        if call.reason and call.reason.startswith("connection"):
            db.close_quietly(self.conn)
            self.conn = None
        elif self.fault == "victim_left_open" and not self.left_open and self.conn is not None \
                and any(t.get("sqlstate") in dl.VICTIM_STATES for t in call.result.get("tries") or []):
            self._leave_open()

    def _leave_open(self) -> None:
        """The planted fault: a victim abandons its session inside a transaction it never ends (once per agent);
        the session outlives the runtime's clean-up, as a leaked one would."""
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1")  # opens a transaction; nobody ever commits or rolls it back
        except db.psycopg2.Error:
            return
        self.left_open = True
        _left_open.append(self.conn)
        self.rt.forget(self.conn)
        self.conn = None  # the next round connects anew

    def _record(self, call: Call, cycle: str | None) -> None:
        """Live metrics of one call from its attempts' times: the wait for the second lock of every attempt
        (``toolclash_lock_wait_seconds``), the victims' and lock timeouts' counts, and, when this agent was its
        cycle's victim, the detection time as ``checks/deadlock.py`` defines it (victim's error − the last
        member's request for its second lock)."""
        tries = call.result.get("tries") or []
        labels = (("tool", dl.TOOL),)
        for t in tries:
            end = t.get("t_got") or t.get("t_err")
            if t.get("t_req") is not None and end is not None:
                waited = max(0.0, float(end) - float(t["t_req"]))
                observe("toolclash_lock_wait_seconds", labels, waited)
                if waited >= LOCK_WAITED_S:
                    self.rt.bump("lock_waits")
            if t.get("sqlstate") == "40P01":
                self.rt.bump("deadlock_victims")
            elif t.get("sqlstate") == "55P03":
                self.rt.bump("lock_timeouts")
        if cycle is None:
            return
        members = _cycles.done(cycle)
        if not tries or tries[0].get("sqlstate") not in dl.VICTIM_STATES or tries[0].get("t_err") is None:
            return
        requests = [m[0].get("t_req") if m else None for m in members]
        victims = [m for m in members if m and m[0].get("sqlstate") in dl.VICTIM_STATES]
        if len(members) == self.size and None not in requests and len(victims) == 1:
            detection = float(tries[0]["t_err"]) - max(float(r) for r in requests if r is not None)
            observe("toolclash_deadlock_detection_seconds", labels, max(0.0, detection))
            self.rt.bump("deadlock_detections")

    def on_stop(self) -> None:
        if hasattr(self, "barrier"):
            self.barrier.leave(self.agent)
        db.close_quietly(self.conn)
        self.conn = None
