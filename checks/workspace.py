"""Checks of the workspace scenario: the event store, the projections and the audit trail.

Inputs: the workspace operations of the history (commands ``upload_file``, ``set_config``, ``grant``,
``revoke`` and queries ``query_workspace``) and the final state captured by
:func:`toolclash.tools.workspace.snapshot` (``streams``, ``events``, ``checkpoints``, ``files``,
``config``, ``permissions``, ``applied``). The projections are rebuilt here from scratch by a fold
written in Python, independent of the projector's SQL.

* ``workspace.sequence`` — per stream the seqs are exactly 1..n (no gap, no duplicate), inserted in
  seq order, and the stream head says n.
* ``workspace.commands_events`` — every acknowledged command has exactly one event, every failed one
  none, and every event comes from an ok or in-doubt command with the same stream, type and payload.
* ``workspace.decisions`` — every event was decided on the state right before it (``decided_version``
  = seq − 1), no grant of a granted permission, no revoke of one not granted, and every rejected
  grant or revoke is justified by the state at the version it read. This is the defined outcome of a
  grant and a revoke racing on one permission: one serial order, each step valid on its predecessor.
* ``workspace.projection`` — each read model equals the fold of its stream up to the checkpoint, and
  the checkpoint reached the end of the stream (the projectors caught up).
* ``workspace.exactly_once`` — the projectors' applied log holds each event up to the checkpoint once.
* ``workspace.reads`` — per agent and stream, the versions queries saw never go down, and what a query
  saw equals the fold of the stream at that version.
* ``workspace.audit`` — every event says who (agent), what (type, payload), when (commit time) and
  which tool call (op id = causation id, the agent's correlation id), and that op exists and matches.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, result, run_checks
from checks.gates import gate, percentile
from toolclash.history import FAIL, OK
from toolclash.tools.workspace import SCENARIO as WORKSPACE

COMMANDS = ("upload_file", "set_config", "grant", "revoke")
QUERY = "query_workspace"
TOOLS = (*COMMANDS, QUERY)
EVENT_OF = {"upload_file": "FileUploaded", "set_config": "ConfigSet", "grant": "PermissionGranted",
            "revoke": "PermissionRevoked"}
PERMISSION_EVENTS = ("PermissionGranted", "PermissionRevoked")
BUSINESS_REJECTIONS = WORKSPACE.rejections


def payload_of(op: Mapping[str, Any]) -> dict[str, Any]:
    """The payload a command's event must carry, from the call's arguments."""
    a = op["args"]
    tool = op["tool"]
    if tool == "upload_file":
        return {"path": a["path"], "size": a["size"], "sha256": a["sha256"]}
    if tool == "set_config":
        return {"key": a["key"], "value": a["value"]}
    return {"principal": a["principal"], "perm": a["perm"]}


class Fold:
    """One stream folded from scratch, in seq order: the state after every prefix, cheaply.

    ``files``/``config``/``perms`` are the state after the whole fold; ``counts[v]`` is
    (files, config keys, granted permissions) after the first *v* events; ``perm_history`` gives
    each permission's (seq, granted) changes, for the state at any version.
    """

    def __init__(self, events: list[Mapping[str, Any]], upto: int | None = None) -> None:
        # hot loop (a million events in the bench): locals, no method lookups per event
        files: dict[str, tuple[Any, ...]] = {}
        config: dict[str, tuple[Any, ...]] = {}
        perms: dict[tuple[str, str], tuple[Any, ...]] = {}
        counts: list[tuple[int, int, int]] = [(0, 0, 0)]
        history: dict[tuple[str, str], tuple[list[int], list[bool]]] = {}
        count = counts.append
        granted = 0
        for e in events:
            seq = e["seq"]
            if upto is not None and seq > upto:
                break
            p = e["payload"]
            etype = e["type"]
            if etype == "FileUploaded":
                path = p["path"]
                old = files.get(path)
                files[path] = (p["size"], p["sha256"], e["agent"], seq, old[4] + 1 if old else 1)
            elif etype == "ConfigSet":
                key = p["key"]
                old = config.get(key)
                config[key] = (p["value"], seq, old[2] + 1 if old else 1)
            elif etype in PERMISSION_EVENTS:
                pkey = (p["principal"], p["perm"])
                old = perms.get(pkey)
                now = etype == "PermissionGranted"
                if old is None:
                    granted += now
                    perms[pkey] = (now, seq, 1)
                    history[pkey] = ([seq], [now])
                else:
                    granted += now - old[0]
                    perms[pkey] = (now, seq, old[2] + 1)
                    seqs, states = history[pkey]
                    seqs.append(seq)
                    states.append(now)
            count((len(files), len(config), granted))
        self.files, self.config, self.perms, self.counts, self.perm_history = files, config, perms, counts, history

    def granted_at(self, key: tuple[str, str], version: int) -> bool:
        seqs, states = self.perm_history.get(key, ([], []))
        i = bisect_right(seqs, version)
        return bool(states[i - 1]) if i else False


class WorkspaceView:
    """Indexes built once and shared by the checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.commands: dict[str, Mapping[str, Any]] = {}
        self.queries: list[Mapping[str, Any]] = []
        self.duplicate_ids: list[str] = []
        for op in ops:
            if op["tool"] in COMMANDS:
                if op["op_id"] in self.commands:
                    self.duplicate_ids.append(op["op_id"])
                self.commands[op["op_id"]] = op
            elif op["tool"] == QUERY:
                self.queries.append(op)
        self.incomplete = frozenset(incomplete_processes)
        self.events: list[Mapping[str, Any]] = list(final.get("events", []))
        self.streams: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for e in self.events:
            self.streams[int(e["stream_id"])].append(e)
        for evs in self.streams.values():
            evs.sort(key=itemgetter("seq", "position"))  # ints, as the snapshot captures them
        self.heads = {int(s["stream_id"]): int(s["version"]) for s in final.get("streams", [])}
        for sid in self.heads:
            self.streams.setdefault(sid, [])
        self.checkpoints = {int(c["stream_id"]): int(c["position"]) for c in final.get("checkpoints", [])}
        self.by_op: dict[str | None, list[Mapping[str, Any]]] = defaultdict(list)
        for e in self.events:
            self.by_op[e.get("op_id")].append(e)
        self.final = final
        self._folds: dict[int, Fold] = {}

    def fold(self, stream: int) -> Fold:
        if stream not in self._folds:
            self._folds[stream] = Fold(self.streams.get(stream, []))
        return self._folds[stream]

    def from_incomplete_process(self, op_id: str | None) -> bool:
        return bool(op_id) and str(op_id).rpartition("-")[0] in self.incomplete


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


