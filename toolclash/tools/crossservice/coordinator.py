"""The crossservice tool: ``grant_tool_access`` as a 2PC coordinator with a decision log, or as a saga.

:class:`CrossServiceTool` is one agent's coordinator (it owns its main and auth connections); the
single-database transaction doing the same writes (:meth:`CrossServiceTool.single_db`) is the
benchmark's baseline. The helpers here are shared with recovery (:mod:`.recovery`): the decision log
(:func:`decide`), finishing a prepared branch (:func:`finish_prepared`), a saga's compensations
(:func:`compensate`), global transaction ids (:func:`gid`, :func:`op_of_gid`) and the schemas
(:func:`ensure_schemas`).

Injections the tool applies itself (``--inject``): ``coordinator_crash`` drops both connections at a
random point between the first PREPARE and the last COMMIT PREPARED (the call is ``unknown``; recovery
resolves it); ``participant_terminate`` has the auth backend terminated (``pg_terminate_backend``)
between steps. Planted faults it applies: ``no_recovery`` (an aborting coordinator leaves its branches
to a recovery that never comes), ``skip_compensation`` (a failed saga marks itself failed and
refunds nothing) and ``double_charge`` (on a share of calls the debit's balance update runs twice, as a
client that resent a statement whose reply it lost would, while one debit row is written).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.errorcodes

from toolclash import schema
from toolclash.db import ConnectError, classify, close_quietly
from toolclash.history import FAIL, OK, UNKNOWN
from toolclash.tools import Call, Reject, transact

NAME = "crossservice"
STRATEGIES = ("2pc", "saga")
TOOL = "grant_tool_access"
TOOL_NAMES = ("web_search", "code_exec", "sql_query", "browser", "email")
AUTH_SCHEMA = "crossservice_auth"
GID_PREFIX = "xs:"
CRASH_POINTS = ("after_main_prepare", "after_both_prepared", "after_decision", "after_main_commit")
LOCK_TIMEOUT_S = 3.0
"""Agents' lock_timeout: a row lock held by a prepared transaction nobody resolves ends in a definite fail."""
DOUBLE_CHARGE_RATE = 0.2
"""Share of calls ``--fault double_charge`` charges twice."""
INJECTED = "injected-fault"
"""Fail reason of a call that an injection made fail (an expected answer: left out of the success rate)."""


def business_agent(i: int) -> str:
    return f"agent-{i}"


def gid(op_id: str, branch: str) -> str:
    """Global transaction id of *op_id*'s branch ``m`` (main) or ``a`` (auth)."""
    return f"{GID_PREFIX}{op_id}:{branch}"


def op_of_gid(g: str) -> str:
    return g[len(GID_PREFIX):].rpartition(":")[0]


# ------------------------------------------------------------------------------------------ SQL

_DEBIT = ("UPDATE toolclash.xs_accounts SET balance = balance - %s WHERE agent = %s AND balance >= %s "
          "RETURNING balance")
_DEBIT_ROW = "INSERT INTO toolclash.xs_debits (op_id, agent, tool, cost, mode) VALUES (%s, %s, %s, %s, %s)"
_OUTBOX = ("INSERT INTO toolclash.xs_outbox (event_id, op_id, kind, agent, tool, cost) "
           "VALUES (%s, %s, %s, %s, %s, %s)")
_GRANT = ("INSERT INTO toolclash.xs_grants (op_id, agent, tool, granted, granted_at) "
          "VALUES (%s, %s, %s, true, clock_timestamp())")
_REVOKE = ("INSERT INTO toolclash.xs_grants (op_id, agent, tool, granted, revoked_at) "
           "VALUES (%s, %s, %s, false, clock_timestamp()) "
           "ON CONFLICT (op_id) DO UPDATE SET revoked_at = coalesce(toolclash.xs_grants.revoked_at, "
           "excluded.revoked_at)")


def ensure_schemas(main: Any, auth: Any) -> None:
    """Apply both schemas unless present. Not re-applied when present: ``CREATE INDEX IF NOT EXISTS`` takes a
    SHARE lock first, which would wait forever behind the row locks of a transaction left prepared."""
    for conn, name, probe in ((main, NAME, "toolclash.xs_local_grants"), (auth, AUTH_SCHEMA, "toolclash.xs_grants")):
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (probe,))
            present = bool(cur.fetchone()[0])
        if not conn.autocommit:
            conn.rollback()
        if not present:
            schema.apply(conn, name)


