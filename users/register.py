"""Register agents: each runs short transactions of reads and writes over a few shared keys."""

from __future__ import annotations

from typing import Any

from locust import task

from toolclash.tools.register import TOOL, RegisterTool
from users.agent import PgAgent


class RegisterAgent(PgAgent):
    """An AI agent that reads and updates shared registers: one ``txn`` tool call per task."""

    abstract = False

    SCENARIO = "register"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.round = 0

    def make_tool(self, conn: Any) -> Any:
        return RegisterTool(conn, strategy=self.strategy, fault=self.fault, think_ms=self.settings.tool_think_ms)

    def plan(self) -> list[list[Any]]:
        """A random transaction: ``[f, key, None]`` micro-operations (the tool fills in the values)."""
        o = self.opts
        size = self.rng.randint(o.txn_ops_min, o.txn_ops_max)
        return [["r" if self.rng.random() < o.register_read_share else "w", self.rng.randint(1, o.register_keys), None]
                for _ in range(size)]

    @task
    def transact(self) -> None:
        if not self.connected():
            return
        tool = self.tool
        if self.settings.sync:  # meet every other agent first, so that all of them call at the same instant
            self.round += 1
            self.rt.barrier(f"{TOOL}-round-{self.round}", self.settings.sync_timeout_s)
        txn, abort = self.plan(), self.rng.random() < self.opts.register_abort_rate
        self.client.call(TOOL, self.strategy, {"txn": txn, "abort": abort}, lambda c: tool.run(c, txn, abort))
