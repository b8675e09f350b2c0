"""Checks of the transfers scenario: every audit saw the constant total (naming the transfer an audit saw half of),
the ledger against the history and the balances, and the dependency graph of transfers and audits.

Inputs: the ``transfer`` and ``audit`` operations of the history and the final state of
:func:`toolclash.tools.transfers.snapshot` (``transfer_accounts`` and ``transfer_ledger``: one row per applied
transfer, written in the same transaction, with the version of each account it installed). Every transfer bumps
both accounts' versions, so an audit that read account *a* at version *n* saw exactly the transfers that installed
versions 1..*n* of *a*: it saw half of a transfer when it saw that transfer's version of one account and not of
the other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, result, run_checks
from checks.graph import Txn, analyse, isolation_check
from toolclash.history import FAIL, OK

TRANSFER, AUDIT = "transfer", "audit"


class TransfersView:
    """Indexes built once and shared by the checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.transfers: dict[str, Mapping[str, Any]] = {}
        self.audits: list[Mapping[str, Any]] = []
        self.duplicate_ids: list[str] = []
        for op in ops:
            if op["tool"] == TRANSFER:
                if op["op_id"] in self.transfers:
                    self.duplicate_ids.append(op["op_id"])
                self.transfers[op["op_id"]] = op
            elif op["tool"] == AUDIT:
                self.audits.append(op)
        self.has_state = "transfer_accounts" in final and "transfer_ledger" in final
        self.accounts = {int(a["id"]): a for a in final.get("transfer_accounts", [])}
        self.total = sum(int(a["initial"]) for a in self.accounts.values())
        self.ledger: dict[str, Mapping[str, Any]] = {r["op_id"]: r for r in final.get("transfer_ledger", [])}
        self.writer: dict[tuple[int, int], Mapping[str, Any]] = {}  # (account, version) -> ledger row
        for row in self.ledger.values():
            self.writer[(int(row["from"]), int(row["from_version"]))] = row
            self.writer[(int(row["to"]), int(row["to_version"]))] = row
        claim = final.get("isolation") or {}
        self.level, self.expect = str(claim.get("level", "")), str(claim.get("expect", ""))
        self.incomplete = frozenset(incomplete_processes)

    def from_incomplete_process(self, op_id: str) -> bool:
        return op_id.rpartition("-")[0] in self.incomplete


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


def half_seen(v: TransfersView, seen: Mapping[int, int]) -> list[dict[str, Any]]:
    """The transfers an audit that read each account at version ``seen[account]`` saw one half of: for each
    account, the first version it did not see, when the transfer that installed it is one whose other half it saw
    (and the last version it saw, when the transfer behind it moved credits to an account read older)."""
    found: dict[str, dict[str, Any]] = {}
    for account, version in seen.items():
        for candidate in (version, version + 1):
            row = v.writer.get((account, candidate))
            if row is None or row["op_id"] in found:
                continue
            a, b = int(row["from"]), int(row["to"])
            saw_a = seen.get(a, -1) >= int(row["from_version"])
            saw_b = seen.get(b, -1) >= int(row["to_version"])
            if saw_a != saw_b:
                found[row["op_id"]] = {"op_id": row["op_id"], "agent": row["agent"], "from": a, "to": b,
                                       "amount": row["amount"], "versions": {str(a): row["from_version"],
                                                                             str(b): row["to_version"]},
                                       "audit_saw": f"account {a if saw_a else b} after it, account "
                                                    f"{b if saw_a else a} before it"}
    return list(found.values())


def audits(v: TransfersView) -> CheckResult:
    """Every completed audit saw the constant total; one that did not names the transfer it saw half of."""
    name = "transfers.audits"
    if not v.accounts:
        return result(name, UNKNOWN, {}, None, "not checked: needs the accounts in the final state")
    ev = Evidence()
    done = [a for a in v.audits if a["outcome"] == OK]
    for audit in done:
        total = int(audit["result"]["total"])
        if total == v.total:
            continue
        seen = {int(acct): int(ver) for acct, _, ver in audit["result"]["seen"]}
        ev.add({"op_id": audit["op_id"], "agent": audit["agent"], "saw_total": total, "constant_total": v.total,
                "seen": audit["result"]["seen"], "half_of": half_seen(v, seen)[:3],
                "what": "the audit saw a total that never existed: one half of a transfer and not the other"})
    counts = {"audits": len(done), "audits_not_completed": len(v.audits) - len(done), "wrong_totals": ev.total,
              "constant_total": v.total}
    if ev:
        first = ev.items[0]
        half = first["half_of"][0]["op_id"] if first["half_of"] else "a transfer"
        return result(name, False, counts, ev, f"{ev.total} audit(s) saw a wrong total ({first['op_id']} saw "
                                               f"{first['saw_total']} != {v.total}: half of {half})")
    if not done:
        return result(name, UNKNOWN, counts, ev, "not checked: no audit completed")
    return result(name, True, counts, ev, f"every audit saw the constant total {v.total}")


