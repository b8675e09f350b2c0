"""Checks of the register scenario: the write log against the history, and the dependency graph's anomalies.

Inputs: the ``txn`` operations of the history (arguments: the planned reads and writes; result: what each read
saw) and the final state of :func:`toolclash.tools.register.snapshot` (``registers``, ``register_log`` in
commit order per key, and the ``isolation`` the run claims). A write's value is ``<op id>:<index>``, so what an
operation wrote is known from its arguments even when its call failed or is in doubt.

In-doubt calls (``unknown``) are resolved by the log, written in the same statement as each write: with a log
row the transaction committed (its writes join the graph; its reads are not known, so they add no edge), without
one it did not. An operation of a process whose history is incomplete is known only by its log rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, by_op_id, result, run_checks
from checks.graph import Analysis, Txn, analyse, isolation_check
from toolclash.history import FAIL, OK

TOOL = "txn"


def _writes(op_id: str, planned: Iterable[Any]) -> list[tuple[str, Any, str]]:
    return [("w", k, f"{op_id}:{i}") for i, (f, k, _) in enumerate(planned) if f == "w"]


class RegisterView:
    """Transactions by status and the version order per key, built once for both checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.ops, self.duplicate_ids = by_op_id(ops, TOOL)
        self.has_log = "register_log" in final
        self.log: list[list[Any]] = sorted(final.get("register_log", []), key=itemgetter(0))  # [seq, k, v, op id]
        self.registers = {int(k): v for k, v in final.get("registers", [])}
        claim = final.get("isolation") or {}
        self.level = str(claim.get("level", ""))
        self.expect = str(claim.get("expect", ""))
        self.incomplete = frozenset(incomplete_processes)
        self.versions: dict[Any, list[tuple[Any, str]]] = defaultdict(list)
        for _, k, v, op_id in self.log:
            self.versions[k].append((v, op_id))
        self.logged_key = {row[2]: row[1] for row in self.log}
        """Every logged value -> its key (values are unique: ``<op id>:<index>``)."""
        self.logged_ops = {row[3] for row in self.log}
        self.committed: list[Txn] = []
        self.aborted: list[Txn] = []
        self.in_doubt = {"committed": 0, "not_committed": 0, "reads_unknown": 0, "from_incomplete_history": 0}
        for op_id, op in self.ops.items():
            outcome = op["outcome"]
            if outcome == OK:
                self.committed.append((op_id, op["result"].get("txn") or []))
            elif outcome == FAIL:
                self.aborted.append((op_id, op["result"].get("txn") or _writes(op_id, op["args"]["txn"])))
            elif op_id in self.logged_ops:  # in doubt; the log shows it committed: its writes count, reads unknown
                self.in_doubt["committed"] += 1
                self.in_doubt["reads_unknown"] += sum(1 for f, _, _ in op["args"]["txn"] if f == "r")
                self.committed.append((op_id, _writes(op_id, op["args"]["txn"])))
            else:
                self.in_doubt["not_committed"] += 1
                self.aborted.append((op_id, _writes(op_id, op["args"]["txn"])))
        self.phantoms: list[str] = []
        unrecorded = self.logged_ops - self.ops.keys()
        if unrecorded:
            rows: dict[str, list[tuple[str, Any, Any]]] = defaultdict(list)
            for _, k, v, op_id in self.log:
                if op_id in unrecorded:
                    rows[op_id].append(("w", k, v))
            for op_id, writes in rows.items():
                if op_id.rpartition("-")[0] in self.incomplete:
                    self.in_doubt["from_incomplete_history"] += 1
                    self.committed.append((op_id, writes))
                else:
                    self.phantoms.append(op_id)

    def logged(self, op_id: str) -> list[list[Any]]:
        """The log rows of *op_id* (a slow scan: for evidence only)."""
        return [[k, v] for _, k, v, o in self.log if o == op_id]

    def describe(self, op_id: str) -> dict[str, Any]:
        op = self.ops.get(op_id)
        if op is None:
            return {"agent": None, "outcome": "not in the history"}
        return {"agent": op["agent"], "outcome": op["outcome"]}


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


