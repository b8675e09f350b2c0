"""The base of every agent kind, and of the agents that hold one PostgreSQL connection.

:class:`Agent` does what every kind shares: its name, think time from the run's settings, its scenario's
options, strategy and planted fault, a tool client that reports and records each call, with ``--target`` the
driver that sends its calls to your platform (``users/targets.py``), reporting a failed connect as a failed
request, and a circuit breaker (``--breaker-failures``, ``--breaker-open-s``): after that many connection
failures in a row the agent's tasks are skipped (counted) until the breaker half-opens, and the next call's
outcome closes or reopens it. A kind subclasses it, names its ``SCENARIO``, sets itself up in :meth:`set_up`
and chooses in its ``@task`` what to call. :class:`PgAgent` adds one connection, its tool and reconnects.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, ClassVar

from locust import User
from locust.exception import StopUser

from toolclash import db
from toolclash.breaker import Breaker
from toolclash.history import FAIL, OK
from toolclash.scenario import get as scenario
from toolclash.settings import Settings
from toolclash.tools import Call
from users.client import ToolClient, ToolFailure
from users.runtime import runtime
from users.targets import Driver, make_driver

CONNECTION_ERRORS = frozenset({"ConnectionError", "TimeoutError", "ConnectError", "BusyLoadingError",
                               "NetworkError", "SocketTimeoutError", "ConnectionResetError", "BrokenPipeError"})
"""Error classes of a call that failed for want of a connection (what a circuit breaker counts)."""


def connection_failure(call: Call) -> bool:
    """Whether *call* failed or ended in doubt because the service could not be reached (or went away)."""
    reason = call.reason or ""
    return call.outcome != OK and ("connection" in reason or "connect" in reason
                                   or (call.error_class or "") in CONNECTION_ERRORS)


def _guarded(task: Any) -> Callable[[Any], None]:
    """*task* behind the agent's circuit breaker: skipped (counted, waiting until the breaker half-opens) while
    it is open."""
    if getattr(task, "_tc_guarded", False):
        return task

    @functools.wraps(task)
    def guarded(user: Any) -> None:
        breaker: Breaker | None = getattr(user, "breaker", None)
        if breaker is not None:
            allowed, event = breaker.allow()
            if event:
                user.rt.bump("breaker_" + event)
            if not allowed:
                user.rt.bump("breaker_skipped")
                time.sleep(breaker.wait_s())
                return
        task(user)

    guarded._tc_guarded = True  # type: ignore[attr-defined]
    return guarded


class Agent(User):
    """An AI agent of one scenario."""

    abstract = True
    SCENARIO: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.tasks = [task if isinstance(task, type) else _guarded(task) for task in cls.tasks]

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.rt = runtime()
        self.agent = self.rt.next_agent()
        self.strategy, self.fault = "", "none"  # until begin(): on_stop may run after an aborted start
        self.breaker: Breaker | None = None
        self.rt.agents.add(self)

    def wait_time(self) -> float:
        return self.rng.uniform(self.settings.wait_min, self.settings.wait_max)

    def on_start(self) -> None:
        if not self.begin():  # the run was aborted at test_start
            raise StopUser
        self.set_up()

    def begin(self) -> bool:
        """Read the run's settings for this agent; False when the run did not start in this process."""
        settings = self.rt.settings
        if self.rt.history is None or settings is None:
            return False
        self.settings: Settings = settings
        self.opts = settings.options_of(self.SCENARIO)
        self.strategy = settings.strategy_for(self.SCENARIO)
        self.fault = settings.fault_for(self.SCENARIO)
        if settings.breaker_failures:
            self.breaker = Breaker(settings.breaker_failures, settings.breaker_open_s)
        self.client = ToolClient(self.environment, self.rt, self.agent, rejections=scenario(self.SCENARIO).rejections,
                                 after=self.after_call)
        self.rng = self.client.rng
        self.driver: Driver | None = make_driver(self) if settings.target_spec is not None else None
        """With ``--target``: what turns this agent's tool calls into calls of your platform."""
        return True

    def stop_driver(self) -> None:
        """Release the target's client (the agent stops); nothing without ``--target``."""
        driver = getattr(self, "driver", None)
        if driver is not None:
            driver.close()

    def set_up(self) -> None:
        """Per-agent set-up once the options are known (connect, join a group …)."""

    def after_call(self, call: Call) -> None:
        """Every finished tool call: a connection failure counts against the breaker, an answer closes it."""
        if self.breaker is None:
            return
        if connection_failure(call):
            self.rt.bump("breaker_failures")
            event = self.breaker.failure()
        elif call.outcome in (OK, FAIL):
            event = self.breaker.success()
        else:
            return
        if event:
            self.rt.bump("breaker_" + event)

    def report_failure(self, kind: str, name: str, started: float, exc: BaseException | str) -> None:
        """A failure outside a tool call (a connect that failed): one failed request in Locust's statistics, and a
        connection failure for the circuit breaker."""
        self.rt.bump("connect_failures")
        if self.breaker is not None:
            self.rt.bump("breaker_failures")
            event = self.breaker.failure()
            if event:
                self.rt.bump("breaker_" + event)
        text = exc if isinstance(exc, str) else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        self.environment.events.request.fire(
            request_type=kind, name=name, response_time=(time.perf_counter() - started) * 1000.0,
            response_length=0, exception=ToolFailure(text[:200]), context={"agent": self.agent})


class PgAgent(Agent):
    """An agent holding one PostgreSQL connection (``self.conn``) and its tool (``self.tool``)."""

    abstract = True

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.conn: Any = None
        self.tool: Any = None

    def set_up(self) -> None:
        self.prepare()
        if self.driver is None or self.driver.uses_connection:
            self._connect()

    def prepare(self) -> None:
        """Per-agent set-up after the options are known, before the first connect (e.g. which field it owns)."""

    def make_tool(self, conn: Any) -> Any:
        """The scenario's tool bound to *conn* and this agent."""
        raise NotImplementedError

    def _connect(self) -> bool:
        start = time.perf_counter()
        try:
            self.conn = self.rt.connect(self.agent)
        except db.ConnectError as exc:  # counted as a failure; the next task tries again
            self.report_failure("connect", "postgresql", start, str(exc))
            return False
        self.tool = self.make_tool(self.conn) if self.driver is None else None
        return True

    def connected(self) -> bool:
        """Ready for a call: connected now, or reconnected (False: this task is skipped, the failure reported)."""
        if self.driver is not None and not self.driver.uses_connection:
            return True
        return not (self.conn is None or self.conn.closed) or self._connect()

    def after_call(self, call: Call) -> None:
        """As :meth:`Agent.after_call`; a call that lost its connection drops it: the next task reconnects."""
        super().after_call(call)
        if call.reason and call.reason.startswith("connection"):
            self.drop_connection()

    def drop_connection(self) -> None:
        db.close_quietly(self.conn)
        self.conn = None

    def on_stop(self) -> None:
        self.stop_driver()
        self.drop_connection()
