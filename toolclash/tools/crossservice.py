"""Cross-service tool execution: ``grant_tool_access(agent, tool, cost)`` across three stores.

One business operation (keyed by its op id) must, all or nothing:

* deduct *cost* credits from *agent*'s account in the **main** PostgreSQL (``xs_accounts`` and a
  ``xs_debits`` row), writing the usage event to the ``xs_outbox`` table in the same local transaction;
* grant the permission in the **auth** PostgreSQL (``xs_grants``, a second cluster);
* record the usage event in **ClickHouse** (``xs_usage``): the :class:`Relay` moves outbox rows there
  with the event id as idempotency key (ReplacingMergeTree on ``event_id``; readers use ``FINAL``).

Modes (``--mode``, or ``--strategy``):

* ``2pc`` — a coordinator on PREPARE TRANSACTION / COMMIT PREPARED. Both branches are prepared, then
  the decision ``commit`` is written durably to ``xs_decisions`` in main (the commit point), then each
  branch is committed on the server where it was prepared. Any failure before the decision aborts;
  :mod:`toolclash.recover` resolves what a dead coordinator left prepared (presumed abort: no decision
  means abort; recovery writes ``abort`` into the same log, and the log's primary key makes the first
  decision win, so recovery may run while coordinators are alive).
* ``saga`` — local commits in order (debit+outbox+saga state in main, then the grant in auth); if the
  grant fails, the persisted saga turns ``compensating`` and the compensations run — revoke (a
  tombstone upsert, so a late grant changes nothing) and refund (keyed by op id, with a refund event in
  the outbox) — each idempotent and retried until done. Recovery finishes any saga left half-way.

Injections (``--inject``): ``coordinator_crash`` drops both connections at a random point between the
first PREPARE and the last COMMIT PREPARED (the call is ``unknown``; recovery resolves it);
``participant_terminate`` has the auth backend terminated (``pg_terminate_backend``) between steps.

Planted faults: ``no_recovery`` (recovery never runs during or after the run: in-doubt transactions
stay), ``skip_compensation`` (a failed saga marks itself failed and refunds nothing),
``relay_without_dedup`` (the relay gives every delivery a fresh key: redeliveries count twice).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg2
import psycopg2.errorcodes

from toolclash import schema
from toolclash.db import ConnectError, classify, close_quietly
from toolclash.history import FAIL, OK, UNKNOWN
from toolclash.option import Option, SettingsError
from toolclash.scenario import Scenario
from toolclash.stack.control import ServerControl
from toolclash.stack.process import StackError
from toolclash.tools import Call, Reject, transact

NAME = "crossservice"
SERVICES = ("postgres", "auth_postgres", "clickhouse")
STRATEGIES = ("2pc", "saga")
DEFAULT_STRATEGY = "2pc"
FAULTS = ("no_recovery", "skip_compensation", "relay_without_dedup")
INJECTIONS = ("none", "coordinator_crash", "participant_terminate", "clickhouse_outage", "auth_restart")
TOOL = "grant_tool_access"
TOOL_NAMES = ("web_search", "code_exec", "sql_query", "browser", "email")
AUTH_SCHEMA = "crossservice_auth"
GID_PREFIX = "xs:"
CRASH_POINTS = ("after_main_prepare", "after_both_prepared", "after_decision", "after_main_commit")
LOCK_TIMEOUT_S = 3.0
"""Agents' lock_timeout: a row lock held by a prepared transaction nobody resolves ends in a definite fail."""
INJECTED = "injected-fault"
"""Fail reason of a call that an injection made fail (an expected answer: left out of the success rate)."""

