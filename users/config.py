"""Config agents: each holds one connection and keeps updating its own field of a shared configuration record."""

from __future__ import annotations

import time
from typing import Any

from locust import User, task
from locust.exception import StopUser

from toolclash import db
from toolclash.history import FAIL, OK
from toolclash.settings import Settings
from toolclash.tools import Call
from toolclash.tools.config import CONFLICT_EXHAUSTED, STALE_TIMESTAMP, TOOL, ConfigTool, agent_number, field_of
from users.client import ToolClient, ToolFailure
from users.runtime import runtime


class ConfigAgent(User):
    """An AI agent that tunes its part of a shared configuration: one ``update_config`` call per task.

    Agent number n (from its name) owns field ((n - 1) mod --fields) + 1.
    """

    abstract = False

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.rt = runtime()
        self.agent = self.rt.next_agent()
        self.conn: Any = None
        self.tool: ConfigTool | None = None
        self.round = 0

    def wait_time(self) -> float:
        return self.rng.uniform(self.settings.wait_min, self.settings.wait_max)

    def on_start(self) -> None:
        if self.rt.history is None or self.rt.settings is None:  # the run was aborted at test_start
            raise StopUser
        self.settings: Settings = self.rt.settings
        self.opts = self.settings.options_of("config")
        self.strategy = self.settings.strategy_for("config")
        self.fault = self.settings.fault_for("config")
        self.field = field_of(agent_number(self.agent), self.opts.fields)
        self.client = ToolClient(self.environment, self.rt, self.agent)
        self.rng = self.client.rng
        self._connect()

    def _connect(self) -> bool:
        start = time.perf_counter()
        try:
            self.conn = self.rt.connect(self.agent)
        except db.ConnectError as exc:  # counted as a failure; the next task tries again
            self.environment.events.request.fire(
                request_type="connect", name="postgresql", response_time=(time.perf_counter() - start) * 1000.0,
                response_length=0, exception=ToolFailure(str(exc)), context={"agent": self.agent})
            return False
        self.tool = ConfigTool(self.conn, strategy=self.strategy, agent=self.agent, field=self.field,
                               think_ms=self.settings.tool_think_ms, fault=self.fault, rng=self.rng)
        return True

    @task
    def update_config(self) -> None:
        if (self.conn is None or self.conn.closed) and not self._connect():
            return
        assert self.tool is not None
        tool = self.tool
        self.round += 1
        if self.settings.sync:  # meet every other agent first, so that all of them call at the same instant
            self.rt.barrier(f"config-{self.strategy}-round-{self.round}", self.settings.sync_timeout_s)
        record = self.rng.randint(1, self.opts.records)
        value = f"{self.agent}#{self.round}"  # unique in the run: the checks trace every value to its op
        call = self.client.call(TOOL, self.strategy, {"record": record, "field": self.field, "value": value},
                                lambda c: self._update(tool, c, record, value))
        self._count_outcome(call)
        if call.reason and call.reason.startswith("connection"):
            db.close_quietly(self.conn)
            self.conn = None

    def _update(self, tool: ConfigTool, call: Call, record: int, value: str) -> Call:
        try:
            return tool.update(call, record, value)
        finally:  # conflicts and backoff count even for a call cut short at stop (the history has them too)
            attempts = call.attempts
            if attempts.conflicts:
                self.rt.bump("config_conflicts", attempts.conflicts)
            if attempts.backoff_s:
                self.rt.bump("config_backoff_ms", round(attempts.backoff_s * 1000.0))

    def _count_outcome(self, call: Call) -> None:
        """The scenario's own live counters (the runtime's generic ones are summed over every scenario)."""
        if call.outcome == OK:
            self.rt.bump("config_writes")
        elif call.outcome == FAIL and call.reason == CONFLICT_EXHAUSTED:
            self.rt.bump("config_conflict_exhausted")
        elif call.outcome == FAIL and call.reason == STALE_TIMESTAMP:
            self.rt.bump("config_stale_timestamp")

    def on_stop(self) -> None:
        db.close_quietly(self.conn)
        self.conn = None
