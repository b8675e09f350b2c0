"""Credit deduction: many agents deduct credits from the same few accounts.

``deduct(account, amount)`` writes the new balance and one ledger row (keyed by the op id)
in one transaction. Strategies:

* ``naive`` — read, compute, write back the absolute balance under READ COMMITTED, no lock.
  Known-bad: concurrent agents overwrite each other (lost updates).
* ``check_then_act`` — read and check the balance, then ``balance = balance - amount`` without
  a lock. Known-bad: two agents can both pass the check and drive the balance negative.
* ``atomic`` — one guarded ``UPDATE … WHERE balance >= amount RETURNING``.
* ``pessimistic`` — ``SELECT … FOR UPDATE``, then write.
* ``optimistic`` — read balance and version, write only if the version has not moved; retry.
* ``repeatable_read`` / ``serializable`` — the naive code under a stronger isolation level;
  PostgreSQL aborts the loser with 40001, which is retried.

Insufficient funds is a ``fail`` with reason ``insufficient-funds``, never a negative balance
(except with the known-bad ``check_then_act``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from psycopg2.extensions import (
    ISOLATION_LEVEL_READ_COMMITTED,
    ISOLATION_LEVEL_REPEATABLE_READ,
    ISOLATION_LEVEL_SERIALIZABLE,
)

from toolclash import schema
from toolclash.option import Option, SettingsError
from toolclash.scenario import Scenario
from toolclash.targets.shape import Table, TargetShape
from toolclash.tools import Call, Reject, VersionConflict, think, transact

NAME = "credits"
STRATEGIES = ("naive", "check_then_act", "atomic", "pessimistic", "optimistic", "repeatable_read", "serializable")
"""``naive`` and ``check_then_act`` are the known-bad baselines."""
DEFAULT_STRATEGY = "atomic"
FAULTS = ("ambiguous_as_fail", "ack_before_commit", "leak_session")
"""Planted faults (README): each must make a check fail."""
FAULT_RATE = 0.05
"""Share of calls a planted ``--fault`` affects."""

ACCOUNT_CHOICES = ("uniform", "hotspot")

OPTIONS: tuple[Option, ...] = (
    Option("accounts", int, 5, "number of credit accounts agents deduct from"),
    Option("account_choice", str, "uniform", "how agents pick an account: uniform, or hotspot (most calls "
           "go to account 1)", choices=ACCOUNT_CHOICES),
    Option("hot_fraction", float, 0.8, "share of calls sent to account 1 with --account-choice hotspot"),
    Option("initial_balance", int, 1_000_000, "starting balance of every account (credits)"),
    Option("amount_min", int, 1, "smallest deduction (credits)"),
    Option("amount_max", int, 10, "largest deduction (credits)"),
)
"""The scenario's own options (registered with Locust next to the common ones)."""


def validate(opts: Any) -> None:
    """Raise :class:`SettingsError` (one line, naming the flag) if an option is out of range."""
    if opts.accounts <= 0:
        raise SettingsError("--accounts must be greater than 0")
    if opts.account_choice not in ACCOUNT_CHOICES:
        raise SettingsError(f"--account-choice {opts.account_choice!r} is not one of {', '.join(ACCOUNT_CHOICES)}")
    if not 1 <= opts.amount_min <= opts.amount_max:
        raise SettingsError("--amount-min and --amount-max must satisfy 1 <= min <= max")
    if opts.initial_balance < 0:
        raise SettingsError("--initial-balance must be 0 or more")
    if not 0.0 <= opts.hot_fraction <= 1.0:
        raise SettingsError("--hot-fraction must be between 0 and 1")

_ISOLATION = {
    "repeatable_read": ISOLATION_LEVEL_REPEATABLE_READ,
    "serializable": ISOLATION_LEVEL_SERIALIZABLE,
}

_SELECT = "SELECT balance, version FROM toolclash.credit_accounts WHERE id = %s"
_LEDGER = ("INSERT INTO toolclash.credit_ledger (op_id, account_id, amount, balance_before, balance_after, agent) "
           "VALUES (%s, %s, %s, %s, %s, %s)")


