"""Analytics agents: more agents than pooled connections, each running long aggregates.

The agents of one Locust process share one connection source (``--pool client``: a
:class:`toolclash.db.Pool`; ``--pool pgbouncer``: PgBouncer), created by the first agent that starts
and closed by the last one that stops. That last agent also writes the pool's final state into the
history (``pool_state``), and while agents run a sampler greenlet records the pool's state every
``--pool-sample-s`` seconds (``pool_sample``) and reports a connection held longer than
``--pool-leak-after-s``, naming the agent.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import gevent
from locust import task

from toolclash import db
from toolclash.history import OK
from toolclash.tools import pool as pool_tool
from toolclash.tools.pool import (
    QUEUED_MS,
    AnalyticsTool,
    BouncerSource,
    BouncerWaiting,
    ClientSource,
    pool_state_record,
)
from users.agent import Agent
from users.observe import observe, set_gauge
from users.runtime import Runtime

log = logging.getLogger("toolclash.pool")


class _Shared:
    """This process's connection source and sampler, shared by its agents."""

    def __init__(self) -> None:
        self.live = 0
        self.source: Any = None
        self.pool: db.Pool | None = None
        self.waiting: BouncerWaiting | None = None
        self.sampler: Any = None
        self.run_id = ""
        self.label = ""
        """The ``pool`` label of the live metrics: ``client`` or ``pgbouncer-<mode>`` (the agents' strategy)."""

    def join(self, rt: Runtime, opts: Any) -> Any:
        if self.source is None or self.run_id != rt.run_id:
            self._open(rt, opts)
        self.live += 1
        return self.source

    def _open(self, rt: Runtime, opts: Any) -> None:
        settings = rt.require_settings()
        self.run_id = rt.run_id
        self.label = pool_label(opts)
        if opts.pool == "client":
            self.pool = db.Pool(
                "client", lambda: rt.connect(f"{rt.process}-pool"), size=opts.pool_size,  # named after its process
                acquire_timeout_s=opts.pool_acquire_timeout_s, max_lifetime_s=opts.pool_max_lifetime_s,
                leak_after_s=opts.pool_leak_after_s, on_event=rt.bump)
            rt.track(self.pool)  # closed at stop whatever happens to the agents
            self.source = ClientSource(self.pool)
        else:
            url = pool_tool.bouncer_url(rt.urls["PGBOUNCER_URL"], opts.pgbouncer_mode)
            self.waiting = BouncerWaiting(url, pool_tool._database(url))

            def connect(agent: str) -> Any:
                # not rt.connect: a leaked connection (--fault leak) must outlive the runtime's clean-up
                return db.connect(url, timeout=settings.connect_timeout_s,
                                  application_name=f"tc:{rt.run_id}:{agent}"[:63])

            self.source = BouncerSource(connect, mode=opts.pgbouncer_mode,
                                        label=f"pgbouncer:{pool_tool._database(url)}",
                                        query_wait_timeout_s=max(1, math.ceil(opts.pool_acquire_timeout_s)),
                                        waiting=self.waiting)
            rt.track(self.source)
        self.sampler = gevent.spawn(self._sample, rt, opts.pool_sample_s)

    def _sample(self, rt: Runtime, period: float) -> None:
        history = rt.history
        while history is not None:
            gevent.sleep(period)
            if self.pool is not None:
                for leak in self.pool.check_leaks():
                    log.warning("pool %r: agent %s has held a connection for %.1f s (op %s): leaked?",
                                leak["pool"], leak["agent"], leak["held_s"], leak["op_id"])
                stats = self.pool.stats()
                state = {k: stats[k] for k in ("pool", "size", "in_use", "idle", "waiting", "opening")}
            else:
                state = {"pool": self.source.label, "waiting": self.waiting() if self.waiting else None}
            self._gauges(state)
            history.record(pool_state_record(rt.run_id, history.new_op_id(), rt.process, "sampler", state,
                                             tool=pool_tool.SAMPLE_TOOL))

    def leave(self, rt: Runtime) -> None:
        self.live -= 1
        if self.live > 0:
            return
        if self.sampler is not None:
            # wait until it is gone: a greenlet killed mid-query still holds its connection's lock, and closing
            # that connection from here would block the whole process on it
            self.sampler.kill(block=True, timeout=5)
            self.sampler = None
        history = rt.history
        if history is not None:
            if self.pool is not None:
                self.pool.check_leaks()
                state = {"kind": "client", **self.pool.stats(), "holders": self.pool.holders()}
            else:
                state = {"kind": "pgbouncer", "pool": self.source.label}
            history.record(pool_state_record(rt.run_id, history.new_op_id(), rt.process, "last-agent", state))
        # nobody holds or waits any more (no stale "waiters stuck" alert after the run)
        self._gauges({"waiting": 0, **({"in_use": 0} if self.pool is not None else {})})
        if self.pool is not None:
            self.pool.close()
        elif self.source is not None:
            self.source.close()
        if self.waiting is not None:
            self.waiting.close()
        self.source, self.pool, self.waiting = None, None, None


    def _gauges(self, state: dict[str, Any]) -> None:
        """This process's pool state as live gauges (the master sums the processes); PgBouncer's pool size is
        not the agents' to know, so only its waiting clients are set for it."""
        labels = (("pool", self.label),)
        for key in ("size", "in_use", "waiting"):
            if state.get(key) is not None:
                set_gauge(f"toolclash_pool_{key}", labels, float(state[key]))


def pool_label(opts: Any) -> str:
    return str(opts.pool) if opts.pool == "client" else f"pgbouncer-{opts.pgbouncer_mode}"


_shared = _Shared()


class PoolAgent(Agent):
    """An AI agent that runs long analytical queries: one ``analyze`` tool call per task."""

    abstract = False
    SCENARIO = "pool"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.tool: AnalyticsTool | None = None
        self.joined = False

    def set_up(self) -> None:
        source = _shared.join(self.rt, self.opts)
        self.joined = True
        self.label = pool_label(self.opts)
        self.tool = AnalyticsTool(source, agent=self.agent, statement_timeout_ms=self.opts.statement_timeout_ms,
                                  facts_rows=self.opts.facts_rows, scan_rows=self.opts.scan_rows,
                                  fault=self.fault, rng=self.rng)

    @task
    def analyze(self) -> None:
        assert self.tool is not None
        tool = self.tool
        lo, hi = tool.window()
        call = self.client.call(pool_tool.TOOL, self.label, {"lo": lo, "hi": hi},
                                lambda c: tool.analyze(c, lo, hi))
        if call.reason == pool_tool.CANCELLED:
            self.rt.bump("pool_cancelled")
        wait_ms = call.result.get("wait_ms")
        if wait_ms is not None and call.reason != pool_tool.TIMEOUT:  # served: a timed-out wait got nothing
            observe("toolclash_pool_acquire_wait_seconds", (("pool", self.label),), float(wait_ms) / 1000.0)
        if self.opts.pool == "pgbouncer":  # the client pool counts its own waits
            if wait_ms is not None and float(wait_ms) >= QUEUED_MS:  # the wait itself: the histogram above
                self.rt.bump("pool_waits")
            if call.reason == pool_tool.TIMEOUT:
                self.rt.bump("pool_timeouts")
        if call.outcome != OK and call.reason not in (pool_tool.TIMEOUT, pool_tool.CANCELLED):
            log.warning("%s: %s", self.agent, call.result.get("message") or call.reason)

    def on_stop(self) -> None:
        if self.joined:
            self.joined = False
            _shared.leave(self.rt)
