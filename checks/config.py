"""Checks of the config scenario: the document is the fold of the acknowledged writes, nothing is lost.

Inputs: the ``update_config`` operations of the history, and the final state captured by
:func:`toolclash.tools.config.snapshot` (``config_records`` and ``config_writes``). Every applied
write inserted its ``config_writes`` row (keyed by op id) in the same transaction as the update, with
the version it produced (``version = version + 1`` under the row lock, so per record ``version_after``
is the commit order) and the whole document it left (``doc_after``). That log resolves in-doubt
(``unknown``) calls and lets the checks replay the record write by write.

* ``config.write_log`` — history and log agree: every ok op has its row, every row its op;
* ``config.final_document`` — each field of the final document holds the value of its last
  acknowledged write in commit order (the fold of the log);
* ``config.version`` — the version equals the number of acknowledged (and in-doubt applied) writes;
* ``config.lost_updates`` — no acknowledged change is missing: replaying the log, no write put
  back another field, and no ok op is absent; evidence names the op, the field and who overwrote it;
* ``config.fail_no_trace`` — a ``fail`` op left no row and no value anywhere;
* ``config.timestamp_order`` — ``timestamp_ordered``: per field the applied timestamps only grow in
  commit order, and every ``stale-timestamp`` rejection lost to a write with a timestamp at least as new.

A platform pointed at with ``--target`` may offer less (``final["columns"]`` lists what it mapped): the write
log keyed by op id → write_log and fail_no_trace; with the commit order (``version_after`` or ``seq``) and the
records' documents → final_document; the records' version → version; each write's ``doc_after`` → lost_updates,
op by op. A check without its data says "not checked: needs …" (unknown).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, by_op_id, result, run_checks
from toolclash.history import FAIL, OK
from toolclash.targets.shape import provided

TOOL = "update_config"
INITIAL_VALUE = "init"
STALE_TIMESTAMP = "stale-timestamp"
CONFLICT_EXHAUSTED = "conflict-exhausted"
"""A write that lost to a newer timestamp is ``timestamp_ordered``'s defined answer, not a failure."""


