"""The credits checks over columns: the results of :mod:`checks.credits` (same verdicts, same counts, same evidence
in the same order), computed with joins, group-bys and window comparisons over Arrow and numpy arrays instead of
a Python object per operation.

* op ids of the history and the ledger get one whole-number code each (``<process>-<n>`` parsed as numbers, in
  blocks; other op ids by Arrow's dictionary encoding, :func:`checks.parse.string_codes`): duplicates, the first
  ledger row of each op id and the history ↔ ledger join are array lookups;
* conservation and no_negative are group sums per account;
* the ledger check is masks over the joined rows; evidence is built only for the first items of each kind;
* lost updates: the ledger sorted by (account, seq); an account whose chain is unbroken (every ``balance_before``
  equals the previous ``balance_after``) is checked by one comparison, and only an account with a break is walked
  back from its last row (the walk of :func:`checks.credits.lost_updates`, with "the latest earlier row that wrote
  the balance this one read" found by a sorted search).

:func:`columnar` declines (None) whenever the data is not in the shape this handles exactly — a final state from a
``--target`` (``columns``), a value of another type than the tools write (a string amount), a missing column —
and the verdict then runs :mod:`checks.credits` itself. ``tests/test_credits_fast.py`` compares both on random
histories with planted anomalies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from checks import EVIDENCE_CAP, UNKNOWN, CheckResult, result
from checks.columns import (
    FinalState,
    chain,
    evidence,
    int_arguments,
    numpy,
    one,
    record,
    select,
    table_of_records,
)
from checks.credits import TOOL, _subset_sum_reaches, not_checked
from checks.parse import string_codes
from toolclash.history import FAIL, OK
from toolclash.targets.shape import COLUMNS_KEY

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

ACCOUNTS, LEDGER = "credit_accounts", "credit_ledger"
ACCOUNT_INTS = ("id", "balance", "initial_balance")
LEDGER_INTS = ("seq", "account_id", "amount", "balance_before", "balance_after")
LIMIT = 2**60
"""Values, and sums of amounts, stay below this (int64 arithmetic is then exact: initial − Σ amounts − Σ amounts
stays within 64 bits; beyond, the checks over Python ints decide)."""


log = logging.getLogger("toolclash.checks")


class Declined(Exception):
    """The data is not in a shape the columnar checks handle exactly."""


def columnar(ops: pa.Table, final: FinalState, incomplete: frozenset[str]) -> list[CheckResult] | None:
    """The four credits checks, or None when the columnar path declines (see the module's documentation)."""
    try:
        d = Data(ops, final, incomplete)
        return [conservation(d), no_negative(d), ledger_matches_history(d), lost_updates(d)]
    except Declined:
        return None
    except Exception:  # whatever went wrong here, the checks over records give the verdict
        log.exception("the columnar credits checks failed; judging over records")
        return None


def check_all(ops: Iterable[Mapping[str, Any]], final: Any, incomplete_processes: Iterable[str] = ()
              ) -> list[CheckResult] | None:
    """:func:`checks.credits.check_all` over columns (None: the columnar path declines), for records in memory."""
    table = table_of_records(ops)
    if table.column("raw").null_count != table.num_rows:
        return None
    return columnar(table, FinalState.of(final), frozenset(incomplete_processes))


def _ints(table: pa.Table, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    import pyarrow as pa

    out = {}
    for name in names:
        if name not in table.column_names:
            raise Declined(f"no column {name}")
        col = table.column(name)
        if col.type != pa.int64() or col.null_count:
            raise Declined(f"column {name} is not whole numbers")
        out[name] = numpy(col)
    return out


def _strings(table: pa.Table, name: str, *, nulls: bool = False, whole: bool = True) -> Any:
    """A text column: one array (*whole*), or as it is (in chunks: read chunk by chunk, or a row at a time)."""
    import pyarrow as pa

    if name not in table.column_names:
        raise Declined(f"no column {name}")
    col = table.column(name)
    if col.type != pa.string() or (col.null_count and not nulls):
        raise Declined(f"column {name} is not text")
    return one(col) if whole else col


class Data:
    """The history's deduct operations and the final state as arrays, deduplicated and joined as
    :class:`checks.credits.CreditsView` indexes them."""

    def __init__(self, table: pa.Table, final: FinalState, incomplete: frozenset[str]) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if not final.is_mapping or isinstance(final.get(COLUMNS_KEY), Mapping):
            raise Declined("a target's final state")
        self.incomplete = incomplete
        ops = select(table, (TOOL,))
        args = int_arguments(ops, ("account", "amount"))
        if args is None:
            raise Declined("arguments of another shape")
        self.ops = ops
        op_ids = _strings(ops, "op_id")
        n = len(op_ids)
        # -- the final state
        self.has_accounts = ACCOUNTS in final
        self.has_ledger = LEDGER in final
        self.seeded: int | None = final.get("accounts_seeded")
        """Accounts the reset seeded (ids 1..n); None when the final state does not say."""
        acc = self._table(final, ACCOUNTS)
        led = self._table(final, LEDGER)
        a = _ints(acc, ACCOUNT_INTS) if acc is not None else {k: np.zeros(0, np.int64) for k in ACCOUNT_INTS}
        if len(a["id"]):
            rev = a["id"][::-1]
            self.acc_ids, first = np.unique(rev, return_index=True)  # a later row of the same id wins
            keep = len(rev) - 1 - first
        else:
            self.acc_ids, keep = a["id"], np.zeros(0, np.int64)
        self.balance, self.initial = a["balance"][keep], a["initial_balance"][keep]
        if led is not None:
            lv = _ints(led, LEDGER_INTS)
            # the ledger's text in its chunks (a final state written in pieces): coded chunk by chunk, and evidence
            # reads single rows; combining them copied 0.3 GB per 10M rows
            self.l_ids = _strings(led, "op_id", whole=False)
            self.l_agent = _strings(led, "agent", nulls=True, whole=False) if "agent" in led.column_names else None
        else:
            lv = {k: np.zeros(0, np.int64) for k in LEDGER_INTS}
            self.l_ids, self.l_agent = pa.array([], pa.string()), None
        self.l_seq, self.l_acct, self.l_amount = lv["seq"], lv["account_id"], lv["amount"]
        self.l_before, self.l_after = lv["balance_before"], lv["balance_after"]
        m = len(self.l_ids)
        # -- the history's arguments
        acct, amount = args["account"], args["amount"]
        for values in (amount, self.l_amount):  # summed per account
            if _abs_sum_reaches(values, LIMIT):
                raise Declined("amounts too large for 64-bit sums")
        for values in (acct, self.balance, self.initial, self.l_before, self.l_after):  # compared, subtracted from
            if len(values) and float(_abs_max(values)) >= LIMIT:
                raise Declined("values too large for 64-bit arithmetic")
        # -- one code per op id, shared by the history and the ledger
        codes, u = string_codes([op_ids, self.l_ids])
        h, lc = codes[:n], codes[n:]
        count_h = np.bincount(h, minlength=u)
        rows = np.arange(n)
        outcome = ops.column("outcome")
        ok = numpy(pc.fill_null(pc.equal(outcome, OK), False))
        fail = numpy(pc.fill_null(pc.equal(outcome, FAIL), False))
        if n and count_h.max() > 1:  # an op id recorded twice: the last record counts, at the first one's place
            first_h = np.empty(u, np.int64)
            first_h[h[::-1]] = rows[::-1]
            last_h = np.empty(u, np.int64)
            last_h[h] = rows
            self.dup_ids = op_ids.take(pa.array(np.flatnonzero(first_h[h] != rows))).to_pylist()
            present = np.flatnonzero(count_h)
            self.d = last_h[present[np.argsort(first_h[present], kind="stable")]]
            d_codes = h[self.d]
            self.acct, self.amount = acct[self.d], amount[self.d]
            self.ok, self.fail = ok[self.d], fail[self.d]
        else:  # every record once (always, in a verdict: duplicates send it to the checks over records)
            self.dup_ids = []
            self.d = rows
            d_codes = h
            self.acct, self.amount, self.ok, self.fail = acct, amount, ok, fail
        del count_h
        self.other = ~self.ok & ~self.fail
        # -- the ledger: the first row of each op id counts for the join; later ones are calls applied twice
        count_l = np.bincount(lc, minlength=u)
        lrows = np.arange(m)
        first_l = np.full(u, -1, np.int64)
        if m and count_l.max() > 1:
            first_l[lc[::-1]] = lrows[::-1]
            self.lfirst = np.flatnonzero(first_l[lc] == lrows)
        else:  # no op id twice in the ledger: each row is the first of its op id
            first_l[lc] = lrows
            self.lfirst = lrows
        twice = np.flatnonzero(count_l > 1)
        self.applied_twice = dict(zip(self.l_ids.take(pa.array(first_l[twice])).to_pylist(),
                                      (count_l[twice] - 1).tolist(), strict=True)) if len(twice) else {}
        del count_l
        self.d_lrow = first_l[d_codes]  # -1: no ledger row
        del first_l
        pos_in_d = np.full(u, -1, np.int64)
        pos_in_d[d_codes] = rows if self.d is rows else np.arange(len(self.d))
        self.l_in_d = pos_in_d[lc]
        """Each ledger row's position in the deduplicated history (-1: its op is not there)."""
        self.ledger_once = self.lfirst is lrows
        """No op id has two ledger rows (:attr:`lfirst` is every row)."""
        self.lfirst_in_d = self.l_in_d if self.ledger_once else self.l_in_d[self.lfirst]

    @staticmethod
    def _table(final: FinalState, key: str) -> pa.Table | None:
        if key not in final or final.rows(key) == 0:
            if key in final and not isinstance(final.get(key, []), list):
                raise Declined(f"{key} is not a list of rows")
            return None
        table = final.table(key)
        if table is None:
            raise Declined(f"{key} is not one table")
        return table

    # -- rows as the checks over Python records see them (only for the evidence's few items)

    def op(self, i: int) -> dict[str, Any]:
        """Record *i* of the deduplicated history (the fields evidence names)."""
        return record(self.ops, int(self.d[i]))

    def lrow(self, j: int) -> dict[str, Any]:
        """Ledger row *j* (the fields evidence names)."""
        return {"op_id": self.l_ids[j].as_py(), "seq": int(self.l_seq[j]), "account_id": int(self.l_acct[j]),
                "amount": int(self.l_amount[j]), "balance_before": int(self.l_before[j]),
                "balance_after": int(self.l_after[j]),
                "agent": self.l_agent[j].as_py() if self.l_agent is not None else None}

    def from_incomplete_process(self, op_id: str) -> bool:
        return op_id.rpartition("-")[0] in self.incomplete

    def unrecorded(self) -> tuple[list[int], list[int]]:
        """Ledger rows (first of their op id) of ops not in the history: (of an incomplete process, the others)."""
        import numpy as np

        rows = self.lfirst[self.lfirst_in_d < 0]
        if not len(rows):
            return [], []
        doubtful: list[int] = []
        phantom: list[int] = []
        for j, op_id in zip(rows.tolist(), self.l_ids.take(np.asarray(rows)).to_pylist(), strict=True):
            (doubtful if self.from_incomplete_process(op_id) else phantom).append(j)
        return doubtful, phantom

    def account_index(self, accounts: np.ndarray) -> np.ndarray:
        """Position of each of *accounts* in :attr:`acc_ids` (-1: not an account of the final state)."""
        import numpy as np

        if not len(self.acc_ids) or not len(accounts):
            return np.full(len(accounts), -1, np.int64)
        lo, hi = int(self.acc_ids[0]), int(self.acc_ids[-1])
        if hi - lo < 4 * len(self.acc_ids) + 1024:  # dense ids (the usual 1..N): a lookup table
            table = np.full(hi - lo + 1, -1, np.int64)
            table[self.acc_ids - lo] = np.arange(len(self.acc_ids))
            inside = (accounts >= lo) & (accounts <= hi)
            out = np.full(len(accounts), -1, np.int64)
            out[inside] = table[accounts[inside] - lo]
            return out
        pos = np.minimum(np.searchsorted(self.acc_ids, accounts), len(self.acc_ids) - 1)
        return np.where(self.acc_ids[pos] == accounts, pos, -1)

    def per_account(self, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Σ *values* per account (*index*: :meth:`account_index` of each value's account)."""
        import numpy as np

        known = index >= 0
        if not known.all():
            index, values = index[known], values[known]
        if not _abs_sum_reaches(values, 2**52):  # float sums of integers are exact here
            sums = np.bincount(index, weights=values, minlength=len(self.acc_ids))
            return sums.astype(np.int64)
        out = np.zeros(len(self.acc_ids), np.int64)
        np.add.at(out, index, values)
        return out


def _abs_max(values: np.ndarray) -> int:
    """max |v| of int64 *values* (exactly, as a Python int; 0 when empty): two passes, no temporary array."""
    if not len(values):
        return 0
    return max(int(values.max()), -int(values.min()))


def _abs_sum_reaches(values: np.ndarray, limit: float) -> bool:
    """Σ |v| of *values*, summed as float64 by numpy, reaches *limit*. Decided without the sum (and its two
    temporary arrays) when even ``len × max |v|`` stays below half the limit: the float sum is then far below it."""
    import numpy as np

    if not len(values):
        return False
    if len(values) * _abs_max(values) < limit / 2:
        return False
    return float(np.abs(values.astype(np.float64)).sum()) >= limit


def _distinct(arrays: list[np.ndarray]) -> np.ndarray:
    """The distinct values of int64 *arrays*, ascending (flags over the values' range when it is small: no sort of
    10M account ids)."""
    import numpy as np

    full = [a for a in arrays if len(a)]
    if not full:
        return np.zeros(0, np.int64)
    lo, hi = min(int(a.min()) for a in full), max(int(a.max()) for a in full)
    if hi - lo >= 1 << 22:
        return np.unique(np.concatenate(full))
    seen = np.zeros(hi - lo + 1, bool)
    for a in full:
        seen[a - lo] = True
    return np.flatnonzero(seen) + lo


def conservation(d: Data) -> CheckResult:
    name = "credits.conservation"
    if not d.has_accounts:
        return not_checked(name, "the accounts' balances and initial balances (final state table accounts)")
    import numpy as np

    index = d.account_index(d.acct)
    ok_total = d.per_account(index, np.where(d.ok, d.amount, 0))  # a zero adds nothing: no gather of 10M rows
    charged = [d.acct[d.ok & (index < 0)]]  # accounts that must be in the final state: charged, or in doubt (of the
    # charged, only those not in the final state can be missing from it)
    doubtful: list[int] = []
    if d.has_ledger:
        applied = d.other & (d.d_lrow >= 0)
        charged.append(d.acct[applied])
        applied_unknown = d.per_account(index[applied], d.amount[applied])
        doubtful, _ = d.unrecorded()
        if doubtful:
            applied_unknown += d.per_account(d.account_index(d.l_acct[doubtful]), d.l_amount[doubtful])
            charged.append(d.l_acct[doubtful])
    else:
        applied_unknown = ok_total * 0
        charged.append(d.acct[d.other])
    seeded = set(range(1, int(d.seeded) + 1)) if d.seeded is not None else set()
    missing = sorted((seeded | set(_distinct(charged).tolist())) - {int(a) for a in d.acc_ids})
    expected = d.initial - ok_total - applied_unknown
    diff = expected - d.balance
    items: list[dict[str, Any]] = []
    total = explainable = 0
    for acct in missing:  # an account the reset seeded, or one charged, is gone from the final state
        total += 1
        if len(items) < EVIDENCE_CAP:
            mine = d.ok & (d.acct == acct)
            items.append({"account": acct, "ok_deducted": int(d.amount[mine].sum()), "seeded": acct in seeded,
                          "what": "absent from the final state: its balance cannot be accounted for"})
    for k in diff.nonzero()[0].tolist():
        acct, exp, fin, dif = int(d.acc_ids[k]), int(expected[k]), int(d.balance[k]), int(diff[k])
        total += 1
        doubt: list[tuple[str, int]] = []
        if not d.has_ledger:
            rows = (d.other & (d.acct == acct)).nonzero()[0]
            if len(rows):
                ids = d.ops.column("op_id").take(d.d[rows]).to_pylist()
                doubt = list(zip(ids, d.amount[rows].tolist(), strict=True))
        if doubt and _subset_sum_reaches([a for _, a in doubt], dif):
            explainable += 1
            item = {"account": acct, "expected": exp, "final": fin, "difference": dif,
                    "explained_by_unknown_ops": [o for o, _ in doubt][:10]}
        else:
            what = ("more credits were taken than acknowledged deductions account for" if dif > 0 else
                    "acknowledged deductions are missing from the balance (lost updates)")
            item = {"account": acct, "initial": int(d.initial[k]), "ok_deducted": int(ok_total[k]),
                    "unknown_applied": int(applied_unknown[k]), "expected": exp, "final": fin, "difference": -dif,
                    "what": what}
        if len(items) < EVIDENCE_CAP:
            items.append(item)
    ev = evidence(total, iter(items))
    counts = {"accounts": len(d.acc_ids), "mismatched": total - explainable, "explainable_by_unknown": explainable,
              "missing_accounts": len(missing), "accounts_seeded": d.seeded}
    if total > explainable:
        return result(name, False, counts, ev, f"{total - explainable} account(s) do not balance"
                      + (f" ({len(missing)} missing from the final state)" if missing else ""))
    if explainable:
        return result(name, UNKNOWN, counts, ev, "differences could be in-doubt operations")
    return result(name, True, counts, ev, "every account balances")


def no_negative(d: Data) -> CheckResult:
    name = "credits.no_negative"
    per_row = d.has_ledger
    if not d.has_accounts and not per_row:
        return not_checked(name, "the accounts' balances (table accounts) or the ledger's balance_after")
    import numpy as np

    negative_acc = (d.balance < 0).nonzero()[0]
    if not per_row:
        negative_rows = d.lfirst[:0]
    elif d.ledger_once:
        negative_rows = np.flatnonzero(d.l_after < 0)
    else:
        negative_rows = d.lfirst[d.l_after[d.lfirst] < 0]

    def accounts() -> Iterator[dict[str, Any]]:
        for k in negative_acc.tolist():
            yield {"account": int(d.acc_ids[k]), "final_balance": int(d.balance[k])}

    def rows() -> Iterator[dict[str, Any]]:
        for j in negative_rows.tolist():
            row = d.lrow(j)
            yield {"op_id": row["op_id"], "account": row["account_id"], "amount": row["amount"],
                   "balance_after": row["balance_after"], "agent": row["agent"]}

    ev = chain((len(negative_acc), accounts()), (len(negative_rows), rows()))
    counts = {"accounts": len(d.acc_ids), "negative_accounts": len(negative_acc),
              "deductions_below_zero": len(negative_rows)}
    if ev:
        return result(name, False, counts, ev, "a balance went below zero")
    return result(name, True, counts, ev, "no balance below zero")


def ledger_matches_history(d: Data) -> CheckResult:
    name = "credits.ledger"
    if not d.has_ledger:
        return not_checked(name, "a ledger keyed by op id (final state table ledger)")
    has_row = d.d_lrow >= 0
    lrow = d.d_lrow[has_row]
    mismatch = has_row.copy()
    mismatch[has_row] = (d.l_acct[lrow] != d.acct[has_row]) | (d.l_amount[lrow] != d.amount[has_row])
    missing = d.ok & ~has_row
    phantom = d.fail & has_row
    doubtful, unrecorded = d.unrecorded()
    counts = {"ops": len(d.d), "ledger_rows": len(d.lfirst), "missing": int(missing.sum()),
              "phantom": int(phantom.sum()) + len(unrecorded), "mismatch": int(mismatch.sum()),
              "duplicate_op_ids": len(d.dup_ids), "unknown_applied": int((d.other & has_row).sum()),
              "unknown_not_applied": int((d.other & ~has_row).sum()), "rows_from_incomplete_history": len(doubtful),
              "applied_more_than_once": len(d.applied_twice)}
    by_id: dict[str, int] = {}
    if d.applied_twice:
        ids = d.ops.column("op_id").take(d.d).to_pylist()
        by_id = {op_id: i for i, op_id in enumerate(ids)}

    def twice() -> Iterator[dict[str, Any]]:
        for op_id, extra in sorted(d.applied_twice.items()):
            op = d.op(by_id[op_id]) if op_id in by_id else {}
            yield {"op_id": op_id, "applied": extra + 1, "outcome": op.get("outcome", "not in history"),
                   "attempts": op.get("attempts"),
                   "what": "one call applied more than once (a retry with the same op id was applied again)"}

    def per_op() -> Iterator[dict[str, Any]]:
        for i in (missing | phantom | mismatch).nonzero()[0].tolist():
            op = d.op(i)
            row = d.lrow(int(d.d_lrow[i])) if has_row[i] else None
            if missing[i]:
                yield {"op_id": op["op_id"], "what": "acknowledged (ok) but no ledger row: its effect is missing",
                       "agent": op["agent"], "args": op["args"]}
            elif phantom[i] and row is not None:
                yield {"op_id": op["op_id"], "what": f"reported fail ({op['reason']}) but its ledger row exists",
                       "agent": op["agent"], "ledger_seq": row["seq"]}
            if mismatch[i] and row is not None:
                yield {"op_id": op["op_id"], "what": "ledger row differs from the call's arguments",
                       "args": op["args"], "ledger": {"account": row["account_id"], "amount": row["amount"]}}

    def phantoms() -> Iterator[dict[str, Any]]:
        for j in unrecorded:
            row = d.lrow(j)
            yield {"op_id": row["op_id"], "what": "ledger row of an operation no agent recorded",
                   "ledger_seq": row["seq"]}

    ev = chain((len(d.dup_ids), ({"op_id": i, "what": "op id recorded twice in the history"} for i in d.dup_ids)),
               (len(d.applied_twice), twice()),
               (counts["missing"] + int(phantom.sum()) + counts["mismatch"], per_op()),
               (len(unrecorded), phantoms()))
    if ev:
        return result(name, False, counts, ev, "ledger and history disagree")
    if doubtful:
        return result(name, UNKNOWN, counts, ev,
                      f"{len(doubtful)} ledger row(s) from a process whose history is incomplete")
    return result(name, True, counts, ev, "every ok op has exactly one ledger row and no other op has one")


def lost_updates(d: Data) -> CheckResult:
    import numpy as np

    name = "credits.lost_updates"
    if not d.has_ledger:
        return not_checked(name, "ledger columns balance_before, balance_after and seq (the commit order)")
    m = len(d.l_ids)
    order = _account_seq_order(d.l_acct, d.l_seq)
    acct, before, after = d.l_acct[order], d.l_before[order], d.l_after[order]
    starts = np.flatnonzero(np.r_[True, acct[1:] != acct[:-1]]) if m else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], m] if m else starts
    cut = np.r_[False, (after[:-1] != before[1:]) & (acct[1:] == acct[:-1])] if m else np.zeros(0, bool)
    at = np.flatnonzero(cut)  # the few rows where a chain breaks, counted per account
    breaks = np.bincount(np.searchsorted(starts, at, side="right") - 1, minlength=len(starts))
    pos = np.minimum(np.searchsorted(d.acc_ids, acct[starts]), max(len(d.acc_ids) - 1, 0))
    known = (d.acc_ids[pos] == acct[starts]) if len(d.acc_ids) else np.zeros(len(starts), bool)
    lost = np.zeros(m, bool)  # in sorted order
    broken: list[int] = []
    for g, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        first = s
        if breaks[g]:
            survivors = _survivors(before[s:e], after[s:e])
            lost[s:e] = ~survivors
            first = s + int(np.argmax(survivors))
        if known[g] and int(before[first]) != int(d.initial[pos[g]]):
            broken.append(int(acct[s]))
    lost_rows = order[lost]
    lost_credits = int(d.l_amount[lost_rows].sum()) if len(lost_rows) else 0
    outcome_of = d.ops.column("outcome")

    def items() -> Iterator[dict[str, Any]]:
        for k in np.flatnonzero(lost).tolist():
            j = int(order[k])
            row = d.lrow(j)
            nxt = d.lrow(int(order[k + 1])) if k + 1 < m and acct[k + 1] == acct[k] else None
            at = int(d.l_in_d[j])
            out = outcome_of[int(d.d[at])].as_py() if at >= 0 else "not in history"
            yield {"op_id": row["op_id"], "account": int(acct[k]), "amount": row["amount"], "agent": row["agent"],
                   "outcome": out, "read_balance": row["balance_before"], "wrote_balance": row["balance_after"],
                   "overwritten_by": nxt["op_id"] if nxt else None,
                   "which_had_read": nxt["balance_before"] if nxt else None,
                   "what": "committed, but the next writer had read an older balance and overwrote it"}

    ev = evidence(len(lost_rows), items())
    counts = {"applied_deductions": m, "lost_updates": ev.total, "lost_credits": lost_credits,
              "accounts_with_broken_chain": broken}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} lost update(s), {lost_credits} credits")
    if broken:
        return result(name, False, counts, ev, "a balance chain does not start at the initial balance")
    return result(name, True, counts, ev, "every applied deduction is in the surviving balance chain")


def _account_seq_order(acct: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Ledger rows sorted by account, then seq, ties in the ledger's order (as a stable sort by seq per account)."""
    import numpy as np

    m = len(acct)
    if m and bool((seq[1:] > seq[:-1]).all()):  # the snapshot's ORDER BY seq: a stable sort by account suffices
        lo, hi = int(acct.min()), int(acct.max())
        if hi - lo < 2**15:  # account ids within a small range: a radix sort of 16-bit keys
            return np.argsort((acct - lo).astype(np.int16), kind="stable")
        return np.argsort(acct, kind="stable")
    return np.lexsort((np.arange(m), seq, acct))


def _survivors(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Which rows of one account (in commit order) are in the surviving chain: walking back from the last row
    through "the latest earlier row that wrote the balance this one read" (:func:`checks.credits.lost_updates`)."""
    import numpy as np

    n = len(before)
    _, codes = np.unique(np.r_[after, before], return_inverse=True)  # balances as small numbers
    c_after, c_before = codes[:n], codes[n:]
    keys = np.sort(c_after * (n + 1) + np.arange(n))  # (balance written, row) in order
    found = np.searchsorted(keys, c_before * (n + 1) + np.arange(n)) - 1  # the latest write before each row
    ok = found >= 0
    prev = np.full(n, -1, np.int64)
    hit = keys[found[ok]]
    prev[ok] = np.where(hit // (n + 1) == c_before[ok], hit % (n + 1), -1)
    survivors = np.zeros(n, bool)
    chain_prev = prev.tolist()
    cur = n - 1
    while cur >= 0:
        survivors[cur] = True
        cur = chain_prev[cur]
    return survivors