def write_log(v: RegisterView) -> CheckResult:
    """The write log matches the history and the registers: every ok transaction's writes are logged, no failed
    transaction's are, no log row belongs to an operation nobody recorded, each key ends at its last logged value."""
    name = "register.log"
    if not v.has_log:
        return result(name, UNKNOWN, {}, None, "not checked: needs the write log in the final state")
    ev = Evidence()
    counts: dict[str, Any] = {"ops": len(v.ops), "log_rows": len(v.log), "missing": 0, "failed_but_logged": 0,
                              "phantom": len(v.phantoms), "duplicate_values": 0, "final_mismatch": 0,
                              "duplicate_op_ids": len(v.duplicate_ids), "in_doubt": dict(v.in_doubt)}
    for op_id in v.duplicate_ids:
        ev.add({"op_id": op_id, "what": "op id recorded twice in the history"})
    logged_key = v.logged_key
    for op_id, op in v.ops.items():
        outcome = op["outcome"]
        if outcome == OK:
            missing = [[k, val] for f, k, val in op["result"].get("txn") or [] if f == "w" and logged_key.get(val) != k]
            if missing:
                counts["missing"] += 1
                ev.add({"op_id": op_id, "agent": op["agent"], "what": "acknowledged, but some of its writes are not in "
                        "the log", "missing": missing[:5]})
        elif outcome == FAIL and op_id in v.logged_ops:
            counts["failed_but_logged"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "reason": op.get("reason"), "logged": v.logged(op_id)[:5],
                    "what": "reported failed, but its writes committed"})
    for op_id in v.phantoms:
        ev.add({"op_id": op_id, "what": "log rows of an operation no agent recorded", "rows": v.logged(op_id)[:5]})
    if len(logged_key) < len(v.log):
        seen: set[Any] = set()
        for _, k, val, op_id in v.log:
            if val in seen:
                counts["duplicate_values"] += 1
                ev.add({"key": k, "value": val, "op_id": op_id, "what": "the same value was written twice"})
            seen.add(val)
    for k, final in sorted(v.registers.items()):
        rows = v.versions.get(k, [])
        last = rows[-1][0] if rows else None
        if final != last:
            counts["final_mismatch"] += 1
            ev.add({"key": k, "final": final, "last_logged": last, "what": "the register's final value is not its last "
                    "logged write: the log is not the version order"})
    return log_verdict(counts, ev)


def log_verdict(counts: dict[str, Any], ev: Evidence) -> CheckResult:
    """The write log's verdict from its counts and evidence (also for :mod:`checks.register_numeric`)."""
    name = "register.log"
    if ev:
        return result(name, False, counts, ev, "write log and history disagree")
    if counts["in_doubt"]["from_incomplete_history"]:
        return result(name, UNKNOWN, counts, ev, "log rows of a process whose history is incomplete")
    return result(name, True, counts, ev, "every acknowledged write is logged, no failed one is, every key ends at its "
                                          "last logged value")


def isolation(v: RegisterView) -> CheckResult:
    """The dependency graph of the committed transactions: each anomaly the claimed model forbids makes it false."""
    name = "register.isolation"
    if not v.has_log:
        return result(name, UNKNOWN, {}, None, "not checked: needs the write log (the version order) in the final "
                                               "state")
    analysis = analyse(v.committed, v.versions, aborted=v.aborted, describe=v.describe)
    return isolation_verdict(analysis, v.level, v.expect, v.in_doubt, v.incomplete)


def isolation_verdict(analysis: Analysis, level: str, expect: str, in_doubt: dict[str, int],
                      incomplete: frozenset[str]) -> CheckResult:
    """The isolation check's verdict from the graph's *analysis* (also for :mod:`checks.register_numeric`)."""
    name = "register.isolation"
    res = isolation_check(name, analysis, level, expect, in_doubt=in_doubt)
    if res.valid is True and incomplete:
        res.valid = UNKNOWN
        res.summary = "no forbidden anomaly among the transactions known, but a process's history is incomplete"
    return res


SPEC = Checks(
    view=RegisterView,
    checks=(("register.log", write_log), ("register.isolation", isolation)),
    columnar="checks.register_fast",
)