OPTIONS: tuple[Option, ...] = (
    Option("mode", str, "", "cross-service mode: 2pc (two-phase commit) or saga (compensations); empty: "
           "--strategy, else 2pc", choices=("", *STRATEGIES)),
    Option("inject", str, "none", "failure injected into cross-service calls: coordinator_crash (connections "
           "dropped between prepare and commit), participant_terminate (auth backend terminated between steps), "
           "clickhouse_outage (analytics unavailable for --outage-s from --outage-after-s), auth_restart (the "
           "embedded auth server stopped with pg_ctl -m immediate for --outage-s, then started)", choices=INJECTIONS),
    Option("inject_rate", float, 0.1, "share of cross-service calls the --inject failure hits"),
    Option("xs_agents", int, 10, "cross-service: business agents (credit accounts) the calls charge"),
    Option("xs_initial_credits", int, 1_000_000, "cross-service: starting credits of every account"),
    Option("xs_cost_max", int, 10, "cross-service: largest cost of one call (credits; the smallest is 1)"),
    Option("outage_after_s", float, 1.0, "cross-service: --inject clickhouse_outage or auth_restart starts this "
           "many seconds after the run started"),
    Option("outage_s", float, 2.0, "cross-service: how long the ClickHouse outage or the auth server's stop lasts, "
           "seconds"),
    Option("relay_interval_s", float, 0.1, "cross-service: pause of the outbox relay between batches, seconds"),
    Option("relay_redeliver_rate", float, 0.1, "cross-service: share of relay batches whose acknowledgement is "
           "lost after the ClickHouse insert (a relay crash): they are delivered again"),
    Option("recovery_min_age_s", float, 0.5, "cross-service: mid-run recovery leaves prepared transactions "
           "younger than this to their coordinator"),
)


def validate(opts: Any) -> None:
    if opts.mode not in ("", *STRATEGIES):
        raise SettingsError(f"--mode {opts.mode!r} is not one of {', '.join(STRATEGIES)}")
    if opts.inject not in INJECTIONS:
        raise SettingsError(f"--inject {opts.inject!r} is not one of {', '.join(INJECTIONS)}")
    if not 0.0 <= opts.inject_rate <= 1.0:
        raise SettingsError("--inject-rate must be between 0 and 1")
    if not 0.0 <= opts.relay_redeliver_rate < 1.0:
        raise SettingsError("--relay-redeliver-rate must be at least 0 and below 1")
    if opts.xs_agents <= 0 or opts.xs_cost_max <= 0 or opts.xs_initial_credits < 0:
        raise SettingsError("--xs-agents and --xs-cost-max must be greater than 0, --xs-initial-credits 0 or more")
    if opts.outage_after_s < 0 or opts.outage_s <= 0:
        raise SettingsError("--outage-after-s must be 0 or more and --outage-s greater than 0")
    if opts.relay_interval_s <= 0 or opts.recovery_min_age_s < 0:
        raise SettingsError("--relay-interval-s must be greater than 0 and --recovery-min-age-s 0 or more")


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
                self._terminate_auth()
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
            reason = self._why(terminate, kind.kind)
            return call.finish(FAIL, reason, kind.error_class, failed_in=call.phase)

    def _why(self, terminated: bool, kind: str) -> str:
        """Fail reason: ``injected-fault`` when an injection caused it (a participant terminated, or a lost
        connection while ``--inject auth_restart`` stops servers), else what the error was."""
        if terminated or (kind == "connection" and self.inject == "auth_restart"):
            return INJECTED
        return "connection-lost" if kind == "connection" else kind

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
        try:
            if terminate:
                self._terminate_auth()
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
            why = self._why(terminate, kind.kind)
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


# --------------------------------------------------------------------------------------- ClickHouse


def clickhouse_client(url: str, timeout_s: float = 10.0) -> Any:
    """A clickhouse-driver client (native protocol) for *url* ``clickhouse://user:pw@host:port/db``."""
    from clickhouse_driver import Client

    parts = urlsplit(url)
    if parts.scheme != "clickhouse" or not parts.hostname:
        from toolclash.option import mask_url

        raise SettingsError(f"CLICKHOUSE_URL {mask_url(url)!r} is not a ClickHouse native URL; use "
                            "clickhouse://user:password@host:9000/database")
    return Client(host=parts.hostname, port=parts.port or 9000, user=unquote(parts.username or "default"),
                  password=unquote(parts.password or ""), database=parts.path.lstrip("/") or "default",
                  connect_timeout=timeout_s, send_receive_timeout=max(timeout_s, 10.0),
                  settings={"insert_deduplicate": 0})


_CH_TABLE = ("CREATE TABLE IF NOT EXISTS xs_usage (event_id String, op_id String, kind String, agent String, "
             "tool String, cost Int64, created_at DateTime, relayed_at DateTime) "
             "ENGINE = ReplacingMergeTree() ORDER BY event_id")


