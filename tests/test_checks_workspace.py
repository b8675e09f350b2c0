"""The workspace checks on tiny hand-written histories: one anomaly each (Jepsen/Elle style).

A history is a handful of operation records built by :func:`op`; the final state is what
:func:`toolclash.tools.workspace.snapshot` captures, built by :func:`state` from a list of events
with a projection that a correct projector would have left (then spoiled by the test).
"""

from __future__ import annotations

import math
from typing import Any

from checks import UNKNOWN, CheckResult, worst
from checks import workspace as wc

T0 = 1_700_000_000.0


def op(process: str, n: int, tool: str, outcome: str = "ok", *, reason: str | None = None, agent: str | None = None,
       invoke: float | None = None, result: dict[str, Any] | None = None, **args: Any) -> dict[str, Any]:
    invoke_ts = T0 + n if invoke is None else invoke
    args.setdefault("workspace", 1)
    if tool != "query_workspace":
        args.setdefault("correlation_id", f"{process}-a-t0")
    return {"run_id": "t", "op_id": f"{process}-{n}", "process": process, "agent": agent or f"{process}-a",
            "tool": tool, "strategy": "expected_version", "args": args, "invoke_ts": invoke_ts,
            "complete_ts": invoke_ts + 0.5, "outcome": outcome, "attempts": 1, "error_class": None,
            "reason": reason, "result": result or {}}


def upload(process: str, n: int, path: str = "/a", size: int = 1, **kw: Any) -> dict[str, Any]:
    return op(process, n, "upload_file", path=path, size=size, sha256=f"h{size}", **kw)


def grant(process: str, n: int, principal: str = "u1", perm: str = "read", **kw: Any) -> dict[str, Any]:
    return op(process, n, "grant", principal=principal, perm=perm, **kw)


def revoke(process: str, n: int, principal: str = "u1", perm: str = "read", **kw: Any) -> dict[str, Any]:
    return op(process, n, "revoke", principal=principal, perm=perm, **kw)


def query(process: str, n: int, version: int, files: int = 0, config_keys: int = 0, grants: int = 0,
          **kw: Any) -> dict[str, Any]:
    return op(process, n, "query_workspace", result={"version": version, "files": files, "config_keys": config_keys,
                                                     "grants": grants}, **kw)


def event_of(o: dict[str, Any], seq: int, *, decided: int | None = None, position: int | None = None,
             **over: Any) -> dict[str, Any]:
    """The event a correct append of command *o* writes as *seq*."""
    e = {"position": position if position is not None else seq, "stream_id": o["args"]["workspace"], "seq": seq,
         "type": wc.EVENT_OF[o["tool"]], "payload": wc.payload_of(o), "agent": o["agent"], "op_id": o["op_id"],
         "causation_id": o["op_id"], "correlation_id": o["args"]["correlation_id"],
         "decided_version": seq - 1 if decided is None else decided, "committed_at": o["invoke_ts"] + 0.2}
    e.update(over)
    return e


def state(events: list[dict[str, Any]], streams: int = 1) -> dict[str, Any]:
    """Final state with the projection a correct projector leaves: fold, checkpoint at the end, applied once."""
    out: dict[str, Any] = {"streams": [], "events": events, "checkpoints": [], "files": [], "config": [],
                           "permissions": [], "applied": []}
    for sid in range(1, streams + 1):
        evs = sorted((e for e in events if e["stream_id"] == sid), key=lambda e: e["seq"])
        n = evs[-1]["seq"] if evs else 0
        out["streams"].append({"stream_id": sid, "version": n})
        out["checkpoints"].append({"stream_id": sid, "position": n, "projector": "projector-1"})
        fold = wc.Fold(evs)
        out["files"] += [{"stream_id": sid, "path": k, "size": v[0], "sha256": v[1], "uploaded_by": v[2],
                          "seq": v[3], "uploads": v[4]} for k, v in fold.files.items()]
        out["config"] += [{"stream_id": sid, "key": k, "value": v[0], "seq": v[1], "changes": v[2]}
                          for k, v in fold.config.items()]
        out["permissions"] += [{"stream_id": sid, "principal": k[0], "perm": k[1], "granted": v[0], "seq": v[1],
                                "changes": v[2]} for k, v in fold.perms.items()]
        out["applied"] += [{"stream_id": sid, "seq": e["seq"], "projector": "projector-1",
                            "applied_at": e["committed_at"] + 0.01 * e["seq"]} for e in evs]
    return out


