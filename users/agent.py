"""The shape every PostgreSQL agent shares: one connection, the run's settings, a tool client, reconnects.

A scenario's agent subclasses :class:`PgAgent`, names its ``SCENARIO`` and builds its tool in
``make_tool(conn)``; the rest (agent name, think time, reading its options, strategy and fault,
reporting a failed connect as a request and trying again at the next task) is here once.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from locust import User
from locust.exception import StopUser

from toolclash import db
from toolclash.settings import Settings
from users.client import ToolClient, ToolFailure
from users.runtime import runtime


class PgAgent(User):
    """An agent holding one PostgreSQL connection (``self.conn``) and its tool (``self.tool``)."""

    abstract = True
    SCENARIO: ClassVar[str]

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.rt = runtime()
        self.agent = self.rt.next_agent()
        self.conn: Any = None
        self.tool: Any = None

    def wait_time(self) -> float:
        return self.rng.uniform(self.settings.wait_min, self.settings.wait_max)

    def on_start(self) -> None:
        if self.rt.history is None or self.rt.settings is None:  # the run was aborted at test_start
            raise StopUser
        self.settings: Settings = self.rt.settings
        self.opts = self.settings.options_of(self.SCENARIO)
        self.strategy = self.settings.strategy_for(self.SCENARIO)
        self.fault = self.settings.fault_for(self.SCENARIO)
        self.client = ToolClient(self.environment, self.rt, self.agent)
        self.rng = self.client.rng
        self.prepare()
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
            self.environment.events.request.fire(
                request_type="connect", name="postgresql", response_time=(time.perf_counter() - start) * 1000.0,
                response_length=0, exception=ToolFailure(str(exc)), context={"agent": self.agent})
            return False
        self.tool = self.make_tool(self.conn)
        return True

    def connected(self) -> bool:
        """Ready for a call: connected now, or reconnected (False: this task is skipped, the failure reported)."""
        return not (self.conn is None or self.conn.closed) or self._connect()