# -------------------------------------------------------------------------------------------- relay


class Relay:
    """Moves outbox rows to ClickHouse; also runs mid-run 2PC recovery. Master side, one thread/greenlet.

    At least once: a batch is inserted into ClickHouse, then marked relayed in main. If the mark is lost
    (``redeliver_rate`` injects exactly that) the batch goes again; the event id is the idempotency key
    (ReplacingMergeTree on ``event_id``, read with ``FINAL``), so a redelivery is not counted twice —
    unless ``dedup=False`` (the planted fault), which keys every delivery afresh.
    """

    def __init__(self, backend: Any, *, dedup: bool = True, redeliver_rate: float = 0.0, interval_s: float = 0.1,
                 recover_2pc: bool = True, min_age_s: float = 0.5, batch: int = 500,
                 rng: random.Random | None = None, outage: tuple[float, float] | None = None,
                 auth_server: ServerControl | None = None, fault: str = "none") -> None:
        self.backend = backend
        self.dedup = dedup
        self.redeliver_rate = redeliver_rate
        self.interval_s = interval_s
        self.recover_2pc = recover_2pc
        self.min_age_s = min_age_s
        self.batch = batch
        self.rng = rng or random.Random()
        self.counts = {"relayed": 0, "deliveries": 0, "redelivered_batches": 0, "errors": 0, "recovered": 0}
        self.last_error = ""
        self.outage = outage
        """(start, length) in seconds after :meth:`start`: ClickHouse's table is detached meanwhile (or, with
        *auth_server*, the auth server is stopped)."""
        self.auth_server = auth_server
        self.fault = fault
        self._outage_state = "before"
        self._started_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._main: Any = None
        self._auth: Any = None
        self._ch: Any = None

    def _conns(self) -> tuple[Any, Any]:
        if self._main is None or self._main.closed:
            self._main = self.backend.pg("relay")
        if self._ch is None:
            self._ch = clickhouse_client(self.backend.url("CLICKHOUSE_URL"), self.backend.connect_timeout_s)
        return self._main, self._ch

    def run_once(self) -> int:
        """Relay one batch; return how many outbox rows it moved (0: nothing pending)."""
        main, ch = self._conns()
        with main.cursor() as cur:
            cur.execute("SELECT seq, event_id, op_id, kind, agent, tool, cost, created_at FROM toolclash.xs_outbox "
                        "WHERE relayed_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED", (self.batch,))
            rows = cur.fetchall()
        if not rows:
            main.rollback()
            return 0
        now = time.time()
        import datetime as dt

        stamp = dt.datetime.fromtimestamp(int(now), tz=dt.UTC).replace(tzinfo=None)
        data = [(r[1] if self.dedup else f"{r[1]}#{uuid.uuid4().hex[:12]}", r[2], r[3], r[4], r[5], int(r[6]),
                 r[7].astimezone(dt.UTC).replace(tzinfo=None), stamp) for r in rows]
        try:
            ch.execute("INSERT INTO xs_usage (event_id, op_id, kind, agent, tool, cost, created_at, relayed_at) "
                       "VALUES", data)
        except BaseException:
            main.rollback()
            raise
        self.counts["deliveries"] += len(rows)
        if self.redeliver_rate and self.rng.random() < self.redeliver_rate:
            main.rollback()  # the relay "crashed" after the insert: these rows go again
            self.counts["redelivered_batches"] += 1
            return len(rows)
        with main.cursor() as cur:
            cur.execute("UPDATE toolclash.xs_outbox SET relayed_at = clock_timestamp(), deliveries = deliveries + 1 "
                        "WHERE seq = ANY(%s)", ([r[0] for r in rows],))
        main.commit()
        self.counts["relayed"] += len(rows)
        return len(rows)

    def recover_once(self, min_age_s: float) -> int:
        from toolclash.recover import resolve_prepared

        if self._main is None or self._main.closed:
            self._main = self.backend.pg("relay")
        if self._auth is None or self._auth.closed:
            self._auth = self.backend.pg("relay", "AUTH_DATABASE_URL")
        counts = resolve_prepared(self._main, self._auth, min_age_s=min_age_s, who="recovery-live")
        self._main.autocommit = False
        n = counts["committed"] + counts["rolled_back"]
        self.counts["recovered"] += n
        return n

    def pending(self) -> int:
        main, _ = self._conns()
        with main.cursor() as cur:
            cur.execute("SELECT count(*) FROM toolclash.xs_outbox WHERE relayed_at IS NULL")
            n = int(cur.fetchone()[0])
        main.rollback()
        return n

    def _outage_tick(self) -> None:
        """``--inject clickhouse_outage``: detach the analytics table for a while, then attach it again.

        ClickHouse then answers every relay insert with an error (table unknown), as a stopped server
        fails every insert: the outbox backs up and drains once the table is back."""
        if self.outage is None or self._outage_state == "after":
            return
        elapsed = time.monotonic() - self._started_at
        start, length = self.outage
        if self._outage_state == "before" and elapsed >= start:
            self._outage_state, self.counts["outages"] = "during", 1
            if self.auth_server is not None:
                self.auth_server.stop("immediate")
            else:
                self._admin_ch("DETACH TABLE xs_usage")
        elif self._outage_state == "during" and elapsed >= start + length:
            self.end_outage()

    def end_outage(self) -> None:
        if self._outage_state == "during":
            if self.auth_server is not None:
                self.auth_server.start()
            else:
                self._admin_ch("ATTACH TABLE xs_usage")
        self._outage_state = "after"

    def _admin_ch(self, sql: str) -> None:
        ch = clickhouse_client(self.backend.url("CLICKHOUSE_URL"), self.backend.connect_timeout_s)
        try:
            ch.execute(sql)
        finally:
            ch.disconnect()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._outage_tick()
                if self.recover_2pc:
                    self.recover_once(self.min_age_s)
                while self.run_once() >= self.batch and not self._stop.is_set():
                    pass  # a full batch: more may be waiting
            except Exception as exc:  # noqa: BLE001 - keep relaying; the outbox keeps what was not moved
                self._error(exc)
            self._stop.wait(self.interval_s)

    def _error(self, exc: BaseException) -> None:
        self.counts["errors"] += 1
        self.last_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        for conn in (self._main, self._auth):
            if conn is not None and not conn.closed:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
        with contextlib.suppress(Exception):
            if self._ch is not None:
                self._ch.disconnect()
        self._ch = None

    def start(self) -> Relay:
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="toolclash-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def drain(self, deadline_s: float) -> bool:
        """Relay until the outbox is empty; False if rows are still pending at the deadline."""
        limit = time.monotonic() + deadline_s
        while True:
            try:
                while self.run_once():
                    pass
                if self.pending() == 0:
                    return True
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                self._error(exc)
            if time.monotonic() >= limit:
                return False
            time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        for conn in (self._main, self._auth):
            close_quietly(conn)
        with contextlib.suppress(Exception):
            if self._ch is not None:
                self._ch.disconnect()
        self._main = self._auth = self._ch = None


