"""The config checks on tiny hand-written histories: one anomaly each (Jepsen/Elle style).

Every history is a handful of ``update_config`` records built by :func:`op`, which fills every field of
the operation-record contract; the final state is what :func:`toolclash.tools.config.snapshot`
captures (``config_records`` and ``config_writes``, the write log in commit order).
"""

from __future__ import annotations

import math
from typing import Any

from checks import UNKNOWN, CheckResult, worst
from checks import config as cc

RUN_ID = "t-config"
NAMES = ("config.write_log", "config.final_document", "config.version", "config.lost_updates",
         "config.fail_no_trace", "config.timestamp_order")
FIELDS = ("f01", "f02", "f03")


def op(n: int, outcome: str, field: str, value: str, *, record: int = 1, reason: str | None = None,
       attempts: int = 1, strategy: str = "versioned", result: dict[str, Any] | None = None,
       process: str = "p1") -> dict[str, Any]:
    """One ``update_config`` operation record with every contract field filled."""
    invoke_ts = 1_700_000_000.0 + n
    return {
        "run_id": RUN_ID, "op_id": f"{process}-{n}", "process": process, "agent": f"{process}-a{field[-1]}",
        "tool": "update_config", "strategy": strategy, "args": {"record": record, "field": field, "value": value},
        "invoke_ts": invoke_ts, "complete_ts": invoke_ts + 0.010, "outcome": outcome, "attempts": attempts,
        "error_class": "version_conflict" if reason == "conflict-exhausted" else None, "reason": reason,
        "result": result if result is not None else {},
    }


def row(version: int, op_id: str, field: str, value: str, doc_after: dict[str, str], *, record: int = 1,
        version_read: int | None = None, ts: int | None = None) -> dict[str, Any]:
    """One ``config_writes`` row (inserted in the same transaction as the update it logs)."""
    return {"seq": version, "op_id": op_id, "record_id": record, "agent": op_id.rsplit("-", 1)[0] + "-agent",
            "field": field, "value": value, "version_read": version_read, "version_after": version, "ts": ts,
            "doc_after": dict(doc_after)}