class ConfigView:
    """Indexes built once and shared by the checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.ops, self.duplicate_ids = by_op_id(ops, TOOL)
        self.records = {int(r["id"]): r for r in final.get("config_records", [])}
        self.has_records = "config_records" in final
        self.has_log = "config_writes" in final
        self._columns = {key: provided(final, key) for key in ("config_records", "config_writes")}
        self.rows: dict[str, Mapping[str, Any]] = {}
        self.log: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        self.applied_twice: dict[str, int] = defaultdict(int)
        """Op id → log rows beyond the first (a retried request the platform applied again)."""
        for row in final.get("config_writes", []):
            if row["op_id"] in self.rows:
                self.applied_twice[row["op_id"]] += 1
            self.rows.setdefault(row["op_id"], row)
            self.log[int(row["record_id"])].append(row)
        self.ordered = self.has("config_writes", "version_after") or self.has("config_writes", "seq")
        """Whether the log says the commit order (``version_after``, else ``seq``)."""
        by_version = self.has("config_writes", "version_after")
        for rows in self.log.values():
            rows.sort(key=lambda r: (int(r["version_after"]) if by_version else 0, int(r.get("seq") or 0)))
        self.value_op: dict[str, str] = {str(op["args"]["value"]): op_id for op_id, op in self.ops.items()}
        for op_id, row in self.rows.items():
            self.value_op.setdefault(str(row["value"]), op_id)
        self.incomplete = frozenset(incomplete_processes)

    def from_incomplete_process(self, op_id: str) -> bool:
        return op_id.rpartition("-")[0] in self.incomplete

    def has(self, key: str, *columns: str) -> bool:
        """The final state holds table *key* with *columns* (toolclash's own tools: every column)."""
        if not (self.has_records if key == "config_records" else self.has_log):
            return False
        cols = self._columns.get(key)
        return cols is None or set(columns) <= cols

    def needs(self, *what: tuple[str, tuple[str, ...]]) -> str | None:
        """What the final state lacks of *what* (``(table key, columns)`` each), in words; None: nothing."""
        missing = []
        for key, columns in what:
            table = "records" if key == "config_records" else "writes"
            if not (self.has_records if key == "config_records" else self.has_log):
                missing.append(f"the {'configuration records' if table == 'records' else 'write log keyed by op id'}"
                               f" (final state table {table})")
            elif not self.has(key, *columns):
                missing.append(f"{table} column(s) {', '.join(c for c in columns if not self.has(key, c))}")
        return "; ".join(missing) or None

    def outcome(self, op_id: str) -> str:
        """ok / fail / unknown as the history says; ``unknown`` for a row whose op never reached the history."""
        op = self.ops.get(op_id)
        return str(op["outcome"]) if op is not None else "unknown"

    def applied(self, row: Mapping[str, Any]) -> bool:
        """A committed write that counts: its op was acknowledged, or is in doubt (not a definite fail)."""
        return self.outcome(row["op_id"]) != FAIL

    def who(self, value: Any) -> str | None:
        """The op that wrote *value* (None for the seed value)."""
        return None if value == INITIAL_VALUE else self.value_op.get(str(value))


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


def _no_log(name: str) -> CheckResult:
    return result(name, UNKNOWN, {}, None, "not checked: needs the write log keyed by op id (final state table "
                  "writes)")


def _not_checked(name: str, needs: str) -> CheckResult:
    return result(name, UNKNOWN, {}, None, f"not checked: needs {needs}")



def write_log(v: ConfigView) -> CheckResult:
    """Every ok op has exactly one log row matching its arguments; every row belongs to a recorded op."""
    name = "config.write_log"
    if not v.has_log:
        return _no_log(name)
    ev = Evidence()
    counts = {"ops": len(v.ops), "rows": len(v.rows), "missing": 0, "unrecorded": 0, "mismatch": 0,
              "duplicate_op_ids": len(v.duplicate_ids), "unknown_applied": 0, "unknown_not_applied": 0,
              "rows_from_incomplete_history": 0, "applied_more_than_once": len(v.applied_twice)}
    for op_id in v.duplicate_ids:
        ev.add({"op_id": op_id, "what": "op id recorded twice in the history"})
    for op_id, extra in sorted(v.applied_twice.items()):
        ev.add({"op_id": op_id, "applied": extra + 1, "outcome": v.outcome(op_id),
                "what": "one call applied more than once (a retry with the same op id was applied again)"})
    for op_id, op in v.ops.items():
        row = v.rows.get(op_id)
        args = op["args"]
        if op["outcome"] == OK and row is None:
            counts["missing"] += 1
            ev.add({"op_id": op_id, "field": args["field"], "record": args["record"], "agent": op["agent"],
                    "what": "acknowledged (ok) but no write-log row: the change never committed"})
        elif op["outcome"] not in (OK, FAIL):
            counts["unknown_applied" if row is not None else "unknown_not_applied"] += 1
        if row is not None and (int(row["record_id"]) != int(args["record"]) or row["field"] != args["field"]
                                or row["value"] != args["value"]):
            counts["mismatch"] += 1
            ev.add({"op_id": op_id, "what": "log row differs from the call's arguments", "args": args,
                    "row": {"record": row["record_id"], "field": row["field"], "value": row["value"]}})
    for op_id, row in v.rows.items():
        if op_id in v.ops:
            continue
        if v.from_incomplete_process(op_id):
            counts["rows_from_incomplete_history"] += 1
            continue
        counts["unrecorded"] += 1
        ev.add({"op_id": op_id, "field": row["field"], "record": row["record_id"],
                "what": "log row of an operation no agent recorded"})
    if ev:
        return result(name, False, counts, ev, "write log and history disagree")
    if counts["rows_from_incomplete_history"]:
        return result(name, UNKNOWN, counts, ev, "log rows from a process whose history is incomplete")
    return result(name, True, counts, ev, "every ok op has its log row and every row its op")


def _fold(v: ConfigView, rid: int) -> dict[str, tuple[Any, str | None]]:
    """Field → (value, op id) after applying the record's counted writes in commit order."""
    record = v.records[rid]
    state: dict[str, tuple[Any, str | None]] = {f: (INITIAL_VALUE, None) for f in record["doc"]}
    for row in v.log.get(rid, []):
        if v.applied(row):
            state[row["field"]] = (row["value"], row["op_id"])
    return state


def final_document(v: ConfigView) -> CheckResult:
    """Each field of the final document = the value of its last acknowledged write in commit order."""
    name = "config.final_document"
    lacking = v.needs(("config_records", ("doc",)), ("config_writes", ()))
    if lacking or not v.ordered:
        return _not_checked(name, lacking or "writes column version_after or seq (the commit order)")
    ev = Evidence()
    wrong: set[str] = set()
    for rid, record in sorted(v.records.items()):
        doc = record["doc"]
        expected = _fold(v, rid)
        for field in sorted(set(expected) | set(doc)):
            want, want_op = expected.get(field, (None, None))
            got = doc.get(field)
            if got == want:
                continue
            wrong.add(field)
            ev.add({"record": rid, "field": field, "expected": want, "expected_op": want_op, "found": got,
                    "found_op": v.who(got), "what": "the field does not hold its last acknowledged write"})
    counts = {"records": len(v.records), "fields_wrong": sorted(wrong)}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} field(s) differ from the fold of acknowledged writes: "
                      f"{', '.join(sorted(wrong))}")
    return result(name, True, counts, ev, "every field holds its last acknowledged write")