# ------------------------------------------------------------------------------------------ checks


def sequence(v: WorkspaceView) -> CheckResult:
    name = "workspace.sequence"
    ev = Evidence()
    counts = {"streams": len(v.streams), "events": len(v.events), "gaps": 0, "duplicates": 0, "out_of_order": 0,
              "head_mismatch": 0}
    for sid, evs in sorted(v.streams.items()):
        seen: Counter[int] = Counter(int(e["seq"]) for e in evs)
        n = max(seen) if seen else 0
        for seq in range(1, n + 1):
            c = seen.get(seq, 0)
            if c == 0:
                counts["gaps"] += 1
                ev.add({"stream": sid, "seq": seq, "what": f"gap: no event {seq} in a stream that reaches {n}"})
            elif c > 1:
                counts["duplicates"] += 1
                ev.add({"stream": sid, "seq": seq, "what": f"{c} events share seq {seq}",
                        "op_ids": [e.get("op_id") for e in evs if int(e["seq"]) == seq]})
        by_position = sorted(evs, key=lambda e: int(e["position"]))
        last = 0
        for e in by_position:
            if int(e["seq"]) < last:
                counts["out_of_order"] += 1
                ev.add({"stream": sid, "seq": int(e["seq"]), "op_id": e.get("op_id"),
                        "what": f"inserted after seq {last}: the stream was not appended in seq order"})
            last = max(last, int(e["seq"]))
        head = v.heads.get(sid)
        if head is not None and head != n:
            counts["head_mismatch"] += 1
            ev.add({"stream": sid, "head_version": head, "events_up_to": n,
                    "what": "the stream head does not name its last event"})
    if ev:
        return result(name, False, counts, ev, f"{ev.total} sequence anomal{'y' if ev.total == 1 else 'ies'}")
    return result(name, True, counts, ev, "every stream is 1..n, appended in order")


