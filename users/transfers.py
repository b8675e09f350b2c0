"""Transfer agents move credits between accounts; auditor agents read every balance in one transaction."""

from __future__ import annotations

from typing import Any

from locust import task

from toolclash.tools.transfers import AUDIT, TRANSFER, TransfersTool
from users.agent import PgAgent


class _TransfersAgent(PgAgent):
    abstract = True

    SCENARIO = "transfers"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.round = 0

    def make_tool(self, conn: Any) -> Any:
        return TransfersTool(conn, strategy=self.strategy, agent=self.agent, think_ms=self.settings.tool_think_ms,
                             fault=self.fault, rng=self.rng)

    def meet(self) -> None:
        """With ``--sync 1``, wait until every agent (transfers and auditors) is there, so they act at once."""
        if self.settings.sync:
            self.round += 1
            self.rt.barrier(f"transfers-round-{self.round}", self.settings.sync_timeout_s)



class TransferAgent(_TransfersAgent):
    """An AI agent that moves credits between two random accounts: one ``transfer`` call per task."""

    abstract = False

    @task
    def transfer(self) -> None:
        if not self.connected():
            return
        tool = self.tool
        self.meet()
        source, target = self.rng.sample(range(1, self.opts.transfer_accounts + 1), 2)
        amount = self.rng.randint(1, self.opts.transfer_max)
        self.client.call(TRANSFER, self.strategy, {"from": source, "to": target, "amount": amount},
                         lambda c: tool.transfer(c, source, target, amount))


class AuditorAgent(_TransfersAgent):
    """An AI agent that audits: reads every balance in one transaction and records the total (one ``audit``)."""

    abstract = False

    @task
    def audit(self) -> None:
        if not self.connected():
            return
        tool = self.tool
        self.meet()
        accounts = self.opts.transfer_accounts
        self.client.call(AUDIT, self.strategy, {"accounts": accounts}, lambda c: tool.audit(c, accounts))
