"""Cross-service agents: each holds a main and an auth connection and calls ``grant_tool_access``."""

from __future__ import annotations

import time
from typing import Any

from locust import task

from toolclash import db
from toolclash.tools.crossservice import NAME, TOOL, TOOL_NAMES, CrossServiceTool, business_agent
from users.agent import Agent


class CrossServiceAgent(Agent):
    """An AI agent that buys access to a tool: debit in main, grant in auth, usage event to ClickHouse."""

    abstract = False
    SCENARIO = NAME

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.tool: CrossServiceTool | None = None

    def set_up(self) -> None:
        self.mode = self.opts.mode or self.strategy
        self.tool = CrossServiceTool(lambda var: self.rt.connect(self.agent, var), mode=self.mode,
                                     fault=self.fault, inject=self.opts.inject,
                                     inject_rate=self.opts.inject_rate, rng=self.rng,
                                     compensation_deadline_s=2 * self.settings.retry_deadline_s)

    def _connected(self) -> bool:
        assert self.tool is not None
        start = time.perf_counter()
        try:
            self.tool.ensure_connected()
            return True
        except db.ConnectError as exc:  # counted as a failure; the next task tries again
            self.report_failure("connect", "postgresql", start, str(exc))
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
