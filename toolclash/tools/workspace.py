"""Event-sourced agent workspace: agents append events, projectors keep read models, queries read those.

Write side. Every command is one tool call that appends one event to its workspace's stream
(``ws_events``, ``UNIQUE (stream_id, seq)``) in one transaction:

* ``upload_file(workspace, path, size, sha256)`` → ``FileUploaded`` (file metadata only);
* ``set_config(workspace, key, value)`` → ``ConfigSet``;
* ``grant(workspace, principal, perm)`` → ``PermissionGranted``, rejected (``already-granted``) if granted;
* ``revoke(workspace, principal, perm)`` → ``PermissionRevoked``, rejected (``not-granted``) if not granted.

Strategy ``expected_version`` (default): one statement reads the stream head *v* and the state the
command decides on (one snapshot); the append is a compare-and-set of the head from *v* to *v + 1* and the
event gets seq *v + 1* and ``decided_version`` *v*. Zero rows updated means another agent appended first:
roll back, re-read, re-decide, retry under the retry policy. Strategy ``locked_head`` locks the head row
first (appenders queue there, no conflicts) and reads the state after the lock. Either way every event was
decided on exactly the state before it, and a racing grant and revoke of one permission end as one serial
order: each command is either an event valid on the state before it or a rejection justified by the
version it read.

Read side. A :class:`Projector` applies events to the read models (``ws_proj_files``, ``ws_proj_config``,
``ws_proj_permissions``) asynchronously. Per stream it locks the checkpoint row ``FOR UPDATE SKIP LOCKED``,
applies the next contiguous events, logs each application in ``ws_applied`` and moves the checkpoint,
all in one transaction: an event is applied exactly once whether one or several instances run and whether
one dies mid-batch (its transaction rolls back with its lock). ``query_workspace(workspace)`` reads only the
projections, in one statement, and records the version (checkpoint) it saw.

Planted faults (README): ``append_without_expected_version`` (seq from a non-transactional per-stream
sequence, state read without a version: gaps, commit order ≠ seq order, decisions on stale state),
``projector_checkpoint_separate`` (read models and checkpoint in two transactions: events applied twice),
``read_from_any_replica`` (queries answered from any recent snapshot: non-monotonic reads),
``ack_without_append`` (5 % of commands acknowledged, then rolled back) and ``unattributed_events``
(5 % of events lose their op id: the audit trail cannot say which tool call caused them).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extras
from psycopg2.extras import Json

from toolclash import schema
from toolclash.db import close_quietly
from toolclash.option import Option, SettingsError
from toolclash.scenario import Context, Scenario
from toolclash.tools import Call, Reject, VersionConflict, think, transact

log = logging.getLogger("toolclash.workspace")

NAME = "workspace"
STRATEGIES = ("expected_version", "locked_head")
"""Both correct: ``expected_version`` is optimistic (conflict, re-decide, retry), ``locked_head`` queues
appenders on the stream head's row lock (no conflicts, no retries)."""
DEFAULT_STRATEGY = "expected_version"
FAULTS = ("append_without_expected_version", "projector_checkpoint_separate", "read_from_any_replica",
          "ack_without_append", "unattributed_events")
"""Planted faults (README): each must make a check fail."""
FAULT_RATE = 0.05
"""Share of calls ``ack_without_append`` and ``unattributed_events`` affect."""

COMMANDS = ("upload_file", "set_config", "grant", "revoke")
QUERY = "query_workspace"
EVENT_OF = {"upload_file": "FileUploaded", "set_config": "ConfigSet", "grant": "PermissionGranted",
            "revoke": "PermissionRevoked"}
PERMS = ("read", "write", "admin")

