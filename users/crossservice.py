"""Cross-service agents: each holds a main and an auth connection and calls ``grant_tool_access``."""

from __future__ import annotations

import time
from typing import Any

from locust import User, task
from locust.exception import StopUser

from toolclash import db
from toolclash.settings import Settings
from toolclash.tools.crossservice import NAME, TOOL, TOOL_NAMES, CrossServiceTool, business_agent
from users.client import ToolClient, ToolFailure
from users.runtime import runtime


class CrossServiceAgent(User):
    """An AI agent that buys access to a tool: debit in main, grant in auth, usage event to ClickHouse."""

    abstract = False

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.rt = runtime()
        self.agent = self.rt.next_agent()
        self.tool: CrossServiceTool | None = None

    def wait_time(self) -> float:
        return self.rng.uniform(self.settings.wait_min, self.settings.wait_max)

    def on_start(self) -> None:
        if self.rt.history is None or self.rt.settings is None:  # the run was aborted at test_start
            raise StopUser
        self.settings: Settings = self.rt.settings
        self.opts = self.settings.options_of(NAME)
        self.mode = self.opts.mode or self.settings.strategy_for(NAME)
        self.client = ToolClient(self.environment, self.rt, self.agent)
        self.rng = self.client.rng
        self.tool = CrossServiceTool(lambda var: self.rt.connect(self.agent, var), mode=self.mode,
                                     fault=self.settings.fault_for(NAME), inject=self.opts.inject,
                                     inject_rate=self.opts.inject_rate, rng=self.rng,
                                     compensation_deadline_s=2 * self.settings.retry_deadline_s)

    def _connected(self) -> bool:
        assert self.tool is not None
        start = time.perf_counter()
        try:
            self.tool.ensure_connected()
            return True
        except db.ConnectError as exc:  # counted as a failure; the next task tries again
            self.environment.events.request.fire(
                request_type="connect", name="postgresql", response_time=(time.perf_counter() - start) * 1000.0,
                response_length=0, exception=ToolFailure(str(exc)), context={"agent": self.agent})
            return False

    @task
    def grant_tool_access(self) -> None:
        if not self._connected():
            return
        tool = self.tool
        assert tool is not None
        agent = business_agent(self.rng.randint(1, self.opts.xs_agents))
        name, cost = self.rng.choice(TOOL_NAMES), self.rng.randint(1, self.opts.xs_cost_max)
        call = self.client.call(TOOL, self.mode, {"agent": agent, "tool": name, "cost": cost},
                                lambda c: tool.grant_tool_access(c, agent, name, cost))
        for key in ("injected_crashes", "injected_terminations", "compensations"):
            n = tool.counters.pop(key, 0)
            if n:
                self.rt.bump(key, n)
        del call

    def on_stop(self) -> None:
        if self.tool is not None:
            self.tool.close()