def commands_events(v: WorkspaceView) -> CheckResult:
    name = "workspace.commands_events"
    ev = Evidence()
    counts = {"commands": len(v.commands), "events": len(v.events), "missing": 0, "duplicated": 0, "phantom": 0,
              "mismatch": 0, "unattributed": 0, "unknown_applied": 0, "unknown_not_applied": 0,
              "events_from_incomplete_history": 0, "duplicate_op_ids": len(v.duplicate_ids)}
    for op_id in v.duplicate_ids:
        ev.add({"op_id": op_id, "what": "op id recorded twice in the history"})
    for op_id, op in v.commands.items():
        events = v.by_op.get(op_id, [])
        outcome = op["outcome"]
        if outcome == OK and not events:
            counts["missing"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "tool": op["tool"], "args": op["args"],
                    "what": "acknowledged (ok) but no event carries its op id"})
        elif outcome == FAIL and events:
            counts["phantom"] += 1
            ev.add({"op_id": op_id, "what": f"reported fail ({op.get('reason')}) but it has an event",
                    "seqs": [(e["stream_id"], e["seq"]) for e in events]})
        elif outcome not in (OK, FAIL):
            counts["unknown_applied" if events else "unknown_not_applied"] += 1
        if len(events) > 1:
            counts["duplicated"] += 1
            ev.add({"op_id": op_id, "what": f"{len(events)} events for one command",
                    "seqs": [(e["stream_id"], e["seq"]) for e in events]})
        for e in events:
            if (e["type"] != EVENT_OF[op["tool"]] or int(e["stream_id"]) != int(op["args"]["workspace"])
                    or e["payload"] != payload_of(op)):
                counts["mismatch"] += 1
                ev.add({"op_id": op_id, "what": "event differs from the command", "tool": op["tool"],
                        "args": op["args"], "event": {"stream": e["stream_id"], "seq": e["seq"], "type": e["type"],
                                                      "payload": e["payload"]}})
    doubtful = 0
    for event_op, event_list in v.by_op.items():
        if event_op in v.commands:
            continue
        for e in event_list:
            if event_op is None:
                counts["unattributed"] += 1
                ev.add({"stream": e["stream_id"], "seq": e["seq"], "agent": e.get("agent"),
                        "what": "event without an op id: no command it can come from"})
            elif v.from_incomplete_process(event_op):
                doubtful += 1
            else:
                counts["phantom"] += 1
                ev.add({"op_id": event_op, "stream": e["stream_id"], "seq": e["seq"],
                        "what": "event of an operation no agent recorded"})
    counts["events_from_incomplete_history"] = doubtful
    if ev:
        return result(name, False, counts, ev, "commands and events disagree")
    if doubtful:
        return result(name, UNKNOWN, counts, ev, f"{doubtful} event(s) from a process whose history is incomplete")
    return result(name, True, counts, ev, "every ok command has exactly one event, every event an ok/unknown command")