OPTIONS: tuple[Option, ...] = (
    Option("workspaces", int, 8, "number of workspaces (one event stream each)"),
    Option("principals", int, 4, "principals per workspace that permissions are granted to and revoked from"),
    Option("paths", int, 20, "distinct file paths agents upload to per workspace"),
    Option("config_keys", int, 8, "distinct configuration keys per workspace"),
    Option("query_share", float, 0.3, "share of an agent's calls that are queries of the read side"),
    Option("permission_share", float, 0.4, "share of an agent's commands that are grants or revokes"),
    Option("projectors", int, 2, "projector instances running at once (master side; they compete per stream)"),
    Option("projector_batch", int, 200, "most events a projector applies in one transaction"),
    Option("projector_poll_ms", float, 5.0, "how long an idle projector waits before looking again"),
    Option("projector_crash_rate", float, 0.0, "share of projector batches that crash after updating the read "
           "models and before committing (the projector restarts); shows exactly-once under crashes"),
    Option("gate_lag_p95_ms", float, 1000.0, "SLA gate: most P95 projection lag (append to visible), in ms"),
)


def validate(opts: Any) -> None:
    """Raise :class:`SettingsError` (one line, naming the flag) if an option is out of range."""
    for name in ("workspaces", "principals", "paths", "config_keys", "projectors", "projector_batch"):
        if getattr(opts, name) <= 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be greater than 0")
    for name in ("query_share", "permission_share", "projector_crash_rate"):
        if not 0.0 <= getattr(opts, name) <= 1.0:
            raise SettingsError(f"--{name.replace('_', '-')} must be between 0 and 1")
    if opts.projector_poll_ms < 0 or opts.gate_lag_p95_ms <= 0:
        raise SettingsError("--projector-poll-ms must be 0 or more and --gate-lag-p95-ms greater than 0")


# ------------------------------------------------------------------------------------------ write side

_HEAD_AND_PERMISSION = (
    "SELECT s.version, (SELECT e.type FROM toolclash.ws_events e WHERE e.stream_id = s.stream_id "
    "AND e.seq <= s.version AND e.type IN ('PermissionGranted', 'PermissionRevoked') "
    "AND e.payload->>'principal' = %s AND e.payload->>'perm' = %s ORDER BY e.seq DESC LIMIT 1) "
    "FROM toolclash.ws_streams s WHERE s.stream_id = %s")
_LATEST_PERMISSION_ANY_VERSION = (  # the fault: whatever is committed now, no version it is bound to
    "SELECT (SELECT max(seq) FROM toolclash.ws_events WHERE stream_id = %s), "
    "(SELECT e.type FROM toolclash.ws_events e WHERE e.stream_id = %s "
    "AND e.type IN ('PermissionGranted', 'PermissionRevoked') "
    "AND e.payload->>'principal' = %s AND e.payload->>'perm' = %s ORDER BY e.seq DESC LIMIT 1)")
_INSERT_EVENT = (
    "INSERT INTO toolclash.ws_events (stream_id, seq, type, payload, agent, op_id, causation_id, correlation_id, "
    "decided_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")
_QUERY = (
    "SELECT c.position, "
    "(SELECT count(*) FROM toolclash.ws_proj_files f WHERE f.stream_id = c.stream_id), "
    "(SELECT count(*) FROM toolclash.ws_proj_config k WHERE k.stream_id = c.stream_id), "
    "(SELECT count(*) FROM toolclash.ws_proj_permissions p WHERE p.stream_id = c.stream_id AND p.granted) "
    "FROM toolclash.ws_checkpoints c WHERE c.stream_id = %s")

