"""Agent tools under test, one module per scenario, and the transaction runner they share.

A tool call is described by a :class:`Call`: the caller (the Locust tool client, a test, the
benchmark) creates it, the tool fills it in. Because the caller holds the object, a call that is
cut short (``GreenletExit`` at stop, Ctrl-C) can still be recorded from the phase it reached.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from psycopg2.extensions import (
    ISOLATION_LEVEL_READ_COMMITTED,
    ISOLATION_LEVEL_REPEATABLE_READ,
    ISOLATION_LEVEL_SERIALIZABLE,
)

from toolclash.db import classify, close_quietly
from toolclash.history import FAIL, OK, UNKNOWN
from toolclash.retry import VERSION_CONFLICT, Attempts, RetryPolicy

# Phases of a call, recorded so that an interrupted call says how far it got.
START, STATEMENT, COMMIT, DONE = "start", "statement", "commit", "done"


class Reject(Exception):
    """A definite business rejection (e.g. insufficient funds): roll back, outcome ``fail``."""

    def __init__(self, reason: str, *, error_class: str | None = None, **result: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_class = error_class
        self.result = result


class VersionConflict(Exception):
    """A compare-and-set matched zero rows: roll back and retry under the policy."""


@dataclass
class Call:
    """One tool call in flight, then its outcome."""

    op_id: str
    policy: RetryPolicy
    rng: random.Random
    attempts: Attempts = field(init=False)
    phase: str = START
    outcome: str | None = None
    reason: str | None = None
    error_class: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attempts = Attempts(self.policy, self.rng)

    def finish(self, outcome: str, reason: str | None = None, error_class: str | None = None,
               **result: Any) -> Call:
        self.outcome, self.reason, self.error_class = outcome, reason, error_class
        self.result.update(result)
        self.phase = DONE
        return self

    def interrupted(self, what: str = "interrupted") -> Call:
        """Mark a call cut short from outside (stop, Ctrl-C): in doubt, whatever phase it was in.

        The checks resolve such calls from the final state (e.g. the ledger's op ids).
        """
        return self.finish(UNKNOWN, f"{what}-during-{self.phase}", "interrupted")

    @property
    def conflicts(self) -> int:
        return self.attempts.conflicts


class Tx:
    """The cursor a pipelined transaction's body gets: it saves round trips without changing the transaction.

    ``BEGIN`` rides with the body's first statement; statements whose result the body does not read
    (:meth:`write`) ride with the next statement that is read (:meth:`execute`) or with ``COMMIT``. The
    statements, their order, the isolation level and the locks are exactly those of the body; only the number
    of network round trips changes (PostgreSQL's simple query protocol runs a string of statements in order and
    skips the rest of it at the first error).
    """

    __slots__ = ("_cur", "_pending", "round_trips")

    def __init__(self, cur: Any, begin: bytes) -> None:
        self._cur = cur
        self._pending: list[bytes] = [begin]
        self.round_trips = 0

    def execute(self, sql: str, args: Any = None) -> None:
        """Run *sql* now (with everything pending before it); its result is read with :meth:`fetchone` …"""
        self._pending.append(self._cur.mogrify(sql, args))
        self._send()

    def write(self, sql: str, args: Any = None) -> None:
        """Queue *sql*, whose result is not read: it goes with the next :meth:`execute` or with the end."""
        self._pending.append(self._cur.mogrify(sql, args))

    def end(self, verb: bytes) -> None:
        """Send what is pending followed by *verb* (``COMMIT`` or ``ROLLBACK``) in one round trip."""
        self._pending.append(verb)
        self._send()

    def _send(self) -> None:
        batch, self._pending = b"; ".join(self._pending), []
        self.round_trips += 1
        self._cur.execute(batch)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> Any:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        """Rows of the last statement :meth:`execute` ran."""
        return int(self._cur.rowcount)


_BEGIN = {None: b"BEGIN", ISOLATION_LEVEL_READ_COMMITTED: b"BEGIN ISOLATION LEVEL READ COMMITTED",
          ISOLATION_LEVEL_REPEATABLE_READ: b"BEGIN ISOLATION LEVEL REPEATABLE READ",
          ISOLATION_LEVEL_SERIALIZABLE: b"BEGIN ISOLATION LEVEL SERIALIZABLE"}


def transact(conn: Any, call: Call, body: Callable[[Any], dict[str, Any]], *, isolation: int | None = None,
             retry_lock_not_available: bool = False, fault: Callable[[Call], str | None] | None = None,
             give_up: str | None = None, pipeline: bool = False) -> Call:
    """Run *body(cursor)* as one transaction on *conn*, retrying conflicts under *call*'s policy.

    *body* returns the call's result dict, or raises :class:`Reject` (definite ``fail``) or
    :class:`VersionConflict` (retry). Retryable SQLSTATEs (40001, 40P01; 55P03 if asked) are
    retried with full-jitter backoff. A lost connection before COMMIT is a definite ``fail``
    (the server rolls the transaction back); during COMMIT it is ``unknown``.

    *fault*, if given, is asked before COMMIT and may return ``"rollback"`` (acknowledge without
    committing) or ``"misreport"`` (commit, then report ``fail``): planted faults for the checks.
    *give_up*, if given, is the planted fault of not retrying: a retryable conflict ends the call at once as
    ``fail`` with that reason.

    With *pipeline*, *body* gets a :class:`Tx` and the transaction takes fewer round trips (the connection is
    put in autocommit mode: toolclash sends ``BEGIN`` itself). A lost connection while the last statements and
    ``COMMIT`` are on their way is ``unknown``; an error with a SQLSTATE is a definite rollback as before.
    """
    try:
        if pipeline:
            if not conn.autocommit:
                conn.autocommit = True
            return _attempt_loop(conn, call, body, retry_lock_not_available, fault, give_up, _BEGIN[isolation])
        if isolation is not None and conn.isolation_level != isolation:
            conn.set_session(isolation_level=isolation)
        return _attempt_loop(conn, call, body, retry_lock_not_available, fault, give_up)
    except BaseException:
        # Interrupted (GreenletExit at stop, Ctrl-C) mid-transaction: close the session now so the server
        # rolls back and releases its locks at once. Left to the garbage collector, a session stopped
        # between sending COMMIT and flushing it stays "idle in transaction" and blocks every waiter.
        close_quietly(conn)
        raise


def _attempt_loop(conn: Any, call: Call, body: Callable[[Any], dict[str, Any]], retry_lock_not_available: bool,
                  fault: Callable[[Call], str | None] | None, give_up: str | None, begin: bytes | None = None) -> Call:
    attempts = call.attempts
    rollback = _rollback if begin is None else _rollback_pipelined
    while attempts.next():
        try:
            call.phase = STATEMENT
            with conn.cursor() as cur:
                if begin is None:
                    result = body(cur)
                    planted = fault(call) if fault else None
                    call.phase = COMMIT
                    if planted == "rollback":
                        conn.rollback()
                    else:
                        conn.commit()
                else:
                    tx = Tx(cur, begin)
                    result = body(tx)
                    planted = fault(call) if fault else None
                    call.phase = COMMIT
                    tx.end(b"ROLLBACK" if planted == "rollback" else b"COMMIT")
            if planted == "misreport":
                return call.finish(FAIL, "commit-timeout", "timeout", **result)
            return call.finish(OK, **result)
        except Reject as rej:
            rollback(conn)
            return call.finish(FAIL, rej.reason, rej.error_class, **rej.result)
        except VersionConflict:
            rollback(conn)
            if attempts.conflict(VERSION_CONFLICT):
                continue
            return call.finish(FAIL, attempts.gave_up, VERSION_CONFLICT)
        except psycopg2.Error as exc:
            kind = classify(exc, retry_lock_not_available=retry_lock_not_available)
            if kind.kind == "connection":
                if call.phase == COMMIT:
                    return call.finish(UNKNOWN, "connection-lost-during-commit", kind.error_class)
                return call.finish(FAIL, "connection-lost", kind.error_class)
            rollback(conn)
            if kind.kind == "retryable" and kind.cause:
                if give_up is not None:
                    attempts.sqlstates.append(kind.sqlstate or "")
                    return call.finish(FAIL, give_up, kind.error_class)
                if attempts.conflict(kind.cause, kind.sqlstate):
                    continue
                return call.finish(FAIL, attempts.gave_up, kind.error_class)
            if call.phase == COMMIT and kind.sqlstate is None:
                return call.finish(UNKNOWN, "commit-error", kind.error_class)
            return call.finish(FAIL, kind.kind, kind.error_class)
    return call.finish(FAIL, attempts.gave_up or "retries-exhausted")


def _rollback(conn: Any) -> None:
    try:
        conn.rollback()
    except psycopg2.Error:
        pass


def _rollback_pipelined(conn: Any) -> None:
    """End the transaction the body began (in autocommit mode ``conn.rollback()`` sends nothing)."""
    try:
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    except psycopg2.Error:
        pass


def think(ms: float) -> None:
    """Pause *ms* milliseconds (cooperative under gevent's monkey patching)."""
    if ms > 0:
        time.sleep(ms / 1000.0)
