"""Checks of the team budget scenario: no team over its limit (with the spends that formed the skew), the ledger
against the history and the wallets, and the dependency graph of the spends.

Inputs: the ``spend`` operations of the history and the final state of :func:`toolclash.tools.budget.snapshot`
(``budget_teams``, ``budget_wallets``, ``budget_spends``: one ledger row per applied spend, written in the same
transaction, holding what the spender read of every wallet of its team and its own wallet before and after).

A wallet only grows, so its ``spent`` values order its versions: a spend that read wallet *w* at value *s* saw
exactly the spends of *w* whose ``after`` is at most *s*. Two spends that each did not see the other each checked
the limit against a total without the other: that pair is the write skew (two anti-dependencies, G2-item) when
they spent from different wallets, a check-then-act race on one wallet (a lost update) when from the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import combinations
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, by_op_id, result, run_checks
from checks.graph import Txn, analyse, isolation_check
from toolclash.history import FAIL, OK

TOOL = "spend"


class BudgetView:
    """Indexes built once and shared by the checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.ops, self.duplicate_ids = by_op_id(ops, TOOL)
        self.has_state = "budget_spends" in final and "budget_wallets" in final
        self.limits = {int(t["id"]): int(t["limit"]) for t in final.get("budget_teams", [])}
        self.wallets: dict[tuple[int, int], int] = {(int(w["team"]), int(w["member"])): int(w["spent"])
                                                    for w in final.get("budget_wallets", [])}
        self.spends: dict[str, Mapping[str, Any]] = {r["op_id"]: r for r in final.get("budget_spends", [])}
        self.by_team: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for row in self.spends.values():
            self.by_team[int(row["team"])].append(row)
        claim = final.get("isolation") or {}
        self.level, self.expect = str(claim.get("level", "")), str(claim.get("expect", ""))
        self.incomplete = frozenset(incomplete_processes)

    def from_incomplete_process(self, op_id: str) -> bool:
        return op_id.rpartition("-")[0] in self.incomplete

    def who(self, row: Mapping[str, Any]) -> dict[str, Any]:
        op = self.ops.get(row["op_id"], {})
        return {"op_id": row["op_id"], "agent": row["agent"], "outcome": op.get("outcome", "not in the history"),
                "member": row["member"], "amount": row["amount"], "read_wallets": row["seen"],
                "read_total": sum(row["seen"]), "wallet_before": row["before"], "wallet_after": row["after"]}


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


def _unseen(x: Mapping[str, Any], y: Mapping[str, Any]) -> bool:
    """Spend *x* did not see spend *y*: what it read of *y*'s wallet is older than *y*'s write."""
    seen = x["seen"]
    m = int(y["member"]) - 1
    return m >= len(seen) or int(seen[m]) < int(y["after"])


