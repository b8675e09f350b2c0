"""Checks of the credits scenario: conservation, no negative balance, ledger ↔ history, lost updates.

Inputs: the ``deduct`` operations of the history, and the final state captured by
:func:`toolclash.tools.credits.snapshot` (``credit_accounts`` and ``credit_ledger``).
The ledger is written in the same transaction as the balance, so its op ids tell which
in-doubt (``unknown``) calls took effect; an ``unknown`` call only makes a verdict unknown
where it cannot be resolved that way and could explain a difference.

A platform pointed at with ``--target`` may offer less (``final["columns"]`` lists what it mapped): balances
only → conservation (in-doubt calls left unknown where they could explain a difference) and no_negative; a
ledger keyed by op id → ledger (missing, phantom and doubly applied effects); balances before and after with
the commit order → lost updates, op by op. A check without its data says "not checked: needs …" (unknown).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, by_op_id, result, run_checks
from toolclash.history import FAIL, OK
from toolclash.targets.shape import provided

TOOL = "deduct"


class CreditsView:
    """Indexes built once and shared by the checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.ops, self.duplicate_ids = by_op_id(ops, TOOL)
        self.accounts = {int(a["id"]): a for a in final.get("credit_accounts", [])}
        self.has_accounts = "credit_accounts" in final
        self.seeded: int | None = final.get("accounts_seeded")
        """Accounts the reset seeded (ids 1..n); None when the final state does not say."""
        self.has_ledger = "credit_ledger" in final
        self._columns = {key: provided(final, key) for key in ("credit_accounts", "credit_ledger")}
        self.ledger: dict[str, Mapping[str, Any]] = {}
        self.applied_twice: dict[str, int] = defaultdict(int)
        """Op id → ledger rows beyond the first (a retried request the platform applied again)."""
        self.ledger_rows: list[Mapping[str, Any]] = list(final.get("credit_ledger", []))
        """Every ledger row, a call applied twice included (``ledger`` keeps the first per op id)."""
        for r in self.ledger_rows:
            if r["op_id"] in self.ledger:
                self.applied_twice[r["op_id"]] += 1
            self.ledger.setdefault(r["op_id"], r)
        self.incomplete = frozenset(incomplete_processes)

    def has(self, key: str, *columns: str) -> bool:
        """The final state holds table *key* with *columns* (toolclash's own tools: every column)."""
        if key not in ("credit_accounts", "credit_ledger") or not (self.has_accounts if key == "credit_accounts"
                                                                   else self.has_ledger):
            return False
        cols = self._columns[key]
        return cols is None or set(columns) <= cols

    def from_incomplete_process(self, op_id: str) -> bool:
        return op_id.rpartition("-")[0] in self.incomplete


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


def not_checked(name: str, needs: str) -> CheckResult:
    """A check whose data the final state does not hold: unknown, never valid."""
    return result(name, UNKNOWN, {}, None, f"not checked: needs {needs}")


def _subset_sum_reaches(amounts: Sequence[int], target: int) -> bool:
    """True if some subset of *amounts* (positive ints) sums to *target* exactly."""
    if target == 0:
        return True
    if target < 0 or target > sum(amounts):
        return False
    reach = 1
    for a in amounts:
        reach |= reach << a
    return bool((reach >> target) & 1)


