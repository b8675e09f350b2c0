"""Team budget: a team's spending limit is shared by its members' wallets (write skew, G2-item).

``spend(team, member, amount)`` lets an agent spend from its own wallet only if the team's total stays within the
limit, which it checks by reading every wallet of the team. Two members who spend at the same time can each read
the other's old wallet and both spend: the limit is exceeded with no lost update at all. Each applied spend writes
one ledger row in the same transaction: what it read of every wallet and its own wallet before and after, so the
checks can name the spends that did not see each other. Strategies:

* ``read_committed`` / ``repeatable_read`` / ``serializable`` — the plain code at each level (40001 and 40P01
  are retried). Known-bad: the first two (PostgreSQL's REPEATABLE READ is snapshot isolation: write skew).
* ``lock_team`` — ``SELECT … FOR UPDATE`` on the team row first, at READ COMMITTED: spenders of a team queue.
* ``materialize`` — every spender updates the team row first (a materialised conflict), at REPEATABLE READ:
  concurrent spenders of a team conflict (40001) and retry.

Over the limit is a ``fail`` with reason ``over-budget``. Planted fault: ``ambiguous_as_fail`` (a committed spend
reported failed).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from toolclash import schema
from toolclash.option import Option, SettingsError
from toolclash.scenario import Scenario
from toolclash.tools import Call, Reject, think, transact
from toolclash.tools.isolation import EXPECT_ISOLATION, LEVELS, claim

NAME = "budget"
TOOL = "spend"
STRATEGIES = ("read_committed", "repeatable_read", "serializable", "lock_team", "materialize")
"""``read_committed`` and ``repeatable_read`` are the known-bad baselines."""
DEFAULT_STRATEGY = "serializable"
FAULTS = ("ambiguous_as_fail",)
FAULT_RATE = 0.05
OVER_BUDGET = "over-budget"
LEVEL_OF = {"lock_team": "read_committed", "materialize": "repeatable_read"}
"""The isolation level of the strategies that are not named after one."""

OPTIONS: tuple[Option, ...] = (
    Option("budget_teams", int, 1000, "number of teams; an agent spends for the next team on every call, so each "
           "team is raced once per sweep", min=1, group=NAME),
    Option("budget_members", int, 2, "members (wallets) per team; an agent is always the same member", min=1,
           group=NAME),
    Option("budget_limit", int, 100, "spending limit of every team (credits)", min=1, group=NAME),
    Option("spend_min", int, 40, "smallest spend (credits)", min=1, group=NAME),
    Option("spend_max", int, 60, "largest spend (credits)", min=1, group=NAME),
    EXPECT_ISOLATION,
)


def validate(opts: Any) -> None:
    if opts.spend_min > opts.spend_max:
        raise SettingsError("--spend-min must be at most --spend-max")


def level_of(strategy: str) -> str:
    return LEVEL_OF.get(strategy, strategy)


_READ = ("SELECT t.spend_limit, w.spent FROM toolclash.budget_teams t JOIN toolclash.budget_wallets w "
         "ON w.team_id = t.id WHERE t.id = %s ORDER BY w.member")
_LEDGER = ("INSERT INTO toolclash.budget_spends (op_id, team_id, member, amount, wallet_before, wallet_after, seen, "
           "agent) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")


class BudgetTool:
    """The ``spend`` tool bound to one agent's connection and strategy."""

    def __init__(self, conn: Any, *, strategy: str, agent: str, think_ms: float = 0.0, fault: str = "none",
                 rng: random.Random | None = None) -> None:
        self.conn = conn
        self.strategy = strategy
        self.agent = agent
        self.think_ms = think_ms
        self.rng = rng or random.Random()
        self.isolation = LEVELS[level_of(strategy)]
        self._fault: Callable[[Call], str | None] | None = None
        if fault == "ambiguous_as_fail":
            self._fault = lambda call: "misreport" if self.rng.random() < FAULT_RATE else None

    def spend(self, call: Call, team: int, member: int, amount: int) -> Call:
        """Spend *amount* from *member*'s wallet of *team* as operation *call* (filled in and returned)."""
        return transact(self.conn, call, lambda cur: self._body(cur, call.op_id, team, member, amount),
                        isolation=self.isolation, fault=self._fault)

    def _body(self, cur: Any, op_id: str, team: int, member: int, amount: int) -> dict[str, Any]:
        if self.strategy == "lock_team":
            cur.execute("SELECT 1 FROM toolclash.budget_teams WHERE id = %s FOR UPDATE", (team,))
        elif self.strategy == "materialize":
            cur.execute("UPDATE toolclash.budget_teams SET version = version + 1 WHERE id = %s", (team,))
        cur.execute(_READ, (team,))
        rows = cur.fetchall()
        if not rows:
            raise Reject("no-such-team")
        limit, seen = int(rows[0][0]), [int(r[1]) for r in rows]
        think(self.think_ms)
        if sum(seen) + amount > limit:
            raise Reject(OVER_BUDGET, seen=seen, limit=limit)
        cur.execute("UPDATE toolclash.budget_wallets SET spent = spent + %s WHERE team_id = %s AND member = %s "
                    "RETURNING spent", (amount, team, member))
        row = cur.fetchone()
        if row is None:
            raise Reject("no-such-wallet")
        after = int(row[0])
        cur.execute(_LEDGER, (op_id, team, member, amount, after - amount, after, seen, self.agent))
        return {"seen": seen, "limit": limit, "before": after - amount, "after": after}