class CreditsTool:
    """The ``deduct`` tool bound to one agent's connection and strategy."""

    def __init__(self, conn: Any, *, strategy: str, agent: str, think_ms: float = 0.0, fault: str = "none",
                 rng: random.Random | None = None) -> None:
        self.conn = conn
        self.strategy = strategy
        self.agent = agent
        self.think_ms = think_ms
        self.rng = rng or random.Random()
        self._body = getattr(self, "_" + strategy)
        self._isolation = _ISOLATION.get(strategy, ISOLATION_LEVEL_READ_COMMITTED)
        self._fault: Callable[[Call], str | None] | None = None
        if fault == "ack_before_commit":
            self._fault = lambda call: "rollback" if self.rng.random() < FAULT_RATE else None
        elif fault == "ambiguous_as_fail":
            self._fault = lambda call: "misreport" if self.rng.random() < FAULT_RATE else None

    def deduct(self, call: Call, account: int, amount: int) -> Call:
        """Deduct *amount* credits from *account* as operation *call* (filled in and returned)."""
        return transact(self.conn, call, lambda tx: self._body(tx, call.op_id, account, amount),
                        isolation=self._isolation, fault=self._fault, pipeline=True)

    # --- strategies: each runs inside one transaction (a pipelined Tx: statements whose result is not read are
    # written, and ride with the next statement or with COMMIT) and returns the result dict ---

    def _read(self, cur: Any, sql: str, account: int) -> tuple[int, int]:
        cur.execute(sql, (account,))
        row = cur.fetchone()
        if row is None:
            raise Reject("no-such-account")
        return int(row[0]), int(row[1])

    def _write_absolute(self, cur: Any, op_id: str, account: int, amount: int, *, lock: bool) -> dict[str, Any]:
        before, _ = self._read(cur, _SELECT + (" FOR UPDATE" if lock else ""), account)
        think(self.think_ms)
        if before < amount:
            raise Reject("insufficient-funds", before=before)
        after = before - amount
        cur.write("UPDATE toolclash.credit_accounts SET balance = %s, version = version + 1 WHERE id = %s",
                  (after, account))
        cur.write(_LEDGER, (op_id, account, amount, before, after, self.agent))
        return {"before": before, "after": after}

    def _naive(self, cur: Any, op_id: str, account: int, amount: int) -> dict[str, Any]:
        return self._write_absolute(cur, op_id, account, amount, lock=False)

    _repeatable_read = _naive
    _serializable = _naive

    def _pessimistic(self, cur: Any, op_id: str, account: int, amount: int) -> dict[str, Any]:
        return self._write_absolute(cur, op_id, account, amount, lock=True)

    def _check_then_act(self, cur: Any, op_id: str, account: int, amount: int) -> dict[str, Any]:
        seen, _ = self._read(cur, _SELECT, account)
        think(self.think_ms)
        if seen < amount:
            raise Reject("insufficient-funds", before=seen)
        cur.execute("UPDATE toolclash.credit_accounts SET balance = balance - %s, version = version + 1 "
                    "WHERE id = %s RETURNING balance", (amount, account))
        after = int(cur.fetchone()[0])
        cur.write(_LEDGER, (op_id, account, amount, after + amount, after, self.agent))
        return {"before": after + amount, "after": after}

    def _atomic(self, cur: Any, op_id: str, account: int, amount: int) -> dict[str, Any]:
        cur.execute("UPDATE toolclash.credit_accounts SET balance = balance - %s, version = version + 1 "
                    "WHERE id = %s AND balance >= %s RETURNING balance", (amount, account, amount))
        row = cur.fetchone()
        if row is None:
            before, _ = self._read(cur, _SELECT, account)
            raise Reject("insufficient-funds", before=before)
        after = int(row[0])
        cur.write(_LEDGER, (op_id, account, amount, after + amount, after, self.agent))
        return {"before": after + amount, "after": after}

    def _optimistic(self, cur: Any, op_id: str, account: int, amount: int) -> dict[str, Any]:
        before, version = self._read(cur, _SELECT, account)
        think(self.think_ms)
        if before < amount:
            raise Reject("insufficient-funds", before=before)
        after = before - amount
        cur.execute("UPDATE toolclash.credit_accounts SET balance = %s, version = version + 1 "
                    "WHERE id = %s AND version = %s", (after, account, version))
        if cur.rowcount == 0:
            raise VersionConflict
        cur.write(_LEDGER, (op_id, account, amount, before, after, self.agent))
        return {"before": before, "after": after}