def conservation(v: CreditsView) -> CheckResult:
    """initial − Σ ok deductions (− in-doubt ones the ledger shows applied) = final, per account."""
    name = "credits.conservation"
    if not v.has("credit_accounts", "balance", "initial_balance"):
        return not_checked(name, "the accounts' balances and initial balances (final state table accounts)")
    ok_total: dict[int, int] = defaultdict(int)
    applied_unknown: dict[int, int] = defaultdict(int)
    unresolved: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for op in v.ops.values():
        acct, amount = int(op["args"]["account"]), int(op["args"]["amount"])
        if op["outcome"] == OK:
            ok_total[acct] += amount
        elif op["outcome"] != FAIL:
            if v.has_ledger:
                if op["op_id"] in v.ledger:
                    applied_unknown[acct] += amount
            else:
                unresolved[acct].append((op["op_id"], amount))
    for op_id, row in v.ledger.items():  # applied ops of a process whose history never arrived: in doubt
        if op_id not in v.ops and v.from_incomplete_process(op_id):
            applied_unknown[int(row["account_id"])] += int(row["amount"])
    ev = Evidence()
    explainable = 0
    seeded = set(range(1, int(v.seeded) + 1)) if v.seeded is not None else set()
    missing = sorted((seeded | set(ok_total) | set(applied_unknown) | set(unresolved)) - set(v.accounts))
    for acct in missing:  # an account the reset seeded, or one charged, is gone from the final state
        ev.add({"account": acct, "ok_deducted": ok_total.get(acct, 0), "seeded": acct in seeded,
                "what": "absent from the final state: its balance cannot be accounted for"})
    for acct, row in sorted(v.accounts.items()):
        expected = int(row["initial_balance"]) - ok_total[acct] - applied_unknown[acct]
        final = int(row["balance"])
        diff = expected - final  # > 0: more was taken than acknowledged
        if diff == 0:
            continue
        doubt = unresolved.get(acct, [])
        if doubt and _subset_sum_reaches([a for _, a in doubt], diff):
            explainable += 1
            ev.add({"account": acct, "expected": expected, "final": final, "difference": diff,
                    "explained_by_unknown_ops": [o for o, _ in doubt][:10]})
            continue
        what = ("more credits were taken than acknowledged deductions account for" if diff > 0 else
                "acknowledged deductions are missing from the balance (lost updates)")
        ev.add({"account": acct, "initial": int(row["initial_balance"]), "ok_deducted": ok_total[acct],
                "unknown_applied": applied_unknown[acct], "expected": expected, "final": final,
                "difference": -diff, "what": what})
    counts = {"accounts": len(v.accounts), "mismatched": ev.total - explainable, "explainable_by_unknown": explainable,
              "missing_accounts": len(missing), "accounts_seeded": v.seeded}
    if ev.total > explainable:
        return result(name, False, counts, ev, f"{ev.total - explainable} account(s) do not balance"
                      + (f" ({len(missing)} missing from the final state)" if missing else ""))
    if explainable:
        return result(name, UNKNOWN, counts, ev, "differences could be in-doubt operations")
    return result(name, True, counts, ev, "every account balances")


def no_negative(v: CreditsView) -> CheckResult:
    """No account ends below zero and no applied deduction left a negative balance."""
    name = "credits.no_negative"
    per_row = v.has("credit_ledger", "balance_after")
    if not v.has("credit_accounts", "balance") and not per_row:
        return not_checked(name, "the accounts' balances (table accounts) or the ledger's balance_after")
    ev = Evidence()
    for acct, row in sorted(v.accounts.items()):
        if int(row["balance"]) < 0:
            ev.add({"account": acct, "final_balance": int(row["balance"])})
    negative_rows = 0
    for row in v.ledger.values() if per_row else ():
        if int(row["balance_after"]) < 0:
            negative_rows += 1
            ev.add({"op_id": row["op_id"], "account": row["account_id"], "amount": row["amount"],
                    "balance_after": row["balance_after"], "agent": row.get("agent")})
    counts = {"accounts": len(v.accounts), "negative_accounts": ev.total - negative_rows,
              "deductions_below_zero": negative_rows}
    if ev:
        return result(name, False, counts, ev, "a balance went below zero")
    return result(name, True, counts, ev, "no balance below zero")


def ledger_matches_history(v: CreditsView) -> CheckResult:
    """Ledger rows match ok ops one to one: no ok op without its row, no row of a failed or unknown-to-us op."""
    name = "credits.ledger"
    if not v.has_ledger:
        return not_checked(name, "a ledger keyed by op id (final state table ledger)")
    ev = Evidence()
    counts = {"ops": len(v.ops), "ledger_rows": len(v.ledger), "missing": 0, "phantom": 0, "mismatch": 0,
              "duplicate_op_ids": len(v.duplicate_ids), "unknown_applied": 0, "unknown_not_applied": 0,
              "rows_from_incomplete_history": 0, "applied_more_than_once": len(v.applied_twice)}
    for op_id in v.duplicate_ids:
        ev.add({"op_id": op_id, "what": "op id recorded twice in the history"})
    for op_id, extra in sorted(v.applied_twice.items()):
        op = v.ops.get(op_id, {})
        ev.add({"op_id": op_id, "applied": extra + 1, "outcome": op.get("outcome", "not in history"),
                "attempts": op.get("attempts"),
                "what": "one call applied more than once (a retry with the same op id was applied again)"})
    for op_id, op in v.ops.items():
        row = v.ledger.get(op_id)
        outcome = op["outcome"]
        if outcome == OK and row is None:
            counts["missing"] += 1
            ev.add({"op_id": op_id, "what": "acknowledged (ok) but no ledger row: its effect is missing",
                    "agent": op["agent"], "args": op["args"]})
        elif outcome == FAIL and row is not None:
            counts["phantom"] += 1
            ev.add({"op_id": op_id, "what": f"reported fail ({op.get('reason')}) but its ledger row exists",
                    "agent": op["agent"], "ledger_seq": row.get("seq")})
        elif outcome not in (OK, FAIL):
            counts["unknown_applied" if row is not None else "unknown_not_applied"] += 1
        if row is not None and (int(row["account_id"]) != int(op["args"]["account"])
                                or int(row["amount"]) != int(op["args"]["amount"])):
            counts["mismatch"] += 1
            ev.add({"op_id": op_id, "what": "ledger row differs from the call's arguments",
                    "args": op["args"], "ledger": {"account": row["account_id"], "amount": row["amount"]}})
    doubtful = 0
    for op_id, row in v.ledger.items():
        if op_id in v.ops:
            continue
        if v.from_incomplete_process(op_id):
            doubtful += 1
            continue
        counts["phantom"] += 1
        ev.add({"op_id": op_id, "what": "ledger row of an operation no agent recorded", "ledger_seq": row.get("seq")})
    counts["rows_from_incomplete_history"] = doubtful
    if ev:
        return result(name, False, counts, ev, "ledger and history disagree")
    if doubtful:
        return result(name, UNKNOWN, counts, ev, f"{doubtful} ledger row(s) from a process whose history is incomplete")
    return result(name, True, counts, ev, "every ok op has exactly one ledger row and no other op has one")