def reset(conn: Any, *, budget_teams: int, budget_members: int, budget_limit: int, **_: Any) -> None:
    """Create the schema if needed, empty it and seed the teams and their empty wallets (one transaction)."""
    schema.apply(conn, NAME)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.budget_spends, toolclash.budget_wallets, toolclash.budget_teams "
                    "RESTART IDENTITY")
        cur.execute("INSERT INTO toolclash.budget_teams (id, spend_limit) SELECT g, %s FROM generate_series(1, %s) g",
                    (budget_limit, budget_teams))
        cur.execute("INSERT INTO toolclash.budget_wallets (team_id, member) SELECT t, m FROM generate_series(1, %s) t, "
                    "generate_series(1, %s) m", (budget_teams, budget_members))
    conn.commit()


def snapshot(conn: Any, strategy: str, opts: Any) -> dict[str, Any]:
    """The final state the checks need: every team, every wallet, every ledger row, and the level the run claims."""
    out: dict[str, Any] = {"isolation": claim(level_of(strategy), opts)}
    with conn.cursor() as cur:
        cur.execute("SELECT id, spend_limit FROM toolclash.budget_teams ORDER BY id")
        out["budget_teams"] = [{"id": i, "limit": lim} for i, lim in cur.fetchall()]
        cur.execute("SELECT team_id, member, spent FROM toolclash.budget_wallets ORDER BY team_id, member")
        out["budget_wallets"] = [{"team": t, "member": m, "spent": s} for t, m, s in cur.fetchall()]
        cols = ("seq", "op_id", "team", "member", "amount", "before", "after", "seen", "agent")
        cur.execute("SELECT seq, op_id, team_id, member, amount, wallet_before, wallet_after, seen, agent "
                    "FROM toolclash.budget_spends ORDER BY seq")
        out["budget_spends"] = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    return out


SCENARIO = Scenario(
    name=NAME,
    summary="team members spend from their own wallets under a shared team limit; checks prove no team went over "
            "it and name the spends that did not see each other (write skew)",
    tools=(TOOL,),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    rejections=frozenset({OVER_BUDGET}),
    validate=validate,
    reset=lambda ctx, conn: reset(conn, **vars(ctx.opts)),
    snapshot=lambda ctx, conn: snapshot(conn, ctx.strategy, ctx.opts),
    checks="checks.budget",
)