_replicas: dict[int, deque[dict[str, Any]]] = defaultdict(lambda: deque(maxlen=8))
"""``read_from_any_replica``: recent query results per workspace, shared by the agents of a process."""


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class WorkspaceTool:
    """The workspace tools bound to one agent's connection."""

    def __init__(self, conn: Any, *, agent: str, strategy: str = DEFAULT_STRATEGY, think_ms: float = 0.0,
                 fault: str = "none", rng: random.Random | None = None) -> None:
        self.conn = conn
        self.agent = agent
        self.strategy = strategy
        self.think_ms = think_ms
        self.fault = fault
        self.rng = rng or random.Random()
        self._commit_fault: Callable[[Call], str | None] | None = None
        if fault == "ack_without_append":
            self._commit_fault = lambda call: "rollback" if self.rng.random() < FAULT_RATE else None

    # --- commands ---

    def upload_file(self, call: Call, workspace: int, path: str, size: int, sha256: str,
                    correlation_id: str | None = None) -> Call:
        payload = {"path": path, "size": size, "sha256": sha256}
        return self._command(call, workspace, "FileUploaded", payload, correlation_id)

    def set_config(self, call: Call, workspace: int, key: str, value: Any, correlation_id: str | None = None) -> Call:
        return self._command(call, workspace, "ConfigSet", {"key": key, "value": value}, correlation_id)

    def grant(self, call: Call, workspace: int, principal: str, perm: str, correlation_id: str | None = None) -> Call:
        return self._command(call, workspace, "PermissionGranted", {"principal": principal, "perm": perm},
                             correlation_id, permission=(principal, perm, True))

    def revoke(self, call: Call, workspace: int, principal: str, perm: str, correlation_id: str | None = None) -> Call:
        return self._command(call, workspace, "PermissionRevoked", {"principal": principal, "perm": perm},
                             correlation_id, permission=(principal, perm, False))

    def _command(self, call: Call, workspace: int, etype: str, payload: dict[str, Any], correlation_id: str | None,
                 permission: tuple[str, str, bool] | None = None) -> Call:
        body = (self._append_unversioned if self.fault == "append_without_expected_version" else
                self._append_locked if self.strategy == "locked_head" else self._append)
        return transact(self.conn, call,
                        lambda cur: body(cur, call, workspace, etype, payload, correlation_id, permission),
                        fault=self._commit_fault)

    @staticmethod
    def _decide(permission: tuple[str, str, bool] | None, latest: str | None, version: int) -> None:
        """Reject a grant of a granted permission and a revoke of one not granted (at *version*)."""
        if permission is None:
            return
        granted = latest == "PermissionGranted"
        if permission[2] and granted:
            raise Reject("already-granted", version=version)
        if not permission[2] and not granted:
            raise Reject("not-granted", version=version)

    def _ids(self, call: Call) -> tuple[str | None, str | None]:
        if self.fault == "unattributed_events" and self.rng.random() < FAULT_RATE:
            return None, None  # the tool call's id was not propagated to the store
        return call.op_id, call.op_id

    def _append(self, cur: Any, call: Call, workspace: int, etype: str, payload: dict[str, Any],
                correlation_id: str | None, permission: tuple[str, str, bool] | None) -> dict[str, Any]:
        principal, perm = (permission[0], permission[1]) if permission else ("", "")
        cur.execute(_HEAD_AND_PERMISSION, (principal, perm, workspace))  # one statement: one snapshot
        row = cur.fetchone()
        if row is None:
            raise Reject("no-such-workspace")
        version, latest = int(row[0]), row[1]
        think(self.think_ms)
        self._decide(permission, latest, version)
        cur.execute("UPDATE toolclash.ws_streams SET version = %s WHERE stream_id = %s AND version = %s",
                    (version + 1, workspace, version))
        if cur.rowcount == 0:
            raise VersionConflict
        op_id, causation = self._ids(call)
        cur.execute(_INSERT_EVENT, (workspace, version + 1, etype, Json(payload), self.agent, op_id, causation,
                                    correlation_id, version))
        return {"seq": version + 1, "decided_version": version}

    def _append_locked(self, cur: Any, call: Call, workspace: int, etype: str, payload: dict[str, Any],
                       correlation_id: str | None, permission: tuple[str, str, bool] | None) -> dict[str, Any]:
        """``locked_head``: lock the head row first (appenders queue there), then read the state in a second
        statement, whose snapshot is taken after the lock and so sees every event up to the head."""
        cur.execute("SELECT version FROM toolclash.ws_streams WHERE stream_id = %s FOR UPDATE", (workspace,))
        row = cur.fetchone()
        if row is None:
            raise Reject("no-such-workspace")
        version = int(row[0])
        principal, perm = (permission[0], permission[1]) if permission else ("", "")
        cur.execute(_HEAD_AND_PERMISSION, (principal, perm, workspace))
        latest = cur.fetchone()[1]
        think(self.think_ms)
        self._decide(permission, latest, version)
        cur.execute("UPDATE toolclash.ws_streams SET version = %s WHERE stream_id = %s", (version + 1, workspace))
        op_id, causation = self._ids(call)
        cur.execute(_INSERT_EVENT, (workspace, version + 1, etype, Json(payload), self.agent, op_id, causation,
                                    correlation_id, version))
        return {"seq": version + 1, "decided_version": version}

    def _append_unversioned(self, cur: Any, call: Call, workspace: int, etype: str, payload: dict[str, Any],
                            correlation_id: str | None, permission: tuple[str, str, bool] | None) -> dict[str, Any]:
        """The planted fault: seq from a per-stream SEQUENCE (not rolled back with the transaction), the
        state read without binding it to a version, no compare-and-set."""
        cur.execute("SELECT nextval(%s)", (f"toolclash.ws_seq_{int(workspace)}",))
        seq = int(cur.fetchone()[0])
        principal, perm = (permission[0], permission[1]) if permission else ("", "")
        cur.execute(_LATEST_PERMISSION_ANY_VERSION, (workspace, workspace, principal, perm))
        seen, latest = cur.fetchone()
        seen = int(seen or 0)
        think(self.think_ms)
        self._decide(permission, latest, seen)
        op_id, causation = self._ids(call)
        cur.execute(_INSERT_EVENT, (workspace, seq, etype, Json(payload), self.agent, op_id, causation,
                                    correlation_id, seen))
        cur.execute("UPDATE toolclash.ws_streams SET version = GREATEST(version, %s) WHERE stream_id = %s",
                    (seq, workspace))
        return {"seq": seq, "decided_version": seen}

    # --- query (read side only) ---

    def query(self, call: Call, workspace: int) -> Call:
        if self.fault == "read_from_any_replica":
            recent = _replicas[workspace]
            if recent and self.rng.random() < 0.5:
                return call.finish("ok", **self.rng.choice(list(recent)), replica=True)

        def body(cur: Any) -> dict[str, Any]:
            cur.execute(_QUERY, (workspace,))
            row = cur.fetchone()
            if row is None:
                raise Reject("no-such-workspace")
            return {"version": int(row[0]), "files": int(row[1]), "config_keys": int(row[2]), "grants": int(row[3])}

        transact(self.conn, call, body)
        if self.fault == "read_from_any_replica" and call.outcome == "ok":
            _replicas[workspace].append({k: call.result[k] for k in ("version", "files", "config_keys", "grants")})
        return call