def auth_server_control(backend: Any) -> ServerControl:
    """The auth PostgreSQL server, for ``--inject auth_restart`` (stopped with ``pg_ctl stop -m immediate``, then
    started): only a local server this machine runs (the embedded stack's, or a local cluster)."""
    try:
        return ServerControl.of(backend.url("AUTH_DATABASE_URL"))
    except StackError as exc:
        raise SettingsError("--inject auth_restart stops and starts the auth server with pg_ctl: it needs a "
                            "local server (leave AUTH_DATABASE_URL unset to use the embedded one); "
                            f"{' '.join(str(exc).split())}") from None


# ------------------------------------------------------------------------------------- run hooks


def preflight(backend: Any) -> None:
    """Both PostgreSQL servers accept prepared transactions and ClickHouse answers (else one line)."""
    for var in ("DATABASE_URL", "AUTH_DATABASE_URL"):
        conn = backend.pg("preflight", var)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW max_prepared_transactions")
                if int(cur.fetchone()[0]) <= 0:
                    raise SettingsError(f"the server of {var} has max_prepared_transactions = 0; two-phase commit "
                                        "needs it above 0: set it in postgresql.conf and restart")
        finally:
            close_quietly(conn)
    url = backend.url("CLICKHOUSE_URL")
    client = clickhouse_client(url, backend.connect_timeout_s)
    try:
        client.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - one line: what and how to fix
        from toolclash.option import mask_url

        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SettingsError(f"ClickHouse at {mask_url(url)} does not answer ({first[:160]}); check CLICKHOUSE_URL "
                            "(or unset it to use the embedded server)") from None
    finally:
        client.disconnect()