def chain(*writes: tuple[str, str, str], record: int = 1, ts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The log of correct (versioned) writes ``(op_id, field, value)`` applied one after the other."""
    doc = dict.fromkeys(FIELDS, "init")
    rows = []
    for i, (op_id, field, value) in enumerate(writes, start=1):
        doc[field] = value
        rows.append(row(i, op_id, field, value, doc, record=record, version_read=i - 1,
                        ts=(ts or {}).get(op_id)))
    return rows


def final(doc: dict[str, str], version: int, log: list[dict[str, Any]] | None,
          field_ts: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"config_records": [{"id": 1, "doc": {**dict.fromkeys(FIELDS, "init"), **doc},
                                               "version": version, "field_ts": field_ts or {}, "clock": 0}]}
    if log is not None:
        out["config_writes"] = log
    return out


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    got = {r.name: r for r in results}
    assert set(got) == set(NAMES), got
    return got


def verdicts(res: dict[str, CheckResult]) -> dict[str, Any]:
    return {n: r.valid for n, r in res.items()}


def only_false(res: dict[str, CheckResult], *names: str) -> None:
    assert {n for n, r in res.items() if r.valid is False} == set(names), verdicts(res)


# --- clean -----------------------------------------------------------------------------------


def test_clean_history_is_valid_everywhere() -> None:
    ops = [
        op(1, "ok", "f01", "a1#1", attempts=2, result={"retries": {"version_conflict": 1}, "backoff_s": 0.001}),
        op(2, "ok", "f02", "a2#1"),
        op(3, "fail", "f03", "a3#1", reason="conflict-exhausted", attempts=3,
           result={"retries": {"version_conflict": 3}, "backoff_s": 0.004}),
        op(4, "ok", "f01", "a1#2"),
        op(5, "unknown", "f02", "a2#2"),  # in doubt, and the log shows it committed
        op(6, "unknown", "f03", "a3#2"),  # in doubt, and it did not commit
    ]
    log = chain(("p1-1", "f01", "a1#1"), ("p1-2", "f02", "a2#1"), ("p1-4", "f01", "a1#2"), ("p1-5", "f02", "a2#2"))
    res = by_name(cc.check_all(ops, final({"f01": "a1#2", "f02": "a2#2"}, 4, log)))
    assert verdicts(res) == dict.fromkeys(NAMES, True)
    assert res["config.write_log"].counts["unknown_applied"] == 1
    assert res["config.write_log"].counts["unknown_not_applied"] == 1
    assert res["config.fail_no_trace"].counts["conflict_exhausted"] == 1
    assert res["config.lost_updates"].counts["lost_fields"] == []
    assert all(r.evidence == [] for r in res.values())


def test_other_tools_in_the_history_are_ignored() -> None:
    stray = {**op(9, "ok", "f01", "x"), "tool": "deduct"}
    res = by_name(cc.check_all([stray], final({}, 0, [])))
    assert verdicts(res) == dict.fromkeys(NAMES, True)


# --- one anomaly each --------------------------------------------------------------------------


def test_writer_with_a_stale_document_loses_another_field() -> None:
    """last_writer_wins: p1-2 read version 0 and wrote it back with its own field: f01's change is gone."""
    ops = [op(1, "ok", "f01", "a1#1", strategy="last_writer_wins"),
           op(2, "ok", "f02", "a2#1", strategy="last_writer_wins")]
    log = [row(1, "p1-1", "f01", "a1#1", {"f01": "a1#1", "f02": "init", "f03": "init"}, version_read=0),
           row(2, "p1-2", "f02", "a2#1", {"f01": "init", "f02": "a2#1", "f03": "init"}, version_read=0)]
    res = by_name(cc.check_all(ops, final({"f02": "a2#1"}, 2, log)))
    only_false(res, "config.lost_updates", "config.final_document")
    lost = res["config.lost_updates"]
    assert lost.counts["lost_fields"] == ["f01"] and "f01" in lost.summary
    assert lost.evidence == [{"op_id": "p1-1", "field": "f01", "record": 1, "lost_value": "a1#1",
                              "overwritten_by": "p1-2", "overwriter_agent": "p1-agent", "which_had_read_version": 0,
                              "wrote_version": 2, "put_back": "init", "put_back_from_op": None,
                              "what": lost.evidence[0]["what"]}]
    doc = res["config.final_document"]
    assert doc.counts["fields_wrong"] == ["f01"]
    assert doc.evidence[0]["expected_op"] == "p1-1" and doc.evidence[0]["found"] == "init"


def test_a_change_lost_and_later_written_back_is_still_a_lost_update() -> None:
    """The final document looks right, but between versions 2 and 3 f01 had lost p1-1's change."""
    ops = [op(1, "ok", "f01", "a1#1"), op(2, "ok", "f02", "a2#1"), op(3, "ok", "f03", "a3#1")]
    log = [row(1, "p1-1", "f01", "a1#1", {"f01": "a1#1", "f02": "init", "f03": "init"}, version_read=0),
           row(2, "p1-2", "f02", "a2#1", {"f01": "init", "f02": "a2#1", "f03": "init"}, version_read=0),
           row(3, "p1-3", "f03", "a3#1", {"f01": "a1#1", "f02": "a2#1", "f03": "a3#1"}, version_read=2)]
    res = by_name(cc.check_all(ops, final({"f01": "a1#1", "f02": "a2#1", "f03": "a3#1"}, 3, log)))
    only_false(res, "config.lost_updates")
    assert [(e["op_id"], e["field"], e["overwritten_by"]) for e in res["config.lost_updates"].evidence] == [
        ("p1-1", "f01", "p1-2")]


def test_acknowledged_write_that_never_committed_is_missing() -> None:
    ops = [op(1, "ok", "f01", "a1#1"), op(2, "ok", "f02", "a2#1")]
    log = chain(("p1-1", "f01", "a1#1"))
    res = by_name(cc.check_all(ops, final({"f01": "a1#1"}, 1, log)))
    only_false(res, "config.write_log", "config.version", "config.lost_updates")
    assert res["config.write_log"].counts["missing"] == 1
    assert res["config.lost_updates"].evidence[0]["op_id"] == "p1-2"
    assert res["config.lost_updates"].evidence[0]["field"] == "f02"
    assert res["config.version"].evidence[0]["ok_without_commit"] == ["p1-2"]


def test_failed_op_that_committed_left_a_trace() -> None:
    ops = [op(1, "ok", "f01", "a1#1"), op(2, "fail", "f02", "a2#1", reason="commit-timeout")]
    log = chain(("p1-1", "f01", "a1#1"), ("p1-2", "f02", "a2#1"))
    res = by_name(cc.check_all(ops, final({"f01": "a1#1", "f02": "a2#1"}, 2, log)))
    only_false(res, "config.fail_no_trace", "config.version", "config.final_document")
    trace = res["config.fail_no_trace"].evidence[0]
    assert trace["op_id"] == "p1-2" and trace["field"] == "f02"
    assert any("write-log row" in w for w in trace["found_in"])
    assert any("final document" in w for w in trace["found_in"])
    assert res["config.version"].evidence[0]["fail_but_committed"] == ["p1-2"]


def test_failed_value_in_the_document_without_a_log_row_is_a_trace() -> None:
    ops = [op(1, "fail", "f01", "a1#1", reason="conflict-exhausted")]
    res = by_name(cc.check_all(ops, final({"f01": "a1#1"}, 0, [])))
    assert res["config.fail_no_trace"].valid is False
    assert res["config.fail_no_trace"].evidence[0]["found_in"] == ["final document of record 1, field f01"]
    assert res["config.fail_no_trace"].counts["conflict_exhausted"] == 1


def test_document_changed_by_a_write_outside_the_log() -> None:
    ops = [op(1, "ok", "f01", "a1#1")]
    log = chain(("p1-1", "f01", "a1#1"))
    res = by_name(cc.check_all(ops, final({"f01": "someone-else"}, 1, log)))
    only_false(res, "config.final_document", "config.lost_updates")
    assert res["config.lost_updates"].evidence[0]["overwritten_by"] is None


def test_log_row_of_an_op_nobody_recorded() -> None:
    log = chain(("p9-1", "f01", "x"))
    res = by_name(cc.check_all([], final({"f01": "x"}, 1, log)))
    assert res["config.write_log"].valid is False
    assert res["config.write_log"].counts["unrecorded"] == 1
    # the same row from a process whose history never arrived is in doubt, not an anomaly
    res = by_name(cc.check_all([], final({"f01": "x"}, 1, log), incomplete_processes=["p9"]))
    assert res["config.write_log"].valid == UNKNOWN
    assert worst(r.valid for r in res.values()) == UNKNOWN


def test_log_row_that_differs_from_the_call() -> None:
    ops = [op(1, "ok", "f01", "a1#1")]
    log = chain(("p1-1", "f02", "a1#1"))
    res = by_name(cc.check_all(ops, final({"f02": "a1#1"}, 1, log)))
    assert res["config.write_log"].valid is False and res["config.write_log"].counts["mismatch"] == 1


def test_older_timestamp_applied_after_a_newer_one() -> None:
    ops = [op(1, "ok", "f01", "a1#1", strategy="timestamp_ordered"),
           op(2, "ok", "f01", "a4#1", strategy="timestamp_ordered")]
    log = chain(("p1-1", "f01", "a1#1"), ("p1-2", "f01", "a4#1"), ts={"p1-1": 2_000_001, "p1-2": 1_000_004})
    res = by_name(cc.check_all(ops, final({"f01": "a4#1"}, 2, log, field_ts={"f01": 1_000_004})))
    only_false(res, "config.timestamp_order")
    ev = res["config.timestamp_order"].evidence[0]
    assert (ev["op_id"], ev["committed_after"], ev["field"]) == ("p1-2", "p1-1", "f01")


def test_stale_rejection_needs_a_newer_write() -> None:
    stale = {"field": "f01", "ts": 1_000_004}
    ops = [op(1, "ok", "f01", "a1#1", strategy="timestamp_ordered"),
           op(2, "fail", "f01", "a4#1", reason="stale-timestamp", strategy="timestamp_ordered", result=stale)]
    justified = chain(("p1-1", "f01", "a1#1"), ts={"p1-1": 2_000_001})
    res = by_name(cc.check_all(ops, final({"f01": "a1#1"}, 1, justified, field_ts={"f01": 2_000_001})))
    assert verdicts(res) == dict.fromkeys(NAMES, True)
    assert res["config.timestamp_order"].counts["stale_rejections"] == 1
    unjustified = chain(("p1-1", "f01", "a1#1"), ts={"p1-1": 1_000_001})
    res = by_name(cc.check_all(ops, final({"f01": "a1#1"}, 1, unjustified, field_ts={"f01": 1_000_001})))
    only_false(res, "config.timestamp_order")
    assert res["config.timestamp_order"].counts["unjustified_rejections"] == 1


def test_without_a_write_log_the_checks_cannot_decide() -> None:
    res = by_name(cc.check_all([op(1, "ok", "f01", "a1#1")], final({"f01": "a1#1"}, 1, None)))
    assert all(r.valid == UNKNOWN for r in res.values())


def test_figures() -> None:
    ops = [op(1, "ok", "f01", "a", attempts=3, result={"retries": {"version_conflict": 2}, "backoff_s": 0.002}),
           op(2, "ok", "f02", "b"),
           op(3, "fail", "f03", "c", reason="conflict-exhausted", attempts=2,
              result={"retries": {"version_conflict": 2}, "backoff_s": 0.002})]
    fig = cc.figures(ops, final({}, 2, []))
    assert fig["writes"] == 2 and fig["conflict_exhausted"] == 1
    assert fig["conflicts_per_write"] == 2.0  # 4 conflicts / 2 writes
    assert fig["retries_per_success"] == 1.0  # 2 retries among the ok calls / 2 writes
    assert math.isclose(fig["backoff_s"], 0.004) and fig["versions"] == {"1": 2}