def version(v: ConfigView) -> CheckResult:
    """Per record: version = acknowledged writes + in-doubt writes the log shows applied."""
    name = "config.version"
    lacking = v.needs(("config_records", ("version",)), ("config_writes", ()))
    if lacking:
        return _not_checked(name, lacking)
    ok_by_record: dict[int, list[str]] = defaultdict(list)
    for op_id, op in v.ops.items():
        if op["outcome"] == OK:
            ok_by_record[int(op["args"]["record"])].append(op_id)
    ev = Evidence()
    for rid, record in sorted(v.records.items()):
        rows = v.log.get(rid, [])
        oks = ok_by_record.get(rid, [])
        unknown_applied = sum(1 for r in rows if v.outcome(r["op_id"]) not in (OK, FAIL))
        expected = len(oks) + unknown_applied
        found = int(record["version"])
        if found == expected:
            continue
        not_applied = [o for o in oks if o not in v.rows][:10]
        failed_applied = [r["op_id"] for r in rows if v.outcome(r["op_id"]) == FAIL][:10]
        ev.add({"record": rid, "version": found, "acknowledged_writes": len(oks), "unknown_applied": unknown_applied,
                "log_rows": len(rows), "ok_without_commit": not_applied, "fail_but_committed": failed_applied,
                "what": "the version does not count the acknowledged writes"})
    counts = {"records": len(v.records), "mismatched": ev.total}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} record version(s) differ from the acknowledged writes")
    return result(name, True, counts, ev, "every version equals the number of acknowledged writes")


