"""Queue agents: submitters push tool-execution jobs, consumers execute them. Both are Locust users.

Why consumers are Locust users rather than a process the run starts: they then run on every worker
next to the submitters (distributed like the load), every execution is one ``events.request`` and
one history record like any other tool call, and Locust's stop is the designed stop for them too
(a consumer cut off mid-job leaves its job leased; the lease expires and the drain re-executes it).
``--queue-consumers`` of the run's users are consumers (Locust's ``fixed_count``); the rest submit.
The drain after the load stops runs on the master in the scenario's ``finish`` hook.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
from locust import events, task

from toolclash import db
from toolclash.tools import Call
from toolclash.tools.queue import PRIORITIES, REJECTIONS, QueueTool, occupancy, priority_mix, redis_client
from users.agent import Agent
from users.observe import set_gauge
from users.runtime import Runtime, runtime

log = logging.getLogger("toolclash")

POLL_S = 0.02
"""How long a consumer waits before claiming again when the queue is empty (not recorded as a call)."""


class _QueueAgent(Agent):
    abstract = True
    SCENARIO = "queue"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.redis: Any = None
        self.conn: Any = None
        self.tool: QueueTool | None = None

    def _failure(self, kind: str, name: str, started: float, exc: BaseException) -> None:
        self.report_failure(kind, name, started, f"{type(exc).__name__}: {exc}")

    def _connect(self, *, pg: bool) -> bool:
        started = time.perf_counter()
        try:
            if self.redis is None:
                self.redis = self.rt.track(redis_client(self.rt.urls["REDIS_URL"],
                                                        timeout=self.settings.connect_timeout_s))
            if pg and (self.conn is None or self.conn.closed):
                self.conn = self.rt.connect(self.agent)
        except Exception as exc:  # noqa: BLE001 - PostgreSQL or Redis unreachable: reported, retried next task
            self._failure("connect", "redis" if self.redis is None else "postgresql", started, exc)
            return False
        self.tool = QueueTool(self.redis, self.conn, agent=self.agent, opts=self.opts, fault=self.fault, rng=self.rng)
        return True

    def _drop_redis(self) -> None:
        if self.redis is not None:
            try:
                self.redis.close()
            except Exception:  # noqa: BLE001 - it is being discarded
                pass
            self.rt.forget(self.redis)
        self.redis = None
        self.tool = None

    def on_stop(self) -> None:
        self._drop_redis()
        db.close_quietly(self.conn)
        self.conn = None


class QueueSubmitter(_QueueAgent):
    """An AI agent that fans out tool-execution jobs: a burst of 1..``--queue-burst-max`` jobs per task,
    each at a priority drawn from ``--queue-priority-mix``; a rejected job is retried after its retry-after
    hint (capped) up to ``--queue-submit-tries`` times, then given up."""

    abstract = False

    def set_up(self) -> None:
        self.weights = priority_mix(self.opts.queue_priority_mix)
        self._connect(pg=False)

    @task
    def submit(self) -> None:
        if self.tool is None and not self._connect(pg=False):
            time.sleep(POLL_S * 5)  # Redis away (e.g. restarting): no tight reconnect loop without think time
            return
        for _ in range(self.rng.randint(1, self.opts.queue_burst_max)):
            prio = self.rng.choices(range(len(PRIORITIES)), weights=self.weights)[0]
            if not self._submit_one(prio):
                return

    def _submit_one(self, prio: int) -> bool:
        """Submit one job, honouring retry-after on rejection; False if the agent lost its connection."""
        for attempt in range(1, self.opts.queue_submit_tries + 1):
            tool = self.tool
            assert tool is not None

            def submit(c: Call, t: QueueTool = tool) -> Call:
                return t.submit(c, prio)

            call = self.client.call("submit", self.strategy, {"priority": prio, "try": attempt}, submit)
            if call.outcome == "ok":
                self.rt.bump("queue_admitted")
                return True
            if call.reason in REJECTIONS:
                self.rt.bump(f"queue_rejected_{call.reason}")
                if attempt < self.opts.queue_submit_tries:
                    wait_ms = min(float(call.result.get("retry_after_ms") or 0), self.opts.queue_retry_cap_ms)
                    time.sleep(wait_ms / 1000.0)
                    continue
                self.rt.bump("queue_gave_up")
                return True
            self._drop_redis()  # connection lost or a server error: reconnect at the next task
            return False
        return True


class QueueConsumer(_QueueAgent):
    """A consumer agent: claims the most urgent job, executes it (effect in PostgreSQL, keyed by job id), acks."""

    abstract = False
    fixed_count = 10
    """Set from ``--queue-consumers`` at init (see :func:`_set_consumers`)."""

    def wait_time(self) -> float:
        return 0.0

    def set_up(self) -> None:
        self._connect(pg=True)

    @task
    def consume(self) -> None:
        if (self.tool is None or self.conn is None or self.conn.closed) and not self._connect(pg=True):
            time.sleep(POLL_S)
            return
        tool = self.tool
        assert tool is not None
        started = time.perf_counter()
        requeued = tool.requeued
        try:
            job = tool.claim()
        except Exception as exc:  # noqa: BLE001 - Redis gone or restarting: reported, reconnect, try again
            self._failure("claim", self.strategy, started, exc)
            self._drop_redis()
            time.sleep(POLL_S * 5)
            return
        if tool.requeued > requeued:
            self.rt.bump("queue_requeued_expired_leases", tool.requeued - requeued)
        if job is None:
            time.sleep(POLL_S)
            return
        if job.delivery > 1:
            self.rt.bump("queue_redeliveries")
        call = self.client.call("execute", self.strategy,
                                {"job": job.job, "delivery": job.delivery, "priority": job.priority},
                                lambda c: tool.execute(c, job))
        ack = call.result.get("ack")
        if ack and ack != "ok":
            self.rt.bump(f"queue_ack_{ack.split(':')[0]}")
        if call.result.get("stalled"):
            self.rt.bump("queue_stalls")
        if call.reason and call.reason.startswith("connection"):
            db.close_quietly(self.conn)
            self.conn = None


def _set_consumers(environment: Any, **_: Any) -> None:
    """The master dispatches ``fixed_count`` consumers first; take it from ``--queue-consumers``."""
    opts = environment.parsed_options
    n = getattr(opts, "queue_consumers", None) if opts else None
    if n:
        QueueConsumer.fixed_count = int(n)
        users = getattr(opts, "num_users", None)
        if users and users <= n and getattr(opts, "headless", False):
            log.warning("all %d users are queue consumers (--queue-consumers %d): no job will be submitted; "
                        "raise -u or lower --queue-consumers", users, n)


events.init.add_listener(_set_consumers)

SAMPLE_S = 1.0
"""Period of the queue's live gauges (depth by priority, capacity), sampled by the master."""