def ledger(v: TransfersView) -> CheckResult:
    """Ledger rows match ok transfers one to one; every balance is its initial one plus its ledger rows, every
    version the number of them; the total is constant."""
    name = "transfers.ledger"
    if not v.has_state:
        return result(name, UNKNOWN, {}, None, "not checked: needs the accounts and ledger in the final state")
    ev = Evidence()
    counts: dict[str, Any] = {"ops": len(v.transfers), "ledger_rows": len(v.ledger), "missing": 0, "phantom": 0,
                              "account_mismatch": 0, "duplicate_op_ids": len(v.duplicate_ids), "unknown_applied": 0,
                              "unknown_not_applied": 0, "rows_from_incomplete_history": 0}
    for op_id in v.duplicate_ids:
        ev.add({"op_id": op_id, "what": "op id recorded twice in the history"})
    for op_id, op in v.transfers.items():
        row = v.ledger.get(op_id)
        if op["outcome"] == OK and row is None:
            counts["missing"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "what": "acknowledged (ok) but no ledger row"})
        elif op["outcome"] == FAIL and row is not None:
            counts["phantom"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "reason": op.get("reason"),
                    "what": "reported failed, but the transfer was applied"})
        elif op["outcome"] not in (OK, FAIL):
            counts["unknown_applied" if row is not None else "unknown_not_applied"] += 1
    for op_id in v.ledger:
        if op_id not in v.transfers:
            if v.from_incomplete_process(op_id):
                counts["rows_from_incomplete_history"] += 1
            else:
                counts["phantom"] += 1
                ev.add({"op_id": op_id, "what": "ledger row of a transfer no agent recorded"})
    delta: dict[int, int] = defaultdict(int)
    touched: dict[int, int] = defaultdict(int)
    for row in v.ledger.values():
        delta[int(row["from"])] -= int(row["amount"])
        delta[int(row["to"])] += int(row["amount"])
        touched[int(row["from"])] += 1
        touched[int(row["to"])] += 1
    for account, acc in sorted(v.accounts.items()):
        if int(acc["balance"]) != int(acc["initial"]) + delta[account] or int(acc["version"]) != touched[account]:
            counts["account_mismatch"] += 1
            ev.add({"account": account, "balance": acc["balance"], "expected": int(acc["initial"]) + delta[account],
                    "version": acc["version"], "ledger_rows": touched[account],
                    "what": "the account does not match its ledger rows"})
    if ev:
        return result(name, False, counts, ev, "ledger, history and balances disagree")
    if counts["rows_from_incomplete_history"]:
        return result(name, UNKNOWN, counts, ev, "ledger rows of a process whose history is incomplete")
    return result(name, True, counts, ev, "every ok transfer has its ledger row, no other does, every account adds up")


def transactions(v: TransfersView) -> tuple[list[Txn], dict[int, list[tuple[int, str]]]]:
    """Applied transfers (read and wrote both accounts' versions) and completed audits (read them) as transactions
    for :func:`checks.graph.analyse`; an account's versions are 1, 2, … as the ledger installed them."""
    committed: list[Txn] = []
    versions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for row in v.ledger.values():
        a, b, va, vb = int(row["from"]), int(row["to"]), int(row["from_version"]), int(row["to_version"])
        committed.append((row["op_id"], [("r", a, va - 1), ("w", a, va), ("r", b, vb - 1), ("w", b, vb)]))
        versions[a].append((va, row["op_id"]))
        versions[b].append((vb, row["op_id"]))
    for audit in v.audits:
        if audit["outcome"] == OK:
            committed.append((audit["op_id"], [("r", int(acct), int(ver)) for acct, _, ver in audit["result"]["seen"]]))
    for rows in versions.values():
        rows.sort()
    return committed, versions


def isolation(v: TransfersView) -> CheckResult:
    """The dependency graph of transfers and audits: what the claimed model forbids makes it false."""
    name = "transfers.isolation"
    if not v.has_state:
        return result(name, UNKNOWN, {}, None, "not checked: needs the ledger in the final state")
    committed, versions = transactions(v)
    agents = {**{op_id: op["agent"] for op_id, op in v.transfers.items()}, **{a["op_id"]: a["agent"]
                                                                               for a in v.audits}}
    analysis = analyse(committed, versions, initial=0, describe=lambda op_id: {"agent": agents.get(op_id)})
    return isolation_check(name, analysis, v.level, v.expect)


SPEC = Checks(
    view=TransfersView,
    checks=(("transfers.audits", audits), ("transfers.ledger", ledger), ("transfers.isolation", isolation)),
)