def lost_updates(v: ConfigView) -> CheckResult:
    """No acknowledged change is missing.

    Replays each record's log in commit order: a write's ``doc_after`` must keep every other field as
    the previous writes left it. A field put back to an older value is a lost update of the
    acknowledged op that last wrote it (evidence: that op, the field, and the op that overwrote it with
    the version it had read). An ok op with no log row is a missing change too.
    """
    name = "config.lost_updates"
    lacking = v.needs(("config_records", ("doc",)), ("config_writes", ("doc_after",)))
    if lacking or not v.ordered:
        return _not_checked(name, lacking or "writes column version_after or seq (the commit order)")
    ev = Evidence()
    lost_fields: set[str] = set()
    lost_ops: set[str] = set()
    overwritten_unacknowledged: set[str] = set()
    for rid, record in sorted(v.records.items()):
        latest: dict[str, tuple[Any, str | None]] = {f: (INITIAL_VALUE, None) for f in record["doc"]}
        for row in v.log.get(rid, []):
            latest[row["field"]] = (row["value"], row["op_id"])
            after = row["doc_after"]
            for field, (value, op_id) in latest.items():
                got = after.get(field)
                if got == value or op_id is None:
                    continue
                if op_id in lost_ops or op_id in overwritten_unacknowledged:
                    continue  # reported when it was first overwritten
                if v.outcome(op_id) != OK:
                    overwritten_unacknowledged.add(op_id)
                    continue
                lost_ops.add(op_id)
                lost_fields.add(field)
                ev.add({"op_id": op_id, "field": field, "record": rid, "lost_value": value,
                        "overwritten_by": row["op_id"], "overwriter_agent": row.get("agent"),
                        "which_had_read_version": row.get("version_read"), "wrote_version": row.get("version_after"),
                        "put_back": got, "put_back_from_op": v.who(got),
                        "what": "acknowledged change overwritten by a writer that had read an older document"})
        final_doc = record["doc"]
        for field, (value, op_id) in latest.items():
            if op_id is None or op_id in lost_ops or v.outcome(op_id) != OK:
                continue
            if final_doc.get(field) != value:
                lost_ops.add(op_id)
                lost_fields.add(field)
                ev.add({"op_id": op_id, "field": field, "record": rid, "lost_value": value,
                        "overwritten_by": None, "found": final_doc.get(field),
                        "what": "acknowledged change missing from the final document and no logged write took it"})
    for op_id, op in v.ops.items():
        if op["outcome"] == OK and op_id not in v.rows:
            lost_fields.add(op["args"]["field"])
            ev.add({"op_id": op_id, "field": op["args"]["field"], "record": op["args"]["record"],
                    "what": "acknowledged (ok) but never committed: no log row"})
    counts = {"writes_logged": len(v.rows), "lost_updates": ev.total, "lost_fields": sorted(lost_fields),
              "unacknowledged_overwritten": len(overwritten_unacknowledged)}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} acknowledged change(s) lost; fields: "
                      f"{', '.join(sorted(lost_fields))}")
    return result(name, True, counts, ev, "every acknowledged change survived until its field's next write")


def fail_no_trace(v: ConfigView) -> CheckResult:
    """A ``fail`` op has no log row, and its value is neither in a logged document nor in the final one."""
    name = "config.fail_no_trace"
    if not v.has_log:
        return _no_log(name)
    failed = {op_id: op for op_id, op in v.ops.items() if op["outcome"] == FAIL}
    failed_values = {str(op["args"]["value"]): op_id for op_id, op in failed.items()}
    seen: dict[str, list[str]] = defaultdict(list)
    for op_id in failed:
        if op_id in v.rows:
            seen[op_id].append(f"write-log row (version {v.rows[op_id].get('version_after')})")
    if failed_values:
        for rid, record in v.records.items():
            for field, value in record["doc"].items():
                if str(value) in failed_values:
                    seen[failed_values[str(value)]].append(f"final document of record {rid}, field {field}")
        for row in v.rows.values():
            if row["op_id"] in failed:
                continue
            for value in (row.get("doc_after") or {}).values():
                if str(value) in failed_values and len(seen[failed_values[str(value)]]) < 5:
                    seen[failed_values[str(value)]].append(f"document written by {row['op_id']}")
    ev = Evidence()
    for op_id, where in sorted(seen.items()):
        op = failed[op_id]
        ev.add({"op_id": op_id, "field": op["args"]["field"], "reason": op.get("reason"), "found_in": where,
                "what": "reported fail but its change is there"})
    counts = {"failed": len(failed), "with_trace": ev.total,
              "conflict_exhausted": sum(1 for op in failed.values() if op.get("reason") == CONFLICT_EXHAUSTED),
              "stale_timestamp": sum(1 for op in failed.values() if op.get("reason") == STALE_TIMESTAMP)}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} failed op(s) left a trace")
    return result(name, True, counts, ev, "no failed op left a trace")


