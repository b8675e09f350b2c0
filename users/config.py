"""Config agents: each holds one connection and keeps updating its own field of a shared configuration record."""

from __future__ import annotations

from typing import Any

from locust import task

from toolclash.history import FAIL, OK
from toolclash.tools import Call
from toolclash.tools.config import CONFLICT_EXHAUSTED, STALE_TIMESTAMP, TOOL, ConfigTool, agent_number, field_of
from users.agent import PgAgent


class ConfigAgent(PgAgent):
    """An AI agent that tunes its part of a shared configuration: one ``update_config`` call per task.

    Agent number n (from its name) owns field ((n - 1) mod --fields) + 1.
    """

    abstract = False

    SCENARIO = "config"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.round = 0

    def prepare(self) -> None:
        self.field = field_of(agent_number(self.agent), self.opts.fields)

    def make_tool(self, conn: Any) -> Any:
        return ConfigTool(conn, strategy=self.strategy, agent=self.agent, field=self.field,
                          think_ms=self.settings.tool_think_ms, fault=self.fault, rng=self.rng)

    @task
    def update_config(self) -> None:
        if not self.connected():
            return
        self.round += 1
        if self.settings.sync:  # meet every other agent first, so that all of them call at the same instant
            self.rt.barrier(f"config-{self.strategy}-round-{self.round}", self.settings.sync_timeout_s)
        record = self.rng.randint(1, self.opts.records)
        value = f"{self.agent}#{self.round}"  # unique in the run: the checks trace every value to its op
        args = {"record": record, "field": self.field, "value": value}
        if self.driver is not None:  # --target: your platform's update
            call = self.driver.call(TOOL, args)
        else:
            tool = self.tool
            assert tool is not None
            call = self.client.call(TOOL, self.strategy, args, lambda c: self._update(tool, c, record, value))
        self._count_outcome(call)

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
