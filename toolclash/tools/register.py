"""Registers: agents run short transactions of reads and writes over a few keys, at a chosen isolation level.

A transaction is a list of micro-operations ``["r", key, None]`` or ``["w", key, None]`` (the call's
arguments); the tool fills in what each read saw and what each write wrote (the call's result). Every value
written is unique: ``<op id>:<index of the write in the transaction>``, so the checks can tell who wrote what
a read saw. Each write also appends ``(key, value, op id)`` to a write log in the same statement: under the
key's row lock the log's order is the key's version order. The checks (``checks.register``) build the
dependency graph from these and name every isolation anomaly in it.

Strategies are PostgreSQL's levels: ``read_committed``, ``repeatable_read``, ``serializable`` (40001 and
40P01 are retried). An agent also aborts a share of its transactions on purpose (``--register-abort-rate``): a fail
with reason ``aborted-by-agent``, whose writes nobody may ever see. Planted fault: ``autocommit`` — the tool
leaves autocommit on, so each statement commits on its own and a transaction is no transaction.
"""

from __future__ import annotations

from typing import Any

from toolclash import schema
from toolclash.option import Option, SettingsError
from toolclash.scenario import Scenario
from toolclash.tools import Call, Reject, think, transact
from toolclash.tools.isolation import EXPECT_ISOLATION, LEVELS, claim

NAME = "register"
TOOL = "txn"
STRATEGIES = ("read_committed", "repeatable_read", "serializable")
DEFAULT_STRATEGY = "serializable"
FAULTS = ("autocommit",)
ABORTED = "aborted-by-agent"

OPTIONS: tuple[Option, ...] = (
    Option("register_keys", int, 6, "number of registers (keys) agents read and write; fewer keys, more conflicts",
           min=1, group=NAME),
    Option("txn_ops_min", int, 2, "fewest reads and writes in one transaction", min=1, group=NAME),
    Option("txn_ops_max", int, 4, "most reads and writes in one transaction", min=1, group=NAME),
    Option("register_read_share", float, 0.5, "share of a transaction's operations that are reads", min=0, max=1,
           group=NAME),
    Option("register_abort_rate", float, 0.05, "share of transactions an agent aborts on purpose (their writes must "
           "never be seen)", min=0, max=1, group=NAME),
    EXPECT_ISOLATION,
)


def validate(opts: Any) -> None:
    if opts.txn_ops_min > opts.txn_ops_max:
        raise SettingsError("--txn-ops-min must be at most --txn-ops-max")


_READ = "SELECT v FROM toolclash.registers WHERE k = %s"
_WRITE = ("WITH u AS (UPDATE toolclash.registers SET v = %s WHERE k = %s RETURNING k, v) "
          "INSERT INTO toolclash.register_log (k, v, op_id) SELECT k, v, %s FROM u")


def value_of(op_id: str, index: int) -> str:
    """The value the *index*-th micro-operation of operation *op_id* writes (unique in the run)."""
    return f"{op_id}:{index}"


class RegisterTool:
    """The ``txn`` tool bound to one agent's connection and strategy."""

    def __init__(self, conn: Any, *, strategy: str, fault: str = "none", think_ms: float = 0.0) -> None:
        self.conn = conn
        self.isolation = LEVELS[strategy]
        self.autocommit = fault == "autocommit"
        self.think_ms = think_ms

    def run(self, call: Call, txn: list[list[Any]], abort: bool) -> Call:
        """Run the transaction *txn* as operation *call*; with *abort*, roll it back at the end on purpose."""
        if self.autocommit and not self.conn.autocommit:
            self.conn.autocommit = True  # the planted fault: every statement commits on its own
        return transact(self.conn, call, lambda cur: self._body(cur, call.op_id, txn, abort),
                        isolation=self.isolation)

    def _body(self, cur: Any, op_id: str, txn: list[list[Any]], abort: bool) -> dict[str, Any]:
        done: list[list[Any]] = []
        for i, (f, k, _) in enumerate(txn):
            if f == "r":
                cur.execute(_READ, (k,))
                row = cur.fetchone()
                done.append(["r", k, row[0] if row else None])
            else:
                value = value_of(op_id, i)
                cur.execute(_WRITE, (value, k, op_id))
                done.append(["w", k, value])
            if i == 0:
                think(self.think_ms)  # the agent reasons over what it read: a wider window for others
        if abort:
            raise Reject(ABORTED, txn=done)
        return {"txn": done}


def reset(conn: Any, *, register_keys: int, **_: Any) -> None:
    """Create the schema if needed, empty it and seed *register_keys* registers holding NULL (one transaction)."""
    schema.apply(conn, NAME)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.register_log, toolclash.registers RESTART IDENTITY")
        cur.execute("INSERT INTO toolclash.registers (k, v) SELECT g, NULL FROM generate_series(1, %s) AS g",
                    (register_keys,))
    conn.commit()


def snapshot(conn: Any, level: str, opts: Any) -> dict[str, Any]:
    """The final state the checks need: every register, the write log in order, and the level the run claims."""
    out: dict[str, Any] = {"isolation": claim(level, opts)}
    with conn.cursor() as cur:
        cur.execute("SELECT k, v FROM toolclash.registers ORDER BY k")
        out["registers"] = [[k, v] for k, v in cur.fetchall()]
        cur.execute("SELECT seq, k, v, op_id FROM toolclash.register_log ORDER BY seq")
        out["register_log"] = [list(r) for r in cur.fetchall()]
    conn.rollback()
    return out


SCENARIO = Scenario(
    name=NAME,
    summary="agents run short read/write transactions over a few keys; a dependency graph names every isolation "
            "anomaly (G0, G1a, G1b, G1c, lost update, G-single, G2-item)",
    tools=(TOOL,),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    rejections=frozenset({ABORTED}),
    validate=validate,
    reset=lambda ctx, conn: reset(conn, **vars(ctx.opts)),
    snapshot=lambda ctx, conn: snapshot(conn, ctx.strategy, ctx.opts),
    checks="checks.register",
)
