"""Budget agents: each is one member of every team and spends from its own wallet, one team after the other."""

from __future__ import annotations

from typing import Any

from locust import task

from toolclash.tools.budget import TOOL, BudgetTool
from users.agent import PgAgent


class BudgetAgent(PgAgent):
    """An AI agent that spends a team's budget: one ``spend`` tool call per task, for the next team each time.

    Agents take member numbers in turn (agent 1 is member 1, agent 2 member 2, …), so with ``--sync 1`` every
    member of a team spends at the same instant."""

    abstract = False

    SCENARIO = "budget"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.round = 0
        self.member = 1

    def prepare(self) -> None:
        number = int(self.agent.rpartition("-a")[2] or 1)
        self.member = (number - 1) % self.opts.budget_members + 1

    def make_tool(self, conn: Any) -> Any:
        return BudgetTool(conn, strategy=self.strategy, agent=self.agent, think_ms=self.settings.tool_think_ms,
                          fault=self.fault, rng=self.rng)

    @task
    def spend(self) -> None:
        if not self.connected():
            return
        tool = self.tool
        self.round += 1
        if self.settings.sync:  # meet every other agent first, so that all of them call at the same instant
            self.rt.barrier(f"{TOOL}-round-{self.round}", self.settings.sync_timeout_s)
        team = (self.round - 1) % self.opts.budget_teams + 1
        amount = self.rng.randint(self.opts.spend_min, self.opts.spend_max)
        member = self.member
        self.client.call(TOOL, self.strategy, {"team": team, "member": member, "amount": amount},
                         lambda c: tool.spend(c, team, member, amount))
