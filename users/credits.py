"""Credit agents: each holds one connection and deducts credits from shared accounts."""

from __future__ import annotations

import time
from typing import Any

from locust import User, task
from locust.exception import StopUser

from toolclash import db
from toolclash.settings import Settings
from toolclash.tools.credits import CreditsTool
from users.client import ToolClient, ToolFailure
from users.runtime import runtime

_leaked: list[Any] = []
"""Connections kept open on purpose by ``--fault leak_session`` (the sessions check must see them)."""


class CreditAgent(User):
    """An AI agent that spends credits: one ``deduct`` tool call per task."""

    abstract = False

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.rt = runtime()
        self.agent = self.rt.next_agent()
        self.conn: Any = None
        self.tool: CreditsTool | None = None
        self.round = 0

    def wait_time(self) -> float:
        return self.rng.uniform(self.settings.wait_min, self.settings.wait_max)

    def on_start(self) -> None:
        if self.rt.history is None or self.rt.settings is None:  # the run was aborted at test_start
            raise StopUser
        self.settings: Settings = self.rt.settings
        self.opts = self.settings.options_of("credits")
        self.strategy = self.settings.strategy_for("credits")
        self.fault = self.settings.fault_for("credits")
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
        self.tool = CreditsTool(self.conn, strategy=self.strategy, agent=self.agent,
                                think_ms=self.settings.tool_think_ms, fault=self.fault, rng=self.rng)
        return True

    def pick_account(self) -> int:
        s = self.opts
        if s.account_choice == "hotspot" and self.rng.random() < s.hot_fraction:
            return 1
        return self.rng.randint(1, s.accounts)

    @task
    def deduct(self) -> None:
        if (self.conn is None or self.conn.closed) and not self._connect():
            return
        assert self.tool is not None
        tool = self.tool
        if self.settings.sync:  # meet every other agent first, so that all of them call at the same instant
            self.round += 1
            self.rt.barrier(f"{self.strategy}-round-{self.round}", self.settings.sync_timeout_s)
        account, amount = self.pick_account(), self.rng.randint(self.opts.amount_min, self.opts.amount_max)
        call = self.client.call("deduct", self.strategy, {"account": account, "amount": amount},
                                lambda c: tool.deduct(c, account, amount))
        if call.reason and call.reason.startswith("connection"):
            db.close_quietly(self.conn)
            self.conn = None

    def on_stop(self) -> None:
        if self.fault == "leak_session" and self.conn is not None and not self.conn.closed:
            try:
                with self.conn.cursor() as cur:
                    cur.execute("SELECT 1")  # opens a transaction and never ends it
                _leaked.append(self.conn)
                self.rt.forget(self.conn)  # the planted leak must survive the runtime's clean-up
                return
            except Exception:  # noqa: BLE001
                pass
        db.close_quietly(self.conn)
        self.conn = None

