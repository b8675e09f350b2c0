"""Transfers and audits: agents move credits between accounts while auditors read every balance (read skew).

``transfer(from, to, amount)`` moves credits in one statement (the total of all accounts never changes) and bumps
both accounts' versions; its ledger row, in the same transaction, records the versions it installed.
``audit()`` reads each account's balance and version in its own statement, as an agent that looks at one
account, then the next, inside one transaction, and reports the sum it saw. Under READ COMMITTED each statement
sees the latest commit, so an audit can see one half of a transfer: a total that never existed (G-single).
Strategies are the level both kinds of agent run at: ``read_committed`` (known-bad for audits),
``repeatable_read`` and ``serializable``. Planted fault: ``ambiguous_as_fail`` (a committed transfer reported
failed).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from toolclash import schema
from toolclash.option import Option
from toolclash.scenario import Scenario
from toolclash.tools import Call, think, transact
from toolclash.tools.isolation import EXPECT_ISOLATION, LEVELS, claim

NAME = "transfers"
TRANSFER, AUDIT = "transfer", "audit"
STRATEGIES = ("read_committed", "repeatable_read", "serializable")
DEFAULT_STRATEGY = "serializable"
FAULTS = ("ambiguous_as_fail",)
FAULT_RATE = 0.05

OPTIONS: tuple[Option, ...] = (
    Option("transfer_accounts", int, 2, "accounts credits move between (audits read them all)", min=2, group=NAME),
    Option("transfer_initial", int, 1_000_000, "starting balance of every account", min=0, group=NAME),
    Option("transfer_max", int, 100, "largest transfer (credits); each is 1 to this", min=1, group=NAME),
    EXPECT_ISOLATION,
)

_MOVE = ("UPDATE toolclash.transfer_accounts SET balance = balance + CASE WHEN id = %(to)s THEN %(amount)s "
         "ELSE -%(amount)s END, version = version + 1 WHERE id IN (%(from)s, %(to)s) RETURNING id, version")
_LEDGER = ("INSERT INTO toolclash.transfer_ledger (op_id, from_id, to_id, amount, from_version, to_version, agent) "
           "VALUES (%s, %s, %s, %s, %s, %s, %s)")


class TransfersTool:
    """The ``transfer`` and ``audit`` tools bound to one agent's connection and level."""

    def __init__(self, conn: Any, *, strategy: str, agent: str, think_ms: float = 0.0, fault: str = "none",
                 rng: random.Random | None = None) -> None:
        self.conn = conn
        self.agent = agent
        self.think_ms = think_ms
        self.rng = rng or random.Random()
        self.isolation = LEVELS[strategy]
        self._fault: Callable[[Call], str | None] | None = None
        if fault == "ambiguous_as_fail":
            self._fault = lambda call: "misreport" if self.rng.random() < FAULT_RATE else None

    def transfer(self, call: Call, source: int, target: int, amount: int) -> Call:
        def body(cur: Any) -> dict[str, Any]:
            cur.execute(_MOVE, {"from": source, "to": target, "amount": amount})
            versions = {int(i): int(v) for i, v in cur.fetchall()}
            if len(versions) != 2:
                raise RuntimeError(f"accounts {source} and {target} are not both there")
            cur.execute(_LEDGER, (call.op_id, source, target, amount, versions[source], versions[target], self.agent))
            return {"from_version": versions[source], "to_version": versions[target]}

        return transact(self.conn, call, body, isolation=self.isolation, fault=self._fault)

    def audit(self, call: Call, accounts: int) -> Call:
        def body(cur: Any) -> dict[str, Any]:
            seen = []
            for account in range(1, accounts + 1):
                cur.execute("SELECT balance, version FROM toolclash.transfer_accounts WHERE id = %s", (account,))
                balance, version = cur.fetchone()
                seen.append([account, int(balance), int(version)])
                if account == 1:
                    think(self.think_ms)  # the auditor reasons over the first balance before reading on
            return {"seen": seen, "total": sum(b for _, b, _ in seen)}

        return transact(self.conn, call, body, isolation=self.isolation)


def reset(conn: Any, *, transfer_accounts: int, transfer_initial: int, **_: Any) -> None:
    """Create the schema if needed, empty it and seed the accounts (one transaction)."""
    schema.apply(conn, NAME)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.transfer_ledger, toolclash.transfer_accounts RESTART IDENTITY")
        cur.execute("INSERT INTO toolclash.transfer_accounts (id, balance, initial_balance) "
                    "SELECT g, %s, %s FROM generate_series(1, %s) g",
                    (transfer_initial, transfer_initial, transfer_accounts))
    conn.commit()


def snapshot(conn: Any, strategy: str, opts: Any) -> dict[str, Any]:
    """The final state the checks need: every account, every ledger row, and the level the run claims."""
    out: dict[str, Any] = {"isolation": claim(strategy, opts)}
    with conn.cursor() as cur:
        cur.execute("SELECT id, balance, initial_balance, version FROM toolclash.transfer_accounts ORDER BY id")
        out["transfer_accounts"] = [dict(zip(("id", "balance", "initial", "version"), r, strict=True))
                                    for r in cur.fetchall()]
        cols = ("seq", "op_id", "from", "to", "amount", "from_version", "to_version", "agent")
        cur.execute("SELECT seq, op_id, from_id, to_id, amount, from_version, to_version, agent "
                    "FROM toolclash.transfer_ledger ORDER BY seq")
        out["transfer_ledger"] = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    return out


SCENARIO = Scenario(
    name=NAME,
    summary="agents move credits between accounts while auditors read every balance; checks prove every audit saw "
            "the constant total and name the transfer an audit saw half of (read skew)",
    tools=(TRANSFER, AUDIT),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    reset=lambda ctx, conn: reset(conn, **vars(ctx.opts)),
    snapshot=lambda ctx, conn: snapshot(conn, ctx.strategy, ctx.opts),
    checks="checks.transfers",
)