def timestamp_order(v: ConfigView) -> CheckResult:
    """``timestamp_ordered``: per field, applied timestamps grow in commit order; every stale rejection lost to
    a write with a timestamp at least as new; the stored field timestamp is the last applied one."""
    name = "config.timestamp_order"
    if not v.has_log:
        return _no_log(name)
    stale = [op for op in v.ops.values() if op["outcome"] == FAIL and op.get("reason") == STALE_TIMESTAMP]
    stamped = [r for r in v.rows.values() if r.get("ts") is not None]
    if not stamped and not stale:
        return result(name, True, {"timestamped_writes": 0}, None, "no timestamped writes (other strategy)")
    ev = Evidence()
    newest: dict[tuple[int, str], int] = {}
    last_row: dict[tuple[int, str], Mapping[str, Any]] = {}
    regressions = 0
    for rid, rows in sorted(v.log.items()):
        for row in rows:
            if row.get("ts") is None:
                continue
            key, ts = (rid, row["field"]), int(row["ts"])
            prev = last_row.get(key)
            if prev is not None and ts <= int(prev["ts"]):
                regressions += 1
                ev.add({"op_id": row["op_id"], "field": row["field"], "record": rid, "ts": ts,
                        "committed_after": prev["op_id"], "whose_ts": int(prev["ts"]),
                        "what": "an older timestamp overwrote a newer one"})
            last_row[key] = row
            newest[key] = max(newest.get(key, ts), ts)
    unjustified = 0
    for op in stale:
        key = (int(op["args"]["record"]), op["args"]["field"])
        stale_ts = (op.get("result") or {}).get("ts")
        if stale_ts is None or newest.get(key, -math.inf) < int(stale_ts):
            unjustified += 1
            ev.add({"op_id": op["op_id"], "field": key[1], "record": key[0], "ts": stale_ts,
                    "newest_applied_ts": newest.get(key), "what": "rejected as stale, but no newer write exists"})
    for (rid, field), row in sorted(last_row.items()):
        stored = (v.records.get(rid, {}).get("field_ts") or {}).get(field)
        if stored is not None and int(stored) != int(row["ts"]):
            ev.add({"record": rid, "field": field, "stored_ts": stored, "last_applied_ts": row["ts"],
                    "op_id": row["op_id"], "what": "stored field timestamp is not the last applied one"})
    counts = {"timestamped_writes": len(stamped), "stale_rejections": len(stale), "regressions": regressions,
              "unjustified_rejections": unjustified}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} timestamp-order violation(s)")
    return result(name, True, counts, ev, "timestamps only grow per field; every rejection lost to a newer write")


def figures(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any]) -> dict[str, Any]:
    """Conflict figures of the scenario (the SLA module gives conflict rate, P95 and success after retries)."""
    writes = conflicts = ok_retries = exhausted = stale = 0
    backoff_s = 0.0
    calls = 0
    for op in ops:
        if op["tool"] != TOOL:
            continue
        calls += 1
        res = op.get("result") or {}
        n = sum((res.get("retries") or {}).values())
        conflicts += n
        backoff_s += float(res.get("backoff_s") or 0.0)
        if op["outcome"] == OK:
            writes += 1
            ok_retries += n
        elif op["outcome"] == FAIL and op.get("reason") == CONFLICT_EXHAUSTED:
            exhausted += 1
        elif op["outcome"] == FAIL and op.get("reason") == STALE_TIMESTAMP:
            stale += 1
    return {"writes": writes, "conflicts_per_write": conflicts / writes if writes else math.nan,
            "retries_per_success": ok_retries / writes if writes else math.nan,
            "backoff_s": round(backoff_s, 3), "backoff_ms_per_call": backoff_s * 1000.0 / calls if calls else math.nan,
            "conflict_exhausted": exhausted, "stale_timestamp": stale,
            "versions": {str(r["id"]): r["version"] for r in final.get("config_records", [])}}


SPEC = Checks(
    view=ConfigView,
    checks=(("config.write_log", write_log), ("config.final_document", final_document), ("config.version", version),
            ("config.lost_updates", lost_updates), ("config.fail_no_trace", fail_no_trace),
            ("config.timestamp_order", timestamp_order)),
    figures=figures,
)