# ------------------------------------------------------------------------------------------- read side


class ProjectorCrash(Exception):
    """A planted crash of a projector between updating the read models and committing."""


_PICK_STREAM = (
    "SELECT c.stream_id, c.position FROM toolclash.ws_checkpoints c "
    "JOIN toolclash.ws_streams s ON s.stream_id = c.stream_id WHERE s.version > c.position "
    "ORDER BY random() LIMIT 1 FOR UPDATE OF c SKIP LOCKED")


class Projector:
    """One projector instance: applies events to the read models, exactly once per event.

    :meth:`step` is one transaction on one stream: lock its checkpoint row (``FOR UPDATE SKIP LOCKED``,
    so instances share the streams), read the events after the checkpoint, apply the contiguous ones,
    log each application and move the checkpoint, COMMIT. A gap (an event that is not there, or not yet
    committed) stops the batch: events are applied in seq order only.
    """

    def __init__(self, connect: Callable[[], Any], name: str, *, batch: int = 200, poll_s: float = 0.005,
                 crash_rate: float = 0.0, separate_checkpoint: bool = False, pause_s: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self.connect = connect
        self.name = name
        self.batch = batch
        self.poll_s = poll_s
        self.crash_rate = crash_rate
        self.separate_checkpoint = separate_checkpoint
        self.pause_s = pause_s
        """Sleep between updating the read models and committing (widens the window a kill lands in)."""
        self.rng = rng or random.Random()
        self.conn: Any = None
        self.applied = 0
        self.batches = 0
        self.crashes = 0
        self.errors = 0
        self.last_error = ""

    def step(self) -> int:
        """Apply the next batch of one stream; the number of events applied (0: nothing to do now)."""
        if self.conn is None or self.conn.closed:
            self.conn = self.connect()
        conn = self.conn
        with conn.cursor() as cur:
            cur.execute(_PICK_STREAM)
            row = cur.fetchone()
            if row is None:
                conn.rollback()
                return 0
            stream, position = int(row[0]), int(row[1])
            cur.execute("SELECT seq, type, payload, agent FROM toolclash.ws_events WHERE stream_id = %s "
                        "AND seq > %s ORDER BY seq LIMIT %s", (stream, position, self.batch))
            events: list[tuple[int, str, Any, str]] = []
            for seq, etype, payload, agent in cur.fetchall():
                if seq != position + len(events) + 1:
                    break  # a gap: wait for it (it may not be committed yet)
                events.append((int(seq), etype, payload, agent))
            if not events:
                conn.rollback()
                return 0
            self._apply(cur, stream, events)
            if self.separate_checkpoint:  # the fault: read models committed, checkpoint later
                conn.commit()
            if self.pause_s:
                time.sleep(self.pause_s)
            self._maybe_crash()
            cur.execute("UPDATE toolclash.ws_checkpoints SET position = %s, projector = %s, "
                        "updated_at = clock_timestamp() WHERE stream_id = %s", (events[-1][0], self.name, stream))
        conn.commit()
        self.applied += len(events)
        self.batches += 1
        return len(events)

    def _maybe_crash(self) -> None:
        if self.crash_rate and self.rng.random() < self.crash_rate:
            close_quietly(self.conn)  # the server rolls back what is not committed and frees the row lock
            self.conn = None
            raise ProjectorCrash

    def _apply(self, cur: Any, stream: int, events: list[tuple[int, str, Any, str]]) -> None:
        """Fold a batch into the read models: one upsert per touched row, counters added up."""
        files: dict[str, list[Any]] = {}
        config: dict[str, list[Any]] = {}
        perms: dict[tuple[str, str], list[Any]] = {}
        for seq, etype, p, agent in events:
            if etype == "FileUploaded":
                n = files[p["path"]][6] + 1 if p["path"] in files else 1
                files[p["path"]] = [stream, p["path"], int(p["size"]), p["sha256"], agent, seq, n]
            elif etype == "ConfigSet":
                n = config[p["key"]][4] + 1 if p["key"] in config else 1
                config[p["key"]] = [stream, p["key"], Json(p["value"]), seq, n]
            elif etype in ("PermissionGranted", "PermissionRevoked"):
                key = (p["principal"], p["perm"])
                n = perms[key][5] + 1 if key in perms else 1
                perms[key] = [stream, key[0], key[1], etype == "PermissionGranted", seq, n]
        ev = psycopg2.extras.execute_values
        if files:
            ev(cur, "INSERT INTO toolclash.ws_proj_files AS t "
               "(stream_id, path, size, sha256, uploaded_by, seq, uploads) VALUES %s "
               "ON CONFLICT (stream_id, path) DO UPDATE SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256, "
               "uploaded_by = EXCLUDED.uploaded_by, seq = EXCLUDED.seq, uploads = t.uploads + EXCLUDED.uploads",
               list(files.values()))
        if config:
            ev(cur, "INSERT INTO toolclash.ws_proj_config AS t (stream_id, key, value, seq, changes) VALUES %s "
               "ON CONFLICT (stream_id, key) DO UPDATE SET value = EXCLUDED.value, seq = EXCLUDED.seq, "
               "changes = t.changes + EXCLUDED.changes", list(config.values()))
        if perms:
            ev(cur, "INSERT INTO toolclash.ws_proj_permissions AS t "
               "(stream_id, principal, perm, granted, seq, changes) VALUES %s "
               "ON CONFLICT (stream_id, principal, perm) DO UPDATE SET granted = EXCLUDED.granted, "
               "seq = EXCLUDED.seq, changes = t.changes + EXCLUDED.changes", list(perms.values()))
        ev(cur, "INSERT INTO toolclash.ws_applied (stream_id, seq, projector) VALUES %s",
           [(stream, e[0], self.name) for e in events], page_size=1000)

    def run(self, stop: threading.Event) -> None:
        """Step until *stop* is set; a crash or a lost connection restarts the projector (new session)."""
        while not stop.is_set():
            try:
                if self.step() == 0:
                    stop.wait(self.poll_s)
            except ProjectorCrash:
                self.crashes += 1
            except psycopg2.Error as exc:
                self.errors += 1
                self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                close_quietly(self.conn)
                self.conn = None
                stop.wait(0.05)
            except Exception as exc:  # noqa: BLE001 - e.g. no connection: keep trying until stopped
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.conn = None
                stop.wait(0.2)
        close_quietly(self.conn)
        self.conn = None


def behind(conn: Any) -> int:
    """Events appended (per the stream heads) that no checkpoint covers yet."""
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE(sum(s.version - c.position), 0) FROM toolclash.ws_streams s "
                    "JOIN toolclash.ws_checkpoints c ON c.stream_id = s.stream_id")
        n = int(cur.fetchone()[0])
    conn.rollback()
    return n