def skew_pairs(rows: list[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """The pairs of applied spends of one team of which neither saw the other."""
    return [(x, y) for x, y in combinations(sorted(rows, key=lambda r: int(r["seq"])), 2)
            if _unseen(x, y) and _unseen(y, x)]


def within_limit(v: BudgetView) -> CheckResult:
    """No team's wallets add up to more than its limit; a team over it names the spends that did not see each
    other (the write skew) as evidence."""
    name = "budget.limit"
    if not v.has_state:
        return result(name, UNKNOWN, {}, None, "not checked: needs the teams, wallets and ledger in the final state")
    totals: dict[int, int] = defaultdict(int)
    for (team, _), spent in v.wallets.items():
        totals[team] += spent
    ev = Evidence()
    over = 0
    pairs_total = 0
    for team, total in sorted(totals.items()):
        limit = v.limits.get(team)
        if limit is None or total <= limit:
            continue
        over += 1
        pairs = skew_pairs(v.by_team.get(team, []))
        pairs_total += len(pairs)
        ev.add({"team": team, "limit": limit, "total": total, "over_by": total - limit,
                "skew": [{"kind": "write skew (G2-item)" if x["member"] != y["member"] else
                          "check-then-act on one wallet (lost update)", "ops": [v.who(x), v.who(y)],
                          "what": "neither saw the other's spend: each checked the limit against a total without "
                                  "the other, and together they exceed it"} for x, y in pairs[:3]]})
    counts = {"teams": len(totals), "teams_over_limit": over, "skew_pairs": pairs_total,
              "applied_spends": len(v.spends)}
    if over:
        first = ev.items[0]
        ops = [o["op_id"] for o in first["skew"][0]["ops"]] if first["skew"] else []
        named = f": {' and '.join(ops)} did not see each other" if ops else ""
        return result(name, False, counts, ev, f"{over} team(s) over their limit (team {first['team']}: "
                                               f"{first['total']} > {first['limit']}{named})")
    return result(name, True, counts, ev, "every team is within its limit")


def ledger(v: BudgetView) -> CheckResult:
    """Ledger rows match ok spends one to one, and every wallet holds the sum of its ledger rows."""
    name = "budget.ledger"
    if not v.has_state:
        return result(name, UNKNOWN, {}, None, "not checked: needs the wallets and ledger in the final state")
    ev = Evidence()
    counts: dict[str, Any] = {"ops": len(v.ops), "ledger_rows": len(v.spends), "missing": 0, "phantom": 0,
                              "wallet_mismatch": 0, "duplicate_op_ids": len(v.duplicate_ids), "unknown_applied": 0,
                              "unknown_not_applied": 0, "rows_from_incomplete_history": 0}
    for op_id in v.duplicate_ids:
        ev.add({"op_id": op_id, "what": "op id recorded twice in the history"})
    for op_id, op in v.ops.items():
        row = v.spends.get(op_id)
        if op["outcome"] == OK and row is None:
            counts["missing"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "args": op["args"],
                    "what": "acknowledged (ok) but no ledger row: its spend is missing"})
        elif op["outcome"] == FAIL and row is not None:
            counts["phantom"] += 1
            ev.add({"op_id": op_id, "agent": op["agent"], "reason": op.get("reason"),
                    "what": "reported failed, but its spend was applied"})
        elif op["outcome"] not in (OK, FAIL):
            counts["unknown_applied" if row is not None else "unknown_not_applied"] += 1
    for op_id in v.spends:
        if op_id in v.ops:
            continue
        if v.from_incomplete_process(op_id):
            counts["rows_from_incomplete_history"] += 1
        else:
            counts["phantom"] += 1
            ev.add({"op_id": op_id, "what": "ledger row of a spend no agent recorded"})
    sums: dict[tuple[int, int], int] = defaultdict(int)
    for row in v.spends.values():
        sums[(int(row["team"]), int(row["member"]))] += int(row["amount"])
    for wallet, spent in sorted(v.wallets.items()):
        if spent != sums.get(wallet, 0):
            counts["wallet_mismatch"] += 1
            ev.add({"team": wallet[0], "member": wallet[1], "spent": spent, "ledger_sum": sums.get(wallet, 0),
                    "what": "the wallet does not hold the sum of its ledger rows"})
    if ev:
        return result(name, False, counts, ev, "ledger, history and wallets disagree")
    if counts["rows_from_incomplete_history"]:
        return result(name, UNKNOWN, counts, ev, "ledger rows of a process whose history is incomplete")
    return result(name, True, counts, ev, "every ok spend has its ledger row, no other does, every wallet adds up")


def transactions(v: BudgetView) -> tuple[list[Txn], dict[str, list[tuple[int, str]]]]:
    """The applied spends as transactions for :func:`checks.graph.analyse`: each read every wallet of its team and
    wrote its own; a wallet's versions are its ``spent`` values, in order."""
    committed: list[Txn] = []
    versions: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in sorted(v.spends.values(), key=lambda r: int(r["seq"])):
        team = row["team"]
        mops: list[tuple[str, str, int]] = [("r", f"team {team} wallet {m}", int(s))
                                            for m, s in enumerate(row["seen"], start=1)]
        key = f"team {team} wallet {row['member']}"
        mops.append(("w", key, int(row["after"])))
        committed.append((row["op_id"], mops))
        versions[key].append((int(row["after"]), row["op_id"]))
    for rows in versions.values():
        rows.sort()
    return committed, versions


def isolation(v: BudgetView) -> CheckResult:
    """The spends' dependency graph: what the claimed model forbids makes it false."""
    name = "budget.isolation"
    if not v.has_state:
        return result(name, UNKNOWN, {}, None, "not checked: needs the ledger in the final state")
    committed, versions = transactions(v)
    agents = {r["op_id"]: r["agent"] for r in v.spends.values()}
    analysis = analyse(committed, versions, initial=0, describe=lambda op_id: {"agent": agents.get(op_id)})
    return isolation_check(name, analysis, v.level, v.expect)


SPEC = Checks(
    view=BudgetView,
    checks=(("budget.limit", within_limit), ("budget.ledger", ledger), ("budget.isolation", isolation)),
)
