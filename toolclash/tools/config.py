"""Agent configuration under contention: many agents update different fields of the same record.

A record is one JSONB document (``{"f01": …, "f02": …}``) plus a version column
(``toolclash/schema/config.sql`` says why a document and not a column per field). Each agent owns
one field, picked from its agent number, and ``update_config(record, value)`` sets that field. Every
applied write also inserts one row in ``config_writes`` (keyed by the op id, in the same
transaction, with the version it produced and the whole document it left), so the checks know the
commit order and can resolve in-doubt calls. Strategies:

* ``versioned`` — read document and version, change the agent's own field, write the whole document
  back ``WHERE version = <read>``; zero rows updated is a :class:`~toolclash.tools.VersionConflict`
  detected at the write: roll back, back off (full jitter), re-read and re-apply the agent's change;
  when the retry policy is exhausted the call ends ``fail`` with reason ``conflict-exhausted``.
* ``field_atomic`` — one in-place ``jsonb_set`` of the agent's field: cannot conflict (the
  efficient baseline).
* ``last_writer_wins`` — the read-modify-write of ``versioned`` without the version check.
  Known-bad: a writer that read an older document puts other agents' fields back (lost updates).
* ``timestamp_ordered`` — the write carries the agent's logical (Lamport) timestamp and is applied
  to the field only if it is newer than the field's stored timestamp; an older write loses to the
  newer one: ``fail`` with reason ``stale-timestamp``, detected at the write, no retry.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from psycopg2.extras import Json

from toolclash import schema
from toolclash.history import FAIL
from toolclash.option import Option, SettingsError
from toolclash.retry import VERSION_CONFLICT
from toolclash.scenario import Scenario
from toolclash.targets.shape import Table, TargetShape
from toolclash.tools import Call, Reject, VersionConflict, think, transact

NAME = "config"
TOOL = "update_config"
STRATEGIES = ("versioned", "field_atomic", "last_writer_wins", "timestamp_ordered")
"""``last_writer_wins`` is the known-bad baseline."""
DEFAULT_STRATEGY = "versioned"
FAULTS = ("ack_before_commit", "ambiguous_as_fail", "timestamp_unchecked", "truncated_write")
"""Planted faults (docs/planted-faults.md): each must make a check fail. ``timestamp_unchecked`` applies to
``timestamp_ordered`` only: it stamps writes but no longer compares the timestamps. ``truncated_write`` stores
every value in the document without its last character (a too-narrow buffer) while the write log records the
value the agent asked for."""
FAULT_RATE = 0.05
"""Share of calls ``ack_before_commit`` / ``ambiguous_as_fail`` affect."""

CONFLICT_EXHAUSTED = "conflict-exhausted"
STALE_TIMESTAMP = "stale-timestamp"
INITIAL_VALUE = "init"
TS_AGENTS = 1_000_000
"""A logical timestamp is ``counter * TS_AGENTS + agent number``: Lamport counter, agent as tie-break."""

OPTIONS: tuple[Option, ...] = (
    Option("fields", int, 15, "fields of each configuration record; agent n owns field ((n - 1) mod fields) + 1, "
           "so with at least as many fields as agents every agent updates a different field"),
    Option("records", int, 1, "configuration records; each call picks one uniformly (1: every agent on one record)"),
)
"""The scenario's own options (registered with Locust next to the common ones)."""


def validate(opts: Any) -> None:
    """Raise :class:`SettingsError` (one line, naming the flag) if an option is out of range."""
    if not 1 <= opts.fields <= 999:
        raise SettingsError("--fields must be between 1 and 999")
    if opts.records <= 0:
        raise SettingsError("--records must be greater than 0")


def field_names(fields: int) -> list[str]:
    """``["f01", "f02", …]`` (zero-padded so the document's keys sort in field order)."""
    width = max(2, len(str(fields)))
    return [f"f{i:0{width}d}" for i in range(1, fields + 1)]


def field_of(agent_no: int, fields: int) -> str:
    """The field agent number *agent_no* (1-based) owns."""
    return field_names(fields)[(agent_no - 1) % fields]


def agent_number(agent: str) -> int:
    """The trailing number of an agent name (``host-123-a7`` → 7); 1 if it has none."""
    m = re.search(r"(\d+)$", agent)
    return int(m.group(1)) if m else 1