def _no_funds(cur: Any, agent: str) -> Reject:
    cur.execute("SELECT balance FROM toolclash.xs_accounts WHERE agent = %s", (agent,))
    row = cur.fetchone()
    return Reject("insufficient-funds", before=int(row[0])) if row else Reject("no-such-agent")


def decide(conn: Any, op_id: str, decision: str, who: str) -> str:
    """Write *decision* for *op_id* unless one exists (synchronously committed); return the decision in force.

    *conn* is in autocommit mode. The coordinator writes ``commit``, recovery ``abort``: whichever
    is first wins, so a live coordinator and a concurrent recovery never disagree.
    """
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            cur.execute("SET LOCAL synchronous_commit TO on")
            cur.execute("INSERT INTO toolclash.xs_decisions (op_id, decision, decided_by) VALUES (%s, %s, %s) "
                        "ON CONFLICT (op_id) DO NOTHING", (op_id, decision, who))
            cur.execute("SELECT decision FROM toolclash.xs_decisions WHERE op_id = %s", (op_id,))
            in_force = str(cur.fetchone()[0])
            cur.execute("COMMIT")
        except psycopg2.Error:
            with contextlib.suppress(psycopg2.Error):
                cur.execute("ROLLBACK")
            raise
    return in_force


def finish_prepared(conn: Any, verb: str, g: str) -> bool:
    """``COMMIT PREPARED`` or ``ROLLBACK PREPARED`` *g* on *conn* (autocommit); False if it no longer exists
    (somebody else finished it)."""
    try:
        with conn.cursor() as cur:
            cur.execute(f"{verb} PREPARED %s", (g,))
        return True
    except psycopg2.Error as exc:
        if getattr(exc, "pgcode", None) == psycopg2.errorcodes.UNDEFINED_OBJECT:  # 42704
            return False
        raise


def compensate(main: Any, auth: Any, op_id: str, who: str) -> str:
    """Run a saga's compensations (idempotent; safe to repeat after any crash); return the final saga state.

    The saga turns ``compensating`` first (persisted: from then on nobody rolls it forward), then the
    grant is revoked with a tombstone in auth, then the debit is refunded once (keyed by op id) with a
    refund event in the outbox, in the same local transaction that marks the saga ``compensated``.
    *main* and *auth* are in transaction mode (autocommit off).
    """
    with main.cursor() as cur:
        cur.execute("UPDATE toolclash.xs_sagas SET state = 'compensating', updated_at = clock_timestamp(), "
                    "updated_by = %s WHERE op_id = %s AND state IN ('debited', 'compensating') "
                    "RETURNING agent, tool, cost", (who, op_id))
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT state FROM toolclash.xs_sagas WHERE op_id = %s", (op_id,))
            found = cur.fetchone()
            main.rollback()
            return str(found[0]) if found else "absent"
    main.commit()
    agent, tool, cost = str(row[0]), str(row[1]), int(row[2])
    with auth.cursor() as cur:
        cur.execute(_REVOKE, (op_id, agent, tool))
    auth.commit()
    with main.cursor() as cur:
        cur.execute("INSERT INTO toolclash.xs_refunds (op_id, agent, cost) VALUES (%s, %s, %s) "
                    "ON CONFLICT (op_id) DO NOTHING RETURNING op_id", (op_id, agent, cost))
        if cur.fetchone() is not None:
            cur.execute("UPDATE toolclash.xs_accounts SET balance = balance + %s WHERE agent = %s", (cost, agent))
            cur.execute(_OUTBOX, (f"{op_id}:refund", op_id, "refund", agent, tool, cost))
        cur.execute("UPDATE toolclash.xs_sagas SET state = 'compensated', updated_at = clock_timestamp(), "
                    "updated_by = %s WHERE op_id = %s", (who, op_id))
    main.commit()
    return "compensated"


# ------------------------------------------------------------------------------------------ the tool