class _Sampler:
    """On the master (or the single process) while a run is under way: the queue's depth by priority and its
    capacity as live gauges, read from Redis. One process only: every process would see the same whole queue,
    and the master sums the processes' gauges."""

    def __init__(self) -> None:
        self.greenlet: Any = None

    def on_test_start(self, environment: Any, **_: Any) -> None:
        rt = runtime()
        if rt.is_worker or not rt.run_active or "queue" not in rt.scenarios or "REDIS_URL" not in rt.urls:
            return
        self.stop()
        self.greenlet = gevent.spawn(self._run, rt)

    def _run(self, rt: Runtime) -> None:
        settings = rt.require_settings()
        capacity = float(settings.options_of("queue").queue_capacity)
        client: Any = None
        try:
            while rt.run_active:
                try:
                    if client is None:
                        client = redis_client(rt.urls["REDIS_URL"], timeout=settings.connect_timeout_s)
                    depth = occupancy(client)
                except Exception as exc:  # noqa: BLE001 - Redis away (restarting?): no gauges now, try again
                    log.debug("queue sampler: %s", exc)
                    _closed(client)
                    client = None
                else:
                    for priority, n in depth.items():
                        set_gauge("toolclash_queue_depth", (("priority", priority),), float(n))
                    set_gauge("toolclash_queue_capacity", (("priority", "all"),), capacity)
                gevent.sleep(SAMPLE_S)
        finally:
            _closed(client)

    def stop(self, **_: Any) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=True, timeout=2)
            self.greenlet = None


def _closed(client: Any) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - it is being discarded
            pass


_sampler = _Sampler()
events.test_start.add_listener(_sampler.on_test_start)
events.test_stop.add_listener(_sampler.stop)