def check(ops: list[dict[str, Any]], final: dict[str, Any], incomplete: Any = ()) -> dict[str, CheckResult]:
    got = {r.name: r for r in wc.check_all(ops, final, incomplete)}
    assert set(got) == set(wc.SPEC.names)
    return got


def only_false(res: dict[str, CheckResult]) -> set[str]:
    return {n for n, r in res.items() if r.valid is False}


def clean() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Two agents: upload, grant, upload, revoke, and queries at versions 1 and 3."""
    ops = [upload("p1", 1), grant("p2", 2), upload("p1", 3, path="/b", size=5), revoke("p2", 4),
           query("p3", 5, version=1, files=1), query("p3", 6, version=3, files=2, grants=1)]
    events = [event_of(ops[0], 1), event_of(ops[1], 2), event_of(ops[2], 3), event_of(ops[3], 4)]
    return ops, state(events)


# --- clean -------------------------------------------------------------------------------------------------


def test_clean_history_is_valid_everywhere() -> None:
    ops, final = clean()
    res = check(ops, final)
    assert {n: r.valid for n, r in res.items()} == dict.fromkeys(wc.SPEC.names, True)
    assert all(r.evidence == [] for r in res.values())
    assert res["workspace.audit"].counts["answered"] == 4
    assert res["workspace.exactly_once"].counts["applications"] == 4


# --- event store -------------------------------------------------------------------------------------------


def test_gap_in_a_stream() -> None:
    ops, final = clean()
    final["events"] = [e for e in final["events"] if e["seq"] != 2]
    res = wc.sequence(wc.WorkspaceView(ops, final))
    assert res.valid is False and res.counts["gaps"] == 1
    assert res.evidence[0]["seq"] == 2


def test_two_events_with_one_seq() -> None:
    ops, final = clean()
    final["events"].append({**final["events"][3], "position": 5, "op_id": "p9-9"})
    res = wc.sequence(wc.WorkspaceView(ops, final))
    assert res.valid is False and res.counts["duplicates"] == 1
    assert res.evidence[0]["op_ids"] == ["p2-4", "p9-9"]


def test_events_inserted_out_of_seq_order() -> None:
    ops, final = clean()
    final["events"][1]["position"], final["events"][2]["position"] = 3, 2  # seq 3 inserted before seq 2
    res = check(ops, final)
    assert only_false(res) == {"workspace.sequence"}
    assert res["workspace.sequence"].counts["out_of_order"] == 1


def test_stream_head_that_does_not_name_the_last_event() -> None:
    ops, final = clean()
    final["streams"][0]["version"] = 6
    res = wc.sequence(wc.WorkspaceView(ops, final))
    assert res.valid is False and res.counts["head_mismatch"] == 1


# --- commands and events -----------------------------------------------------------------------------------


def test_ok_command_without_its_event() -> None:
    ops, final = clean()
    ops.append(upload("p1", 7, path="/c"))
    res = check(ops, final)
    assert only_false(res) == {"workspace.commands_events"}
    ce = res["workspace.commands_events"]
    assert ce.counts["missing"] == 1 and ce.evidence[0]["op_id"] == "p1-7"


def test_failed_command_with_an_event() -> None:
    ops, final = clean()
    ops[2] = {**ops[2], "outcome": "fail", "reason": "connection-lost"}
    ce = wc.commands_events(wc.WorkspaceView(ops, final))
    assert ce.valid is False and ce.counts["phantom"] == 1
    assert "connection-lost" in ce.evidence[0]["what"]


def test_one_command_two_events() -> None:
    ops, final = clean()
    final["events"].append(event_of(ops[0], 5, decided=4))
    ce = wc.commands_events(wc.WorkspaceView(ops, state(final["events"])))
    assert ce.valid is False and ce.counts["duplicated"] == 1


def test_event_that_differs_from_its_command() -> None:
    ops, final = clean()
    final["events"][0]["payload"] = {"path": "/a", "size": 999, "sha256": "h1"}
    ce = wc.commands_events(wc.WorkspaceView(ops, final))
    assert ce.valid is False and ce.counts["mismatch"] == 1


def test_unknown_command_resolves_from_the_store_either_way() -> None:
    ops, final = clean()
    ops[0] = {**ops[0], "outcome": "unknown", "reason": "interrupted-during-commit"}
    ops.append(upload("p1", 8, "/z", outcome="unknown"))
    res = check(ops, final)
    assert only_false(res) == set()
    ce = res["workspace.commands_events"]
    assert (ce.counts["unknown_applied"], ce.counts["unknown_not_applied"]) == (1, 1)


def test_event_of_an_operation_nobody_recorded_and_of_an_incomplete_process() -> None:
    ops, final = clean()
    stray = event_of(upload("p9", 1), 5)
    final = state([*final["events"], stray])
    assert wc.commands_events(wc.WorkspaceView(ops, final)).counts["phantom"] == 1
    doubt = wc.commands_events(wc.WorkspaceView(ops, final, incomplete_processes=["p9"]))
    assert doubt.valid == UNKNOWN and doubt.counts["events_from_incomplete_history"] == 1


# --- decisions: the grant/revoke race ----------------------------------------------------------------------


def test_event_decided_on_a_stale_version() -> None:
    ops, final = clean()
    final["events"][3]["decided_version"] = 1
    res = check(ops, final)
    assert only_false(res) == {"workspace.decisions"}
    d = res["workspace.decisions"]
    assert d.counts["stale_decisions"] == 1 and d.evidence[0]["op_id"] == "p2-4"


def test_two_racing_grants_both_applied() -> None:
    ops = [grant("p1", 1), grant("p2", 2, invoke=T0 + 1.1)]
    final = state([event_of(ops[0], 1), event_of(ops[1], 2)])
    d = wc.decisions(wc.WorkspaceView(ops, final))
    assert d.valid is False and d.counts["invalid_grants"] == 1
    assert d.evidence[0]["op_id"] == "p2-2"


def test_revoke_of_a_permission_never_granted() -> None:
    ops = [revoke("p1", 1)]
    d = wc.decisions(wc.WorkspaceView(ops, state([event_of(ops[0], 1)])))
    assert d.valid is False and d.counts["invalid_revokes"] == 1


def test_race_that_serialised_is_valid_and_counted() -> None:
    # grant (ok, seq 1) and revoke overlapping it: the revoke read version 0 and was rejected, justified.
    ops = [grant("p1", 1), revoke("p2", 2, outcome="fail", reason="not-granted", invoke=T0 + 1.2,
                                  result={"version": 0})]
    d = wc.decisions(wc.WorkspaceView(ops, state([event_of(ops[0], 1)])))
    assert d.valid is True
    assert d.counts["grant_revoke_races"] == 1 and d.counts["rejections"] == 1


def test_rejection_not_justified_by_the_version_it_read() -> None:
    ops = [grant("p1", 1), revoke("p2", 2, outcome="fail", reason="not-granted", result={"version": 1})]
    d = wc.decisions(wc.WorkspaceView(ops, state([event_of(ops[0], 1)])))
    assert d.valid is False and d.counts["unjustified_rejections"] == 1
    assert d.evidence[0]["op_id"] == "p2-2"


# --- projection and exactly once ----------------------------------------------------------------------------


def test_projection_applied_an_upload_twice() -> None:
    ops, final = clean()
    final["files"][0]["uploads"] = 2
    res = check(ops, final)
    assert only_false(res) == {"workspace.projection"}
    ev = res["workspace.projection"].evidence[0]
    assert ev["read_model"] == "files" and ev["fold"][4] == 1 and ev["projection"][4] == 2


def test_projection_behind_its_stream() -> None:
    ops, final = clean()
    final["checkpoints"][0]["position"] = 2
    final["applied"] = [a for a in final["applied"] if a["seq"] <= 2]
    p = wc.projection(wc.WorkspaceView(ops, final))
    assert p.valid is False and p.counts["streams_behind"] == 1 and p.counts["events_not_projected"] == 2


def test_event_applied_twice_in_the_log() -> None:
    ops, final = clean()
    final["applied"].append({**final["applied"][1], "projector": "projector-2"})
    res = check(ops, final)
    assert only_false(res) == {"workspace.exactly_once"}
    assert res["workspace.exactly_once"].counts["applied_twice"] == 1


def test_checkpoint_over_an_event_never_applied_and_applied_beyond_it() -> None:
    ops, final = clean()
    final["applied"] = [a for a in final["applied"] if a["seq"] != 3]
    assert wc.exactly_once(wc.WorkspaceView(ops, final)).counts["never_applied"] == 1
    final["checkpoints"][0]["position"] = 2
    once = wc.exactly_once(wc.WorkspaceView(ops, final))
    assert once.valid is False and once.counts["beyond_checkpoint"] == 1


# --- reads ---------------------------------------------------------------------------------------------------


def test_agent_reads_an_older_version_after_a_newer_one() -> None:
    ops, final = clean()
    ops += [query("p3", 7, version=1, files=1)]
    res = check(ops, final)
    assert only_false(res) == {"workspace.reads"}
    ev = res["workspace.reads"].evidence[0]
    assert (ev["op_id"], ev["saw"], ev["after_op"], ev["which_saw"]) == ("p3-7", 1, "p3-6", 3)


def test_different_agents_may_see_different_versions() -> None:
    ops, final = clean()
    ops += [query("p4", 7, version=1, files=1)]  # another agent, older version: allowed
    assert wc.reads(wc.WorkspaceView(ops, final)).valid is True


def test_read_that_does_not_match_the_stream_at_its_version() -> None:
    ops, final = clean()
    ops[5] = query("p3", 6, version=3, files=2, grants=0)
    r = wc.reads(wc.WorkspaceView(ops, final))
    assert r.valid is False and r.counts["inconsistent"] == 1
    assert r.evidence[0]["fold_at_version"] == {"files": 2, "config_keys": 0, "grants": 1}


# --- audit ---------------------------------------------------------------------------------------------------


def test_event_without_its_tool_call() -> None:
    ops, final = clean()
    final["events"][1].update(op_id=None, causation_id=None)
    res = check(ops, final)
    assert only_false(res) == {"workspace.audit", "workspace.commands_events"}
    assert res["workspace.audit"].evidence[0]["missing"] == ["op_id", "causation_id"]


def test_event_attributed_to_another_agent() -> None:
    ops, final = clean()
    final["events"][0]["agent"] = "p2-a"
    a = wc.audit(wc.WorkspaceView(ops, final))
    assert a.valid is False and a.evidence[0]["fields"] == ["agent"]


# --- figures, gates, crashes --------------------------------------------------------------------------------


def test_lag_figures_and_gate() -> None:
    ops, final = clean()
    fig = wc.figures(ops, final)
    assert fig["events"] == 4 and fig["lag_events"] == 4
    assert [round(x) for x in wc.lag_ms(final)] == [10, 20, 30, 40]
    assert round(fig["lag_p50_ms"]) == 20 and round(fig["lag_max_ms"]) == 40
    assert wc.gates(ops, final, {"gate_lag_p95_ms": 100.0})[0]["met"] is True
    assert wc.gates(ops, final, {"gate_lag_p95_ms": 30.0})[0]["met"] is False
    empty = wc.gates([], state([]), {"gate_lag_p95_ms": 100.0})[0]
    assert empty["met"] is False and empty["figure"] is None
    assert math.isnan(wc.figures([], state([]))["lag_p95_ms"])


def test_malformed_final_state_is_unknown_not_true() -> None:
    ops, final = clean()
    del final["events"][0]["seq"]
    results = wc.check_all(ops, final)
    assert results and all(r.valid == UNKNOWN for r in results)
    assert worst(r.valid for r in results) == UNKNOWN