class CrossServiceTool:
    """``grant_tool_access`` for one agent: owns its main and auth connections (opened with *connect*)."""

    def __init__(self, connect: Callable[[str], Any], *, mode: str, fault: str = "none", inject: str = "none",
                 inject_rate: float = 0.0, rng: random.Random | None = None,
                 compensation_deadline_s: float = 10.0) -> None:
        if mode not in STRATEGIES:
            raise ValueError(f"unknown mode {mode!r}")
        self._connect = connect
        self.mode = mode
        self.fault = fault
        self.inject = inject
        self.inject_rate = inject_rate
        self.rng = rng or random.Random()
        self.compensation_deadline_s = compensation_deadline_s
        self.main: Any = None
        self.auth: Any = None
        self._killer: Any = None
        self.counters: dict[str, int] = {}

    # --- connections ---

    def _open(self, which: str) -> Any:
        conn = self._connect("DATABASE_URL" if which == "main" else "AUTH_DATABASE_URL")
        conn.autocommit = True
        with conn.cursor() as cur:  # a lock held by a transaction left in doubt must not hang the agent
            cur.execute("SET lock_timeout = %s", (f"{int(LOCK_TIMEOUT_S * 1000)}ms",))
            # each local commit of a saga (and the single-database baseline) must survive a server crash once
            # acknowledged; with the embedded servers' synchronous_commit=off, a pg_ctl stop -m immediate of auth
            # lost acknowledged grants (caught by crossservice.atomic). 2PC's PREPARE and COMMIT PREPARED are
            # flushed whatever this says.
            cur.execute("SET synchronous_commit = on")
        conn.autocommit = self.mode == "2pc"
        setattr(self, which, conn)
        return conn

    def ensure_connected(self) -> None:
        for which in ("main", "auth"):
            conn = getattr(self, which)
            if conn is None or conn.closed:
                self._open(which)

    def close(self) -> None:
        for conn in (self.main, self.auth, self._killer):
            close_quietly(conn)
        self.main = self.auth = self._killer = None

    def _drop(self, which: str) -> None:
        close_quietly(getattr(self, which))
        setattr(self, which, None)

    def _bump(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _charge_again(self, cur: Any, agent: str, cost: int) -> None:
        """``--fault double_charge``: the balance update runs a second time (the debit row is written once)."""
        if self.fault == "double_charge" and self.rng.random() < DOUBLE_CHARGE_RATE:
            cur.execute(_DEBIT, (cost, agent, cost))
            self._bump("double_charges")

    # --- injections ---

    def _roll(self, injection: str) -> bool:
        return self.inject == injection and self.rng.random() < self.inject_rate

    def _terminate_auth(self) -> bool:
        """Terminate this agent's auth backend from another session (pg_terminate_backend)."""
        pid = self.auth.get_backend_pid()
        if self._killer is None or self._killer.closed:
            self._killer = self._connect("AUTH_DATABASE_URL")
            self._killer.autocommit = True
        with self._killer.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(200):  # wait until the backend is gone, so the next step really meets a dead session
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cur.fetchone()[0] == 0:
                    break
                time.sleep(0.005)
        self._bump("injected_terminations")
        return True

    # --- the call ---

    def grant_tool_access(self, call: Call, agent: str, tool: str, cost: int) -> Call:
        self.ensure_connected()
        try:
            if self.mode == "2pc":
                return self._two_phase(call, agent, tool, cost)
            return self._saga(call, agent, tool, cost)
        except BaseException:
            # interrupted (GreenletExit at stop, Ctrl-C) or an unexpected error: drop the sessions now so the
            # servers roll back what is open; whatever was prepared is left to recovery
            self.close()
            raise

    def _crash(self, call: Call, point: str) -> Call:
        """The coordinator dies here: its connections drop, nothing more is done."""
        self._drop("main")
        self._drop("auth")
        self._bump("injected_crashes")
        return call.finish(UNKNOWN, f"coordinator-crash-{point}", "injected", crash_point=point)

    def _two_phase(self, call: Call, agent: str, tool: str, cost: int) -> Call:
        op = call.op_id
        gm, ga = gid(op, "m"), gid(op, "a")
        crash = self.rng.choice(CRASH_POINTS) if self._roll("coordinator_crash") else None
        terminate = self._roll("participant_terminate")
        terminated = False
        prepared: list[tuple[str, str]] = []
        call.attempts.next()
        main, auth = self.main, self.auth
        try:
            call.phase = "prepare-main"
            with main.cursor() as cur:
                cur.execute("BEGIN")
                try:
                    cur.execute(_DEBIT, (cost, agent, cost))
                    row = cur.fetchone()
                    if row is None:
                        rej = _no_funds(cur, agent)
                        cur.execute("ROLLBACK")
                        return call.finish(FAIL, rej.reason, **rej.result)
                    after = int(row[0])
                    self._charge_again(cur, agent, cost)
                    cur.execute(_DEBIT_ROW, (op, agent, tool, cost, "2pc"))
                    cur.execute(_OUTBOX, (f"{op}:usage", op, "usage", agent, tool, cost))
                    cur.execute("PREPARE TRANSACTION %s", (gm,))
                except BaseException:
                    if not main.closed:
                        with contextlib.suppress(psycopg2.Error):
                            cur.execute("ROLLBACK")
                    raise
            prepared.append(("main", gm))
            if crash == "after_main_prepare":
                return self._crash(call, crash)
            if terminate:
                terminated = self._terminate_auth()
            call.phase = "prepare-auth"
            with auth.cursor() as cur:
                cur.execute("BEGIN")
                try:
                    cur.execute(_GRANT, (op, agent, tool))
                    cur.execute("PREPARE TRANSACTION %s", (ga,))
                except BaseException:
                    if not auth.closed:
                        with contextlib.suppress(psycopg2.Error):
                            cur.execute("ROLLBACK")
                    raise
            prepared.append(("auth", ga))
            if crash == "after_both_prepared":
                return self._crash(call, crash)
            call.phase = "decide"
            if decide(main, op, "commit", "coordinator") != "commit":
                self._abort(op, prepared)
                return call.finish(FAIL, "aborted-by-recovery")
            if crash == "after_decision":
                return self._crash(call, crash)
            call.phase = "commit"
            try:
                finish_prepared(main, "COMMIT", gm)
                if crash == "after_main_commit":
                    return self._crash(call, crash)
                finish_prepared(auth, "COMMIT", ga)
            except psycopg2.Error as exc:  # the decision is durable: recovery commits what is left
                self._lost(exc)
                return call.finish(OK, before=after + cost, after=after, phase2="left-to-recovery")
            return call.finish(OK, before=after + cost, after=after)
        except psycopg2.Error as exc:
            kind = classify(exc)
            self._lost(exc)
            if call.phase == "decide":  # the decision may or may not be durable
                return call.finish(UNKNOWN, f"{kind.kind}-during-decision", kind.error_class)
            self._abort(op, prepared)  # no commit decision was written: this operation never commits
            reason = self._why(terminated, kind.kind, on_auth=call.phase == "prepare-auth")
            return call.finish(FAIL, reason, kind.error_class, failed_in=call.phase)

    def _why(self, terminated: bool, kind: str, *, on_auth: bool) -> str:
        """Fail reason: ``injected-fault`` only where the injector caused it — the step on auth failed after this
        agent's auth backend was terminated (``participant_terminate``), or the auth connection was lost while
        the auth server refuses connections (``auth_restart`` has it stopped); else what the error was."""
        if on_auth and terminated:
            return INJECTED
        if on_auth and kind == "connection" and self.inject == "auth_restart" and self._auth_down():
            return INJECTED
        return "connection-lost" if kind == "connection" else kind

    def _auth_down(self) -> bool:
        """Does the auth server refuse a new connection right now (stopped or starting)?"""
        try:
            probe = self._connect("AUTH_DATABASE_URL")
        except (ConnectError, psycopg2.Error):
            return True
        close_quietly(probe)
        return False

    def _lost(self, exc: BaseException) -> None:
        """Forget connections an error left unusable."""
        for which in ("main", "auth"):
            conn = getattr(self, which)
            if conn is not None and conn.closed:
                self._drop(which)
        if classify(exc).kind == "connection":
            for which in ("main", "auth"):
                conn = getattr(self, which)
                if conn is not None:
                    try:
                        with conn.cursor() as cur:
                            cur.execute("SELECT 1")
                    except psycopg2.Error:
                        self._drop(which)

    def _abort(self, op: str, prepared: list[tuple[str, str]]) -> None:
        """Best effort: log ``abort`` and roll back the prepared branches; recovery does whatever is left."""
        if self.fault == "no_recovery":
            return  # the planted fault: a coordinator that leaves aborting to a recovery that never comes
        try:
            if self.main is None or self.main.closed:
                self._open("main")
            decide(self.main, op, "abort", "coordinator")
            for which, g in prepared:
                conn = getattr(self, which)
                if conn is None or conn.closed:
                    conn = self._open(which)
                finish_prepared(conn, "ROLLBACK", g)
        except Exception:  # noqa: BLE001 - presumed abort: recovery finishes it
            self._bump("aborts_left_to_recovery")

    # --- saga ---

    def _saga(self, call: Call, agent: str, tool: str, cost: int) -> Call:
        op = call.op_id

        def debit(cur: Any) -> dict[str, Any]:
            cur.execute(_DEBIT, (cost, agent, cost))
            row = cur.fetchone()
            if row is None:
                raise _no_funds(cur, agent)
            self._charge_again(cur, agent, cost)
            cur.execute(_DEBIT_ROW, (op, agent, tool, cost, "saga"))
            cur.execute(_OUTBOX, (f"{op}:usage", op, "usage", agent, tool, cost))
            cur.execute("INSERT INTO toolclash.xs_sagas (op_id, agent, tool, cost, state) "
                        "VALUES (%s, %s, %s, %s, 'debited')", (op, agent, tool, cost))
            return {"before": int(row[0]) + cost, "after": int(row[0])}

        transact(self.main, call, debit)
        if call.outcome != OK:  # nothing happened (fail), or recovery will compensate it (unknown)
            if call.reason and call.reason.startswith("connection"):
                self._drop("main")
            return call
        call.phase = "grant"
        terminate = self._roll("participant_terminate")
        terminated = False
        try:
            if terminate:
                terminated = self._terminate_auth()
            with self.auth.cursor() as cur:
                cur.execute(_GRANT.replace("clock_timestamp())", "clock_timestamp()) ON CONFLICT (op_id) DO NOTHING"),
                            (op, agent, tool))
            call.phase = "grant-commit"
            self.auth.commit()
        except psycopg2.Error as exc:
            kind = classify(exc)
            if self.auth.closed or kind.kind == "connection":
                self._drop("auth")
            else:
                with contextlib.suppress(psycopg2.Error):
                    self.auth.rollback()
            why = self._why(terminated, kind.kind, on_auth=True)
            return self._compensate(call, why, kind.error_class)
        call.phase = "saga-done"
        try:
            with self.main.cursor() as cur:
                cur.execute("UPDATE toolclash.xs_sagas SET state = 'done', updated_at = clock_timestamp() "
                            "WHERE op_id = %s AND state = 'debited'", (op,))
            self.main.commit()
        except psycopg2.Error:  # debit and grant are both committed; recovery marks the saga done
            self._drop("main")
            return call.finish(OK, saga="left-to-recovery")
        return call.finish(OK)

    def _compensate(self, call: Call, why: str, error_class: str | None) -> Call:
        op = call.op_id
        call.phase = "compensate"
        if self.fault == "skip_compensation":  # the planted fault: give up without undoing the debit
            try:
                with self.main.cursor() as cur:
                    cur.execute("UPDATE toolclash.xs_sagas SET state = 'failed' WHERE op_id = %s", (op,))
                self.main.commit()
            except psycopg2.Error:
                self._drop("main")
            return call.finish(FAIL, why, error_class, compensated=False)
        deadline = time.monotonic() + self.compensation_deadline_s
        tries = 0
        while True:
            tries += 1
            try:
                self.ensure_connected()
                self.main.autocommit = self.auth.autocommit = False
                state = compensate(self.main, self.auth, op, "agent")
                self._bump("compensations")
                return call.finish(FAIL, why, error_class, compensated=state == "compensated",
                                   compensation_tries=tries)
            except (psycopg2.Error, ConnectError):  # e.g. the auth server is down: retried until the deadline
                for which in ("main", "auth"):
                    conn = getattr(self, which)
                    if conn is None or conn.closed:
                        self._drop(which)
                    else:
                        with contextlib.suppress(psycopg2.Error):
                            conn.rollback()
                if time.monotonic() >= deadline:
                    # the saga may still be 'debited' (then recovery decides by the grant): in doubt
                    return call.finish(UNKNOWN, "compensation-unfinished", error_class, compensation_tries=tries)
                time.sleep(min(0.2, 0.01 * 2 ** min(tries, 5)) * self.rng.random())

    # --- baseline for the benchmark: the same writes in one local transaction of one database ---

    def single_db(self, call: Call, agent: str, tool: str, cost: int) -> Call:
        op = call.op_id

        def body(cur: Any) -> dict[str, Any]:
            cur.execute(_DEBIT, (cost, agent, cost))
            row = cur.fetchone()
            if row is None:
                raise _no_funds(cur, agent)
            cur.execute(_DEBIT_ROW, (op, agent, tool, cost, "single"))
            cur.execute(_OUTBOX, (f"{op}:usage", op, "usage", agent, tool, cost))
            cur.execute("INSERT INTO toolclash.xs_local_grants (op_id, agent, tool) VALUES (%s, %s, %s)",
                        (op, agent, tool))
            return {}

        self.ensure_connected()
        self.main.autocommit = False
        return transact(self.main, call, body)


