"""Credit agents: each holds one connection and deducts credits from shared accounts."""

from __future__ import annotations

from typing import Any

from locust import task

from toolclash.tools.credits import CreditsTool
from users.agent import PgAgent

_leaked: list[Any] = []
"""Connections kept open on purpose by ``--fault leak_session`` (the sessions check must see them)."""


class CreditAgent(PgAgent):
    """An AI agent that spends credits: one ``deduct`` tool call per task."""

    abstract = False

    SCENARIO = "credits"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.round = 0

    def make_tool(self, conn: Any) -> Any:
        return CreditsTool(conn, strategy=self.strategy, agent=self.agent,
                           think_ms=self.settings.tool_think_ms, fault=self.fault, rng=self.rng)

    def pick_account(self) -> int:
        s = self.opts
        if s.account_choice == "hotspot" and self.rng.random() < s.hot_fraction:
            return 1
        return self.rng.randint(1, s.accounts)

    @task
    def deduct(self) -> None:
        if not self.connected():
            return
        if self.settings.sync:  # meet every other agent first, so that all of them call at the same instant
            self.round += 1
            self.rt.barrier(f"{self.strategy}-round-{self.round}", self.settings.sync_timeout_s)
        account, amount = self.pick_account(), self.rng.randint(self.opts.amount_min, self.opts.amount_max)
        if self.driver is not None:  # --target: your platform's deduction
            self.driver.call("deduct", {"account": account, "amount": amount})
        else:
            tool = self.tool
            assert tool is not None
            self.client.call("deduct", self.strategy, {"account": account, "amount": amount},
                             lambda c: tool.deduct(c, account, amount))

    def on_stop(self) -> None:
        self.stop_driver()
        if self.fault == "leak_session" and self.conn is not None and not self.conn.closed:
            try:
                with self.conn.cursor() as cur:
                    cur.execute("BEGIN; SELECT 1")  # opens a transaction and never ends it
                _leaked.append(self.conn)
                self.rt.forget(self.conn)  # the planted leak must survive the runtime's clean-up
                return
            except Exception:  # noqa: BLE001
                pass
        self.drop_connection()