def reset(conn: Any, *, accounts: int, initial_balance: int, **_: Any) -> None:
    """Create the schema if needed, then empty it and seed *accounts* accounts (one transaction)."""
    schema.apply(conn, NAME)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.credit_ledger, toolclash.credit_accounts RESTART IDENTITY")
        cur.execute("INSERT INTO toolclash.credit_accounts (id, balance, initial_balance) "
                    "SELECT g, %s, %s FROM generate_series(1, %s) AS g", (initial_balance, initial_balance, accounts))
    conn.commit()


def snapshot(conn: Any, backend: Any = None, *, seeded: int | None = None) -> dict[str, Any]:
    """The final state the credits checks need: every account and every ledger row, and how many accounts the
    reset seeded (ids 1..*seeded*), so that an account missing at the end is seen."""
    out: dict[str, Any] = {} if seeded is None else {"accounts_seeded": seeded}
    with conn.cursor() as cur:
        cur.execute("SELECT id, balance, initial_balance, version FROM toolclash.credit_accounts ORDER BY id")
        out["credit_accounts"] = [dict(zip(("id", "balance", "initial_balance", "version"), r, strict=True))
                                  for r in cur.fetchall()]
        cur.execute("SELECT seq, op_id, account_id, amount, balance_before, balance_after, agent "
                    "FROM toolclash.credit_ledger ORDER BY seq")
        cols = ("seq", "op_id", "account_id", "amount", "balance_before", "balance_after", "agent")
        out["credit_ledger"] = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    return out


TARGET = TargetShape(
    operations={"deduct": ("account", "amount")},
    tables=(
        Table("accounts", "credit_accounts", required=("id", "balance"), optional=("initial_balance",),
              from_start={"initial_balance": "balance"},
              enables={"": "credits.conservation (in-doubt calls resolved through the ledger, else left unknown), "
                           "credits.no_negative",
                       "initial_balance": "without it, the balance read before the first call is the initial one"}),
        Table("ledger", "credit_ledger", required=("op_id", "account_id", "amount"),
              optional=("balance_before", "balance_after", "seq", "agent"),
              enables={"": "credits.ledger (missing and phantom effects, op by op; calls applied twice); resolves "
                           "in-doubt calls for credits.conservation",
                       "balance_before": "with balance_after and seq: credits.lost_updates, named op by op",
                       "balance_after": "with balance_before and seq: credits.lost_updates; credits.no_negative "
                                        "per deduction",
                       "seq": "the commit order per account (with balance_before/after: credits.lost_updates)"}),
    ),
)
"""How ``--target`` points the credits agents and checks at another platform (docs/your-platform.md)."""


def invariant(conn: Any) -> str | None:
    """Live invariant: no account below zero (a committed negative balance is wrong whatever happens next)."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, balance FROM toolclash.credit_accounts WHERE balance < 0 ORDER BY id LIMIT 3")
        rows = cur.fetchall()
    conn.rollback()
    if not rows:
        return None
    return "negative balance: " + ", ".join(f"account {r[0]} at {r[1]}" for r in rows)


SCENARIO = Scenario(
    name=NAME,
    summary="agents deduct credits from a few shared accounts; checks prove no credit was lost or made up",
    tools=("deduct",),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    rejections=frozenset({"insufficient-funds"}),
    validate=validate,
    reset=lambda ctx, conn: reset(conn, **vars(ctx.opts)),
    snapshot=lambda ctx, conn: snapshot(conn, seeded=ctx.opts.accounts),
    invariant=lambda ctx, conn: invariant(conn),
    checks="checks.credits",
    target=TARGET,
)