_READ = "SELECT doc, version, clock FROM toolclash.config_records WHERE id = %s"
_LOG = ("INSERT INTO toolclash.config_writes (op_id, record_id, agent, field, value, version_read, version_after, "
        "ts, doc_after) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")


class ConfigTool:
    """The ``update_config`` tool bound to one agent's connection, field and strategy."""

    def __init__(self, conn: Any, *, strategy: str, agent: str, field: str, agent_no: int | None = None,
                 think_ms: float = 0.0, fault: str = "none", rng: random.Random | None = None) -> None:
        self.conn = conn
        self.strategy = strategy
        self.agent = agent
        self.field = field
        self.agent_no = (agent_no if agent_no is not None else agent_number(agent)) % TS_AGENTS
        self.think_ms = think_ms
        self.fault = fault
        self.rng = rng or random.Random()
        self.counter = 0
        """This agent's Lamport counter (timestamp_ordered)."""
        self._body = getattr(self, "_" + strategy)
        self._fault: Callable[[Call], str | None] | None = None
        if fault == "ack_before_commit":
            self._fault = lambda call: "rollback" if self.rng.random() < FAULT_RATE else None
        elif fault == "ambiguous_as_fail":
            self._fault = lambda call: "misreport" if self.rng.random() < FAULT_RATE else None

    def update(self, call: Call, record: int, value: str) -> Call:
        """Set this agent's field of *record* to *value* as operation *call* (filled in and returned)."""
        transact(self.conn, call, lambda cur: self._body(cur, call, record, value), fault=self._fault)
        if call.outcome == FAIL and call.error_class == VERSION_CONFLICT:
            call.result["gave_up"] = call.reason  # retries-exhausted or deadline
            call.reason = CONFLICT_EXHAUSTED
        return call

    # --- strategies: each runs inside one transaction and returns the result dict ---

    def _read(self, cur: Any, record: int) -> tuple[dict[str, Any], int, int]:
        cur.execute(_READ, (record,))
        row = cur.fetchone()
        if row is None:
            raise Reject("no-such-record")
        return dict(row[0]), int(row[1]), int(row[2])

    def _log(self, cur: Any, call: Call, record: int, value: str, version_read: int | None, version_after: int,
             doc_after: dict[str, Any], ts: int | None = None) -> dict[str, Any]:
        cur.execute(_LOG, (call.op_id, record, self.agent, self.field, value, version_read, version_after, ts,
                           Json(doc_after)))
        out: dict[str, Any] = {"field": self.field, "version": version_after}
        if version_read is not None:
            out["version_read"] = version_read
        if ts is not None:
            out["ts"] = ts
        return out

    def _stored(self, value: str) -> str:
        """What goes into the document: the value, or (``--fault truncated_write``) the value cut by one character."""
        return value[:-1] if self.fault == "truncated_write" else value

    def _whole_document(self, cur: Any, call: Call, record: int, value: str, *, check_version: bool) -> dict[str, Any]:
        doc, version, _ = self._read(cur, record)
        think(self.think_ms)
        doc[self.field] = self._stored(value)
        if check_version:
            cur.execute("UPDATE toolclash.config_records SET doc = %s, version = version + 1 "
                        "WHERE id = %s AND version = %s RETURNING version", (Json(doc), record, version))
        else:
            cur.execute("UPDATE toolclash.config_records SET doc = %s, version = version + 1 "
                        "WHERE id = %s RETURNING version", (Json(doc), record))
        row = cur.fetchone()
        if row is None:  # detected at the write: the version moved since our read
            raise VersionConflict
        return self._log(cur, call, record, value, version, int(row[0]), doc)

    def _versioned(self, cur: Any, call: Call, record: int, value: str) -> dict[str, Any]:
        return self._whole_document(cur, call, record, value, check_version=True)

    def _last_writer_wins(self, cur: Any, call: Call, record: int, value: str) -> dict[str, Any]:
        return self._whole_document(cur, call, record, value, check_version=False)

    def _field_atomic(self, cur: Any, call: Call, record: int, value: str) -> dict[str, Any]:
        cur.execute("UPDATE toolclash.config_records SET doc = jsonb_set(doc, ARRAY[%s], to_jsonb(%s::text)), "
                    "version = version + 1 WHERE id = %s RETURNING version, doc", (self.field, self._stored(value),
                                                                                  record))
        row = cur.fetchone()
        if row is None:
            raise Reject("no-such-record")
        return self._log(cur, call, record, value, None, int(row[0]), row[1])

    def _timestamp_ordered(self, cur: Any, call: Call, record: int, value: str) -> dict[str, Any]:
        _, _, clock = self._read(cur, record)
        self.counter = max(self.counter, clock // TS_AGENTS) + 1
        ts = self.counter * TS_AGENTS + self.agent_no
        think(self.think_ms)
        guard = "" if self.fault == "timestamp_unchecked" else \
            " AND COALESCE((field_ts ->> %(field)s)::bigint, -1) < %(ts)s"
        cur.execute("UPDATE toolclash.config_records "
                    "SET doc = jsonb_set(doc, ARRAY[%(field)s], to_jsonb(%(value)s::text)), "
                    "field_ts = jsonb_set(field_ts, ARRAY[%(field)s], to_jsonb(%(ts)s::bigint)), "
                    "clock = GREATEST(clock, %(ts)s), version = version + 1 "
                    "WHERE id = %(record)s" + guard + " RETURNING version, doc",
                    {"field": self.field, "value": self._stored(value), "ts": ts, "record": record})
        row = cur.fetchone()
        if row is None:  # detected at the write: a newer timestamp holds the field
            raise Reject(STALE_TIMESTAMP, field=self.field, ts=ts)
        return self._log(cur, call, record, value, None, int(row[0]), row[1], ts)


def reset(conn: Any, *, fields: int, records: int, **_: Any) -> None:
    """Create the schema if needed, then empty it and seed *records* records of *fields* fields (one transaction)."""
    schema.apply(conn, NAME)
    doc = dict.fromkeys(field_names(fields), INITIAL_VALUE)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.config_writes, toolclash.config_records RESTART IDENTITY")
        cur.execute("INSERT INTO toolclash.config_records (id, doc) SELECT g, %s FROM generate_series(1, %s) AS g",
                    (Json(doc), records))
    conn.commit()


RECORD_COLUMNS = ("id", "doc", "version", "field_ts", "clock")
WRITE_COLUMNS = ("seq", "op_id", "record_id", "agent", "field", "value", "version_read", "version_after", "ts",
                 "doc_after")


def snapshot(conn: Any, backend: Any = None) -> dict[str, list[dict[str, Any]]]:
    """The final state the config checks need: every record and every write-log row, in commit order."""
    out: dict[str, list[dict[str, Any]]] = {}
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM toolclash.config_records ORDER BY id")
        out["config_records"] = [dict(zip(RECORD_COLUMNS, r, strict=True)) for r in cur.fetchall()]
        cur.execute(f"SELECT {', '.join(WRITE_COLUMNS)} FROM toolclash.config_writes "
                    "ORDER BY record_id, version_after")
        out["config_writes"] = [dict(zip(WRITE_COLUMNS, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    return out


TARGET = TargetShape(
    operations={TOOL: ("record", "field", "value")},
    tables=(
        Table("records", "config_records", required=("id", "doc"), optional=("version",), json_columns=("doc",),
              enables={"": "with writes: config.final_document", "version": "config.version"}),
        Table("writes", "config_writes", required=("op_id", "record_id", "field", "value"),
              optional=("version_after", "seq", "version_read", "doc_after", "agent"), json_columns=("doc_after",),
              enables={"": "config.write_log (missing and unrecorded writes, op by op), config.fail_no_trace",
                       "version_after": "the commit order per record (or seq): config.final_document, "
                                        "config.version",
                       "seq": "the commit order per record (or version_after)",
                       "doc_after": "with the commit order: config.lost_updates, named op by op"}),
    ),
)
"""How ``--target`` points the config agents and checks at another platform (docs/your-platform.md)."""


SCENARIO = Scenario(
    name=NAME,
    summary="agents update different fields of the same configuration record; checks prove no field update was lost",
    tools=(TOOL,),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    rejections=frozenset({STALE_TIMESTAMP}),
    validate=validate,
    reset=lambda ctx, conn: reset(conn, **vars(ctx.opts)),
    snapshot=lambda ctx, conn: snapshot(conn),
    checks="checks.config",
    target=TARGET,
)