def reset(conn: Any, *, backend: Any, xs_agents: int, xs_initial_credits: int, **_: Any) -> None:
    """Apply both schemas, resolve what earlier runs left in doubt (always), then empty and seed."""
    from toolclash.recover import recover

    auth = backend.pg("admin", "AUTH_DATABASE_URL")
    try:
        ensure_schemas(conn, auth)
        recover(conn, auth, who="recovery-start")
        conn.autocommit = False
        auth.autocommit = False
        with auth.cursor() as cur:
            cur.execute("TRUNCATE toolclash.xs_grants")
        auth.commit()
    finally:
        close_quietly(auth)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.xs_debits, toolclash.xs_refunds, toolclash.xs_sagas, toolclash.xs_decisions, "
                    "toolclash.xs_outbox, toolclash.xs_local_grants, toolclash.xs_accounts RESTART IDENTITY")
        cur.execute("INSERT INTO toolclash.xs_accounts (agent, balance, initial_balance) "
                    "SELECT 'agent-' || g, %s, %s FROM generate_series(1, %s) AS g",
                    (xs_initial_credits, xs_initial_credits, xs_agents))
    conn.commit()
    ch = clickhouse_client(backend.url("CLICKHOUSE_URL"), backend.connect_timeout_s)
    try:
        with contextlib.suppress(Exception):  # a run that died during --inject clickhouse_outage left it detached
            ch.execute("ATTACH TABLE xs_usage")
        ch.execute("DROP TABLE IF EXISTS xs_usage")
        ch.execute(_CH_TABLE)
    finally:
        ch.disconnect()


def _fault_of(run_dir: Path | None) -> str:
    from toolclash.run import read_json

    if run_dir is None or not (Path(run_dir) / "options.json").is_file():
        return "none"
    settings = read_json(Path(run_dir) / "options.json").get("settings", {})
    return str((settings.get("faults") or {}).get(NAME, "none"))


def start(backend: Any, opts: Any, run_dir: Path | None, fault: str | None = None) -> Relay:
    """Start the outbox relay (with mid-run 2PC recovery unless the planted fault ``no_recovery``)."""
    fault = fault if fault is not None else _fault_of(run_dir)
    auth_server = auth_server_control(backend) if opts.inject == "auth_restart" else None
    relay = Relay(backend, dedup=fault != "relay_without_dedup", redeliver_rate=opts.relay_redeliver_rate,
                  interval_s=opts.relay_interval_s, recover_2pc=fault != "no_recovery",
                  min_age_s=opts.recovery_min_age_s,
                  outage=(opts.outage_after_s, opts.outage_s) if opts.inject in ("clickhouse_outage", "auth_restart")
                  else None, auth_server=auth_server, fault=fault)
    return relay.start()


_RELAY_COUNTS: dict[str, dict[str, int]] = {}
"""What each run's relay did (by run id), written by :func:`finish` for :func:`snapshot` (master process)."""


def finish(backend: Any, opts: Any, handle: Relay | None, deadline_s: float) -> None:
    """After the load: stop the relay, run full recovery (2PC and sagas), drain the outbox to ClickHouse."""
    if handle is None:
        return
    try:
        handle.stop()
        handle.end_outage()
        if handle.fault != "no_recovery":
            from toolclash.recover import recover

            main = backend.pg("recovery")
            auth = backend.pg("recovery", "AUTH_DATABASE_URL")
            try:
                handle.counts["recovered_at_finish"] = sum(
                    v for k, v in recover(main, auth, who="recovery-finish").items() if k != "in_doubt_seen")
            finally:
                close_quietly(main)
                close_quietly(auth)
        handle.counts["drained"] = int(handle.drain(deadline_s))
    finally:
        handle.close()
        _RELAY_COUNTS[backend.run_id] = dict(handle.counts)