def decisions(v: WorkspaceView) -> CheckResult:
    name = "workspace.decisions"
    ev = Evidence()
    counts = {"events": len(v.events), "stale_decisions": 0, "invalid_grants": 0, "invalid_revokes": 0,
              "rejections": 0, "unjustified_rejections": 0, "grant_revoke_races": 0}
    for sid, evs in sorted(v.streams.items()):
        granted: dict[tuple[str, str], bool] = {}
        for e in evs:
            seq = int(e["seq"])
            if int(e["decided_version"]) != seq - 1:
                counts["stale_decisions"] += 1
                ev.add({"stream": sid, "seq": seq, "op_id": e.get("op_id"), "decided_version": e["decided_version"],
                        "what": f"appended as seq {seq} but decided on version {e['decided_version']}: "
                                f"events it never saw came in between"})
            if e["type"] not in PERMISSION_EVENTS:
                continue
            key = (e["payload"]["principal"], e["payload"]["perm"])
            was = granted.get(key, False)
            if e["type"] == "PermissionGranted" and was:
                counts["invalid_grants"] += 1
                ev.add({"stream": sid, "seq": seq, "op_id": e.get("op_id"), "permission": list(key),
                        "what": "grant of a permission that was already granted at the version before it"})
            elif e["type"] == "PermissionRevoked" and not was:
                counts["invalid_revokes"] += 1
                ev.add({"stream": sid, "seq": seq, "op_id": e.get("op_id"), "permission": list(key),
                        "what": "revoke of a permission that was not granted at the version before it"})
            granted[key] = e["type"] == "PermissionGranted"
    perm_ops: dict[tuple[int, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for op in v.commands.values():
        if op["tool"] not in ("grant", "revoke"):
            continue
        a = op["args"]
        perm_ops[(int(a["workspace"]), a["principal"], a["perm"])].append(op)
        if op["outcome"] != FAIL or op.get("reason") not in BUSINESS_REJECTIONS:
            continue
        counts["rejections"] += 1
        version = (op.get("result") or {}).get("version")
        sid = int(a["workspace"])
        fold = v.fold(sid)
        n = len(fold.counts) - 1
        want = op["reason"] == "already-granted"
        if version is None or int(version) > n or fold.granted_at((a["principal"], a["perm"]), int(version)) != want:
            counts["unjustified_rejections"] += 1
            ev.add({"op_id": op["op_id"], "reason": op["reason"], "version": version, "stream": sid,
                    "what": "rejected on a state the stream did not have at the version it read"})
    for group in perm_ops.values():  # how often grant and revoke of one permission really overlapped in time
        group.sort(key=lambda o: o["invoke_ts"])
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if b["invoke_ts"] >= a["complete_ts"]:
                    break
                if a["tool"] != b["tool"]:
                    counts["grant_revoke_races"] += 1
    bad = ev.total
    if bad:
        return result(name, False, counts, ev, f"{bad} event(s) or rejection(s) inconsistent with the state "
                                               "they were decided on")
    return result(name, True, counts, ev, "every change was decided on the state right before it; "
                                          f"{counts['grant_revoke_races']} grant/revoke race(s) serialised")


def _differences(kind: str, sid: int, want: Mapping[Any, tuple[Any, ...]], got: Mapping[Any, tuple[Any, ...]],
                 ev: Evidence) -> int:
    bad = 0
    for key in sorted(set(want) | set(got), key=str):
        if want.get(key) != got.get(key):
            bad += 1
            ev.add({"stream": sid, "read_model": kind, "key": list(key) if isinstance(key, tuple) else key,
                    "fold": want.get(key), "projection": got.get(key)})
    return bad


def projection(v: WorkspaceView) -> CheckResult:
    name = "workspace.projection"
    f = v.final
    if not all(k in f for k in ("checkpoints", "files", "config", "permissions")):
        return result(name, UNKNOWN, {}, None, "final state has no projections")
    files: dict[int, dict[Any, tuple[Any, ...]]] = defaultdict(dict)
    for r in f["files"]:
        files[int(r["stream_id"])][r["path"]] = (r["size"], r["sha256"], r["uploaded_by"], r["seq"], r["uploads"])
    config: dict[int, dict[Any, tuple[Any, ...]]] = defaultdict(dict)
    for r in f["config"]:
        config[int(r["stream_id"])][r["key"]] = (r["value"], r["seq"], r["changes"])
    perms: dict[int, dict[Any, tuple[Any, ...]]] = defaultdict(dict)
    for r in f["permissions"]:
        perms[int(r["stream_id"])][(r["principal"], r["perm"])] = (r["granted"], r["seq"], r["changes"])
    ev = Evidence()
    counts = {"streams": len(v.streams), "events": len(v.events), "rows_differing": 0, "streams_behind": 0,
              "events_not_projected": 0}
    for sid, evs in sorted(v.streams.items()):
        cp = v.checkpoints.get(sid, 0)
        n = int(evs[-1]["seq"]) if evs else 0
        if cp != n:
            counts["streams_behind"] += 1
            counts["events_not_projected"] += max(0, n - cp)
            ev.add({"stream": sid, "checkpoint": cp, "events": n,
                    "what": "the projection did not reach the end of its stream" if cp < n else
                            "the checkpoint is past the end of the stream"})
        fold = v.fold(sid) if cp >= n else Fold(evs, upto=cp)
        counts["rows_differing"] += _differences("files", sid, fold.files, files.get(sid, {}), ev)
        counts["rows_differing"] += _differences("config", sid, fold.config, config.get(sid, {}), ev)
        counts["rows_differing"] += _differences("permissions", sid, fold.perms, perms.get(sid, {}), ev)
    if ev:
        return result(name, False, counts, ev, f"{counts['rows_differing']} read-model row(s) differ from the fold, "
                                               f"{counts['streams_behind']} stream(s) not fully projected")
    return result(name, True, counts, ev, "every read model equals the fold of its stream")


def exactly_once(v: WorkspaceView) -> CheckResult:
    name = "workspace.exactly_once"
    if "applied" not in v.final:
        return result(name, UNKNOWN, {}, None, "final state has no applied log")
    applied: Counter[tuple[int, int]] = Counter((int(a["stream_id"]), int(a["seq"])) for a in v.final["applied"])
    ev = Evidence()
    counts = {"applications": sum(applied.values()), "applied_twice": 0, "never_applied": 0, "beyond_checkpoint": 0}
    for sid, evs in sorted(v.streams.items()):
        cp = v.checkpoints.get(sid, 0)
        for seq in sorted({int(e["seq"]) for e in evs if int(e["seq"]) <= cp}):
            c = applied.get((sid, seq), 0)
            if c > 1:
                counts["applied_twice"] += 1
                ev.add({"stream": sid, "seq": seq, "applications": c, "what": "event applied more than once"})
            elif c == 0:
                counts["never_applied"] += 1
                ev.add({"stream": sid, "seq": seq, "what": "covered by the checkpoint but never applied"})
    for (sid, seq), c in sorted(applied.items()):
        if seq > v.checkpoints.get(sid, 0):
            counts["beyond_checkpoint"] += 1
            ev.add({"stream": sid, "seq": seq, "applications": c,
                    "what": "applied to the read models but not covered by the checkpoint"})
    if ev:
        return result(name, False, counts, ev, f"{ev.total} event(s) not applied exactly once")
    return result(name, True, counts, ev, "every projected event was applied exactly once")


def reads(v: WorkspaceView) -> CheckResult:
    name = "workspace.reads"
    ev = Evidence()
    counts = {"queries": len(v.queries), "ok": 0, "regressions": 0, "inconsistent": 0}
    last: dict[tuple[str, int], tuple[int, str]] = {}
    for op in sorted(v.queries, key=lambda o: (o["agent"], o["invoke_ts"])):
        if op["outcome"] != OK:
            continue
        counts["ok"] += 1
        r = op.get("result") or {}
        sid, version = int(op["args"]["workspace"]), int(r["version"])
        key = (op["agent"], sid)
        prev = last.get(key)
        if prev is not None and version < prev[0]:
            counts["regressions"] += 1
            ev.add({"agent": op["agent"], "stream": sid, "op_id": op["op_id"], "saw": version,
                    "after_op": prev[1], "which_saw": prev[0],
                    "what": f"read version {version} after having read version {prev[0]}"})
        last[key] = max(prev, (version, op["op_id"])) if prev else (version, op["op_id"])
        fold = v.fold(sid)
        n = len(fold.counts) - 1
        seen = (r.get("files"), r.get("config_keys"), r.get("grants"))
        if version > n or fold.counts[version] != seen:
            counts["inconsistent"] += 1
            ev.add({"agent": op["agent"], "stream": sid, "op_id": op["op_id"], "version": version,
                    "saw": {"files": seen[0], "config_keys": seen[1], "grants": seen[2]},
                    "fold_at_version": (dict(zip(("files", "config_keys", "grants"), fold.counts[version], strict=True))
                                        if version <= n else None),
                    "what": "what the query saw is not the stream's state at the version it reports"})
    if ev:
        return result(name, False, counts, ev, f"{counts['regressions']} non-monotonic read(s), "
                                               f"{counts['inconsistent']} inconsistent read(s)")
    return result(name, True, counts, ev, "every agent's reads are monotonic and match the stream at their version")


def audit(v: WorkspaceView) -> CheckResult:
    name = "workspace.audit"
    ev = Evidence()
    counts = {"events": len(v.events), "answered": 0, "incomplete": 0, "mismatched": 0, "outside_call_window": 0}
    for e in v.events:
        missing = [k for k in ("agent", "op_id", "causation_id", "correlation_id", "committed_at") if not e.get(k)]
        if missing:
            counts["incomplete"] += 1
            ev.add({"stream": e["stream_id"], "seq": e["seq"], "agent": e.get("agent"), "missing": missing,
                    "what": "the audit trail cannot say " + ", ".join(missing)})
            continue
        op = v.commands.get(e["op_id"])
        if op is None:
            if not v.from_incomplete_process(e["op_id"]):
                counts["mismatched"] += 1
                ev.add({"stream": e["stream_id"], "seq": e["seq"], "op_id": e["op_id"],
                        "what": "names a tool call that is not in the history"})
            continue
        wrong = [k for k, want in (("agent", op["agent"]), ("causation_id", op["op_id"]),
                                   ("correlation_id", op["args"].get("correlation_id"))) if e.get(k) != want]
        if wrong:
            counts["mismatched"] += 1
            ev.add({"stream": e["stream_id"], "seq": e["seq"], "op_id": e["op_id"], "fields": wrong,
                    "what": "who/which-call in the event differs from the tool call"})
            continue
        counts["answered"] += 1
        if not op["invoke_ts"] - 5.0 <= float(e["committed_at"]) <= op["complete_ts"] + 5.0:
            counts["outside_call_window"] += 1  # clocks of client hosts and server may differ: counted only
    if ev:
        return result(name, False, counts, ev, f"{ev.total} event(s) the audit trail cannot attribute")
    return result(name, True, counts, ev, "every event says who, what, when and which tool call")


# ---------------------------------------------------------------------------------------- figures


def lag_ms(final: Mapping[str, Any]) -> list[float]:
    """Projection lag of each projected event: first application minus append (ms), ascending."""
    committed = {(int(e["stream_id"]), int(e["seq"])): e["committed_at"] for e in final.get("events", [])}
    first: dict[tuple[int, int], float] = {}
    for a in final.get("applied", []):
        key = (int(a["stream_id"]), int(a["seq"]))
        at = float(a["applied_at"])
        if key not in first or at < first[key]:
            first[key] = at
    out = sorted((at - float(committed[k])) * 1000.0 for k, at in first.items() if committed.get(k) is not None)
    return out


def figures(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any]) -> dict[str, Any]:
    lags = lag_ms(final)
    events = final.get("events", [])
    times = [float(e["committed_at"]) for e in events if e.get("committed_at") is not None]
    span = (max(times) - min(times)) if len(times) > 1 else 0.0
    return {"events": len(events), "appends_per_s": len(events) / span if span > 0 else math.nan,
            "lag_p50_ms": percentile(lags, 50), "lag_p95_ms": percentile(lags, 95),
            "lag_max_ms": lags[-1] if lags else math.nan, "lag_events": len(lags)}


def gates(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
          limits: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [gate("workspace", "lag_p95_ms", figures(ops, final)["lag_p95_ms"], "<", float(limits["gate_lag_p95_ms"]),
                 "no projected events to measure")]


SPEC = Checks(
    view=WorkspaceView,
    checks=(("workspace.sequence", sequence), ("workspace.commands_events", commands_events),
            ("workspace.decisions", decisions), ("workspace.projection", projection),
            ("workspace.exactly_once", exactly_once), ("workspace.reads", reads), ("workspace.audit", audit)),
    figures=figures,
    gates=gates,
)