def lost_updates(v: CreditsView) -> CheckResult:
    """Name the applied deductions whose effect was overwritten by a concurrent writer.

    Every strategy updates the account row before it inserts its ledger row, and the row lock
    is held until COMMIT, so per account the ledger's ``seq`` order is the commit order. The
    balance that survives is the last writer's; walking back from it through "the latest
    earlier row that wrote the balance this one read" gives the chain of deductions whose
    effects are in the final balance. Every other applied deduction was overwritten: a lost
    update. Its evidence names the op that committed right after it and what that op had read.
    """
    name = "credits.lost_updates"
    if not v.has("credit_ledger", "balance_before", "balance_after", "seq"):
        return not_checked(name, "ledger columns balance_before, balance_after and seq (the commit order)")
    rows_by_account: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in v.ledger_rows:
        rows_by_account[int(row["account_id"])].append(row)
    ev = Evidence()
    lost_credits = 0
    broken: list[int] = []
    for acct, rows in sorted(rows_by_account.items()):
        rows.sort(key=lambda r: int(r["seq"]))
        initial = v.accounts.get(acct, {}).get("initial_balance")
        if all(a["balance_after"] == b["balance_before"] for a, b in pairwise(rows)):
            # the common case: one unbroken chain, every deduction survives
            if initial is not None and int(rows[0]["balance_before"]) != int(initial):
                broken.append(acct)
            continue
        wrote: dict[int, list[int]] = defaultdict(list)  # balance written -> row indexes, ascending
        for idx, row in enumerate(rows):
            wrote[int(row["balance_after"])].append(idx)
        survivors: set[int] = set()
        cur: int | None = len(rows) - 1
        while cur is not None:
            survivors.add(cur)
            candidates = wrote.get(int(rows[cur]["balance_before"]), [])
            k = bisect_left(candidates, cur) - 1
            cur = candidates[k] if k >= 0 else None
        first = rows[min(survivors)]
        if initial is not None and int(first["balance_before"]) != int(initial):
            broken.append(acct)
        for i, row in enumerate(rows):
            if i in survivors:
                continue
            lost_credits += int(row["amount"])
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            op = v.ops.get(row["op_id"], {})
            ev.add({"op_id": row["op_id"], "account": acct, "amount": int(row["amount"]), "agent": row.get("agent"),
                    "outcome": op.get("outcome", "not in history"), "read_balance": int(row["balance_before"]),
                    "wrote_balance": int(row["balance_after"]),
                    "overwritten_by": nxt["op_id"] if nxt else None,
                    "which_had_read": int(nxt["balance_before"]) if nxt else None,
                    "what": "committed, but the next writer had read an older balance and overwrote it"})
    counts = {"applied_deductions": len(v.ledger_rows), "lost_updates": ev.total, "lost_credits": lost_credits,
              "accounts_with_broken_chain": broken}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} lost update(s), {lost_credits} credits")
    if broken:
        return result(name, False, counts, ev, "a balance chain does not start at the initial balance")
    return result(name, True, counts, ev, "every applied deduction is in the surviving balance chain")


SPEC = Checks(
    view=CreditsView,
    checks=(("credits.conservation", conservation), ("credits.no_negative", no_negative),
            ("credits.ledger", ledger_matches_history), ("credits.lost_updates", lost_updates)),
    columnar="checks.credits_fast",
)