def _bind(connect: Callable[[str], Any], who: str) -> Callable[[], Any]:
    return lambda: connect(who)


class Projectors:
    """Several projector instances on threads (greenlets under Locust's gevent): started, drained, stopped."""

    def __init__(self, connect: Callable[[str], Any], count: int, *, batch: int = 200, poll_s: float = 0.005,
                 crash_rate: float = 0.0, separate_checkpoint: bool = False, pause_s: float = 0.0) -> None:
        self.connect = connect
        self.instances = [Projector(_bind(connect, f"projector-{i + 1}"), f"projector-{i + 1}",
                                    batch=batch, poll_s=poll_s, crash_rate=crash_rate,
                                    separate_checkpoint=separate_checkpoint, pause_s=pause_s)
                          for i in range(count)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Projectors:
        for p in self.instances:
            t = threading.Thread(target=p.run, args=(self._stop,), name=p.name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def drain(self, deadline_s: float, stall_s: float = 2.0) -> int:
        """Wait until every appended event is projected, or nothing moved for *stall_s*, or *deadline_s*.
        Returns the events still not projected."""
        conn = self.connect("drain")
        try:
            end = time.monotonic() + deadline_s
            left = behind(conn)
            moved = time.monotonic()
            while left and time.monotonic() < end and time.monotonic() - moved < stall_s:
                time.sleep(0.02)
                now = behind(conn)
                if now < left:
                    moved = time.monotonic()
                left = now
            return left
        finally:
            close_quietly(conn)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {p.name: {"applied": p.applied, "batches": p.batches, "crashes": p.crashes, "errors": p.errors,
                         "last_error": p.last_error} for p in self.instances}


# ------------------------------------------------------------------------------------ scenario hooks


def reset(conn: Any, *, workspaces: int, **_: Any) -> None:
    """Create the schema if needed, empty it, seed *workspaces* empty streams and their checkpoints."""
    schema.apply(conn, NAME)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.ws_applied, toolclash.ws_proj_files, toolclash.ws_proj_config, "
                    "toolclash.ws_proj_permissions, toolclash.ws_checkpoints, toolclash.ws_events, "
                    "toolclash.ws_streams RESTART IDENTITY")
        cur.execute("INSERT INTO toolclash.ws_streams (stream_id) SELECT g FROM generate_series(1, %s) AS g",
                    (workspaces,))
        cur.execute("INSERT INTO toolclash.ws_checkpoints (stream_id) SELECT g FROM generate_series(1, %s) AS g",
                    (workspaces,))
        for ws in range(1, workspaces + 1):  # used only by the planted fault append_without_expected_version
            cur.execute(f"DROP SEQUENCE IF EXISTS toolclash.ws_seq_{ws}")
            cur.execute(f"CREATE SEQUENCE toolclash.ws_seq_{ws}")
    conn.commit()
    _replicas.clear()


def start(ctx: Context) -> Projectors:
    """Master side, after reset: start ``--projectors`` projector instances for the run."""
    opts, backend = ctx.opts, ctx.backend
    return Projectors(lambda who: backend.pg(who), opts.projectors, batch=opts.projector_batch,
                      poll_s=opts.projector_poll_ms / 1000.0, crash_rate=opts.projector_crash_rate,
                      separate_checkpoint=ctx.fault == "projector_checkpoint_separate").start()


def finish(ctx: Context, handle: Projectors | None, deadline_s: float) -> None:
    """After the load: let the projectors catch up (or stall), stop them, log what they did."""
    if handle is None:
        return
    try:
        left = handle.drain(deadline_s)
    finally:
        handle.stop()
    done = ", ".join(f"{n} applied {s['applied']} in {s['batches']} batches, {s['crashes']} crashes, "
                     f"{s['errors']} errors" for n, s in handle.stats().items())
    if left:
        log.warning("workspace projectors: %s; %d event(s) not projected at the end", done, left)
    else:
        log.info("workspace projectors: %s", done)


def _epoch(ts: Any) -> float | None:
    return ts.timestamp() if ts is not None else None


def snapshot(conn: Any, backend: Any = None) -> dict[str, Any]:
    """The final state the workspace checks need: events, stream heads, checkpoints, read models, applied log."""
    out: dict[str, Any] = {}
    cols: tuple[str, ...]
    with conn.cursor() as cur:
        cur.execute("SELECT stream_id, version FROM toolclash.ws_streams ORDER BY stream_id")
        out["streams"] = [{"stream_id": r[0], "version": r[1]} for r in cur.fetchall()]
        cur.execute("SELECT position, stream_id, seq, type, payload, agent, op_id, causation_id, correlation_id, "
                    "decided_version, committed_at FROM toolclash.ws_events ORDER BY position")
        cols = ("position", "stream_id", "seq", "type", "payload", "agent", "op_id", "causation_id",
                "correlation_id", "decided_version", "committed_at")
        out["events"] = [dict(zip(cols, (*r[:-1], _epoch(r[-1])), strict=True)) for r in cur.fetchall()]
        cur.execute("SELECT stream_id, position, projector FROM toolclash.ws_checkpoints ORDER BY stream_id")
        out["checkpoints"] = [{"stream_id": r[0], "position": r[1], "projector": r[2]} for r in cur.fetchall()]
        cur.execute("SELECT stream_id, path, size, sha256, uploaded_by, seq, uploads FROM toolclash.ws_proj_files "
                    "ORDER BY stream_id, path")
        cols = ("stream_id", "path", "size", "sha256", "uploaded_by", "seq", "uploads")
        out["files"] = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        cur.execute("SELECT stream_id, key, value, seq, changes FROM toolclash.ws_proj_config ORDER BY stream_id, key")
        cols = ("stream_id", "key", "value", "seq", "changes")
        out["config"] = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        cur.execute("SELECT stream_id, principal, perm, granted, seq, changes FROM toolclash.ws_proj_permissions "
                    "ORDER BY stream_id, principal, perm")
        cols = ("stream_id", "principal", "perm", "granted", "seq", "changes")
        out["permissions"] = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        cur.execute("SELECT stream_id, seq, projector, applied_at FROM toolclash.ws_applied "
                    "ORDER BY applied_at, stream_id, seq")
        out["applied"] = [{"stream_id": r[0], "seq": r[1], "projector": r[2], "applied_at": _epoch(r[3])}
                          for r in cur.fetchall()]
    conn.rollback()
    return out


SCENARIO = Scenario(
    name=NAME,
    summary="agents append commands to event-sourced workspaces while projectors build read models; checks prove "
            "every decision saw its version, the projection is exact and the audit trail complete",
    tools=(*COMMANDS, QUERY),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    rejections=frozenset({"already-granted", "not-granted"}),
    validate=validate,
    reset=lambda ctx, conn: reset(conn, **vars(ctx.opts)),
    start=start,
    finish=finish,
    snapshot=lambda ctx, conn: snapshot(conn),
    checks="checks.workspace",
)


# ------------------------------------------------------------------- a projector as its own process


def main(argv: list[str] | None = None) -> int:
    """``python -m toolclash.tools.workspace --url URL --name N``: one projector until SIGTERM/SIGKILL.

    The tests kill this process mid-batch and start another, to show exactly-once across a crash.
    """
    import argparse

    from toolclash import db

    parser = argparse.ArgumentParser(prog="python -m toolclash.tools.workspace")
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", default="projector")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--pause-ms", type=float, default=0.0)
    parser.add_argument("--separate-checkpoint", action="store_true")
    args = parser.parse_args(argv)
    projector = Projector(lambda: db.connect(args.url, application_name=f"toolclash:{args.name}"), args.name,
                          batch=args.batch, pause_s=args.pause_ms / 1000.0,
                          separate_checkpoint=args.separate_checkpoint)
    print(f"projector {args.name} running", flush=True)
    projector.run(threading.Event())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