def snapshot(conn: Any, backend: Any = None) -> dict[str, Any]:
    """Main tables, auth grants, prepared transactions of both servers, and ClickHouse's deduplicated events."""
    out: dict[str, Any] = {}

    def rows(c: Any, sql: str, cols: tuple[str, ...]) -> list[dict[str, Any]]:
        with c.cursor() as cur:
            cur.execute(sql)
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    prepared_sql = ("SELECT gid, EXTRACT(EPOCH FROM prepared)::float8 FROM pg_prepared_xacts "
                    "WHERE database = current_database() ORDER BY gid")
    out["accounts"] = rows(conn, "SELECT agent, balance, initial_balance FROM toolclash.xs_accounts ORDER BY agent",
                           ("agent", "balance", "initial_balance"))
    out["debits"] = rows(conn, "SELECT op_id, agent, tool, cost, mode FROM toolclash.xs_debits ORDER BY op_id",
                         ("op_id", "agent", "tool", "cost", "mode"))
    out["refunds"] = rows(conn, "SELECT op_id, agent, cost FROM toolclash.xs_refunds ORDER BY op_id",
                          ("op_id", "agent", "cost"))
    out["sagas"] = rows(conn, "SELECT op_id, state, updated_by FROM toolclash.xs_sagas ORDER BY op_id",
                        ("op_id", "state", "updated_by"))
    out["decisions"] = rows(conn, "SELECT op_id, decision, decided_by FROM toolclash.xs_decisions ORDER BY op_id",
                            ("op_id", "decision", "decided_by"))
    out["outbox"] = rows(conn, "SELECT event_id, op_id, kind, agent, cost, EXTRACT(EPOCH FROM created_at)::float8, "
                         "EXTRACT(EPOCH FROM relayed_at)::float8, deliveries FROM toolclash.xs_outbox ORDER BY seq",
                         ("event_id", "op_id", "kind", "agent", "cost", "created_at", "relayed_at", "deliveries"))
    out["prepared_main"] = rows(conn, prepared_sql, ("gid", "prepared"))
    conn.rollback()
    if backend is None:
        return out
    out["relay"] = _RELAY_COUNTS.pop(backend.run_id, None)
    auth = backend.pg("capture", "AUTH_DATABASE_URL")
    try:
        out["grants"] = rows(auth, "SELECT op_id, agent, tool, granted, revoked_at IS NOT NULL "
                             "FROM toolclash.xs_grants ORDER BY op_id",
                             ("op_id", "agent", "tool", "granted", "revoked"))
        out["prepared_auth"] = rows(auth, prepared_sql, ("gid", "prepared"))
        auth.rollback()
    finally:
        close_quietly(auth)
    try:
        ch = clickhouse_client(backend.url("CLICKHOUSE_URL"), backend.connect_timeout_s)
        try:
            out["clickhouse_events"] = [
                dict(zip(("event_id", "op_id", "kind", "agent", "cost"), r, strict=True)) for r in
                ch.execute("SELECT event_id, op_id, kind, agent, cost FROM xs_usage FINAL ORDER BY event_id")]
            out["clickhouse_raw_rows"] = int(ch.execute("SELECT count() FROM xs_usage")[0][0])
        finally:
            ch.disconnect()
    except Exception as exc:  # noqa: BLE001 - the analytics check says unknown
        out["clickhouse_error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return out


SCENARIO = Scenario(  # temporary adapters onto the module's hooks (the package split replaces them)
    name=NAME,
    summary="agents grant tool access across two PostgreSQL servers and ClickHouse (2PC or saga); checks prove "
            "every grant is all-or-nothing and analytics count each event once",
    tools=(TOOL,),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    services=SERVICES,
    rejections=frozenset({"insufficient-funds", INJECTED}),
    validate=validate,
    preflight=preflight,
    reset=lambda ctx, conn: reset(conn, backend=ctx.backend, **vars(ctx.opts)),
    start=lambda ctx: start(ctx.backend, ctx.opts, ctx.run_dir, ctx.fault),
    finish=lambda ctx, handle, deadline_s: finish(ctx.backend, ctx.opts, handle, deadline_s),
    snapshot=lambda ctx, conn: snapshot(conn, ctx.backend),
    checks="checks.crossservice",
)
