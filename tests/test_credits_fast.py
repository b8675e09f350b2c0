"""The columnar credits checks and verdict against the checks over Python records, on random histories with planted
anomalies (lost updates, phantom and missing ledger rows, negative balances, in-doubt calls that did or did not take
effect, incomplete processes, duplicate op ids, calls applied twice, rows that differ from the call): the same
verdicts, counts and evidence, in the same order. And the byte-level parsers the columnar path uses, against orjson
and Python's own string comparison."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checks import columns, credits_fast, parse
from checks import credits as cc
from checks.columns import FinalState, table_of_records
from checks.verdict import evaluate
from toolclash import columnar
from toolclash.columnar import write_final
from toolclash.history import HistoryWriter
from toolclash.run import write_json
from toolclash.settings import Settings

RUN_ID = "t-credits-fast"
PROCESSES = ("p1", "p2", "host-a-w1")
KINDS = ("ok", "ok", "ok", "rejected", "gave_up", "unknown_applied", "unknown_not_applied", "missing", "phantom",
         "lost", "negative", "mismatch", "twice", "unrecorded", "duplicate")


def op(process: str, n: int, outcome: str, account: int, amount: int, *, reason: str | None = None,
       error_class: str | None = None, attempts: int = 1, result: dict[str, Any] | None = None,
       invoke: float = 0.0) -> dict[str, Any]:
    invoke_ts = 1_700_000_000.0 + invoke
    return {"run_id": RUN_ID, "op_id": f"{process}-{n}", "process": process, "agent": f"{process}-a{n % 3}",
            "tool": "deduct", "strategy": "atomic", "args": {"account": account, "amount": amount},
            "invoke_ts": invoke_ts, "complete_ts": invoke_ts + 0.001 * (1 + n % 7), "outcome": outcome,
            "attempts": attempts, "error_class": error_class, "reason": reason, "result": result or {}}


@st.composite
def histories(draw: Any) -> tuple[list[dict[str, Any]], dict[str, Any], frozenset[str]]:
    """A credits history and final state, with anomalies of the kinds above planted at random."""
    accounts = draw(st.lists(st.sampled_from([1, 2, 3, 7, 1000]), min_size=1, max_size=4, unique=True))
    initial = {a: draw(st.integers(0, 60)) for a in accounts}
    balance = dict(initial)
    history: dict[int, list[int]] = {a: [initial[a]] for a in accounts}  # balances written, per account
    ops: list[dict[str, Any]] = []
    ledger: list[dict[str, Any]] = []
    seq = {p: 0 for p in PROCESSES}
    for i in range(draw(st.integers(0, 30))):
        process = draw(st.sampled_from(PROCESSES))
        seq[process] += 1
        n = seq[process]
        op_id = f"{process}-{n}"
        kind = draw(st.sampled_from(KINDS))
        acct = draw(st.sampled_from([*accounts, 99])) if draw(st.integers(0, 9)) == 0 else draw(
            st.sampled_from(accounts))
        amount = draw(st.integers(1, 12))
        before = balance.get(acct, 0)
        retries = {"deadlock": draw(st.integers(1, 3))} if draw(st.integers(0, 5)) == 0 else None
        result = {"retries": retries} if retries else {}
        applied = kind in ("ok", "unknown_applied", "phantom", "lost", "negative", "mismatch", "twice",
                           "unrecorded") and (before >= amount or kind in ("negative", "lost"))
        if kind == "lost" and len(history.get(acct, [])) > 1:
            before = draw(st.sampled_from(history[acct][:-1]))  # read an older balance: overwrites a deduction
        if applied:
            row_amount = amount + 1 if kind == "mismatch" and draw(st.booleans()) else amount
            row_acct = acct if kind != "mismatch" or row_amount != amount else draw(st.sampled_from(accounts))
            after = before - row_amount
            for _ in range(2 if kind == "twice" else 1):
                ledger.append({"seq": len(ledger) + 1, "op_id": op_id, "account_id": row_acct, "amount": row_amount,
                               "balance_before": before, "balance_after": after, "agent": f"{process}-a{n % 3}"})
            balance[row_acct] = after
            history.setdefault(row_acct, []).append(after)
        outcome, reason, error_class = "ok", None, None
        if kind in ("rejected",) or (not applied and kind in ("ok", "lost", "negative", "mismatch", "twice")):
            outcome, reason = "fail", "insufficient-funds"
        elif kind in ("gave_up", "phantom"):
            outcome, reason, error_class = "fail", "retries-exhausted", "40P01"
        elif kind.startswith("unknown"):
            outcome, reason, error_class = "unknown", "interrupted-during-commit", "interrupted"
        if kind == "missing":
            outcome = "ok"  # acknowledged, never applied
        if kind != "unrecorded":
            record = op(process, n, outcome, acct, amount, reason=reason, error_class=error_class,
                        attempts=1 + (sum(retries.values()) if retries else 0), result=result, invoke=float(i))
            ops.append(record)
            if kind == "duplicate":
                ops.append({**record, "outcome": draw(st.sampled_from(["ok", "fail", "unknown"]))})
    if draw(st.booleans()):
        ops = draw(st.permutations(ops))
    for a in accounts:
        if draw(st.integers(0, 7)) == 0:
            balance[a] = balance[a] - draw(st.integers(-5, 5))  # a balance the ledger does not explain
    final: dict[str, Any] = {}
    if draw(st.integers(0, 6)):
        final["credit_accounts"] = [{"id": a, "balance": balance[a], "initial_balance": initial[a], "version": 0}
                                    for a in draw(st.permutations(accounts))]
    if draw(st.integers(0, 5)):
        if ledger and draw(st.integers(0, 4)) == 0:
            ledger = draw(st.permutations(ledger))  # not in seq order: the checks sort
        final["credit_ledger"] = ledger
    incomplete = frozenset(draw(st.sets(st.sampled_from(PROCESSES), max_size=2)))
    return ops, final, incomplete


def results(found: Any) -> list[dict[str, Any]]:
    return [r.to_dict() for r in found]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(1, 4))
def test_columnar_credits_checks_equal_the_checks_over_records(case: Any, piece: int) -> None:
    ops, final, incomplete = case
    fast = credits_fast.check_all(ops, final, incomplete)
    assert fast is not None  # every generated shape is one the columnar path reads
    expected = results(cc.check_all(ops, final, incomplete))
    assert results(fast) == expected
    ledger = final.get("credit_ledger")
    if ledger:  # the ledger as a table in pieces (a final state written by an older toolclash): the same results
        table = pa.Table.from_pylist(ledger)
        pieces = pa.concat_tables([table.slice(k, piece) for k in range(0, len(ledger), piece)])
        assert pieces.column("op_id").num_chunks == -(-len(ledger) // piece)
        state = FinalState.of(final)
        state.tables["credit_ledger"] = pieces  # as read from a final state's Arrow copy
        fast = credits_fast.columnar(table_of_records(ops), state, frozenset(incomplete))
        assert fast is not None
        assert results(fast) == expected


def write_run(run: Path, ops: list[dict[str, Any]], final: dict[str, Any] | None, incomplete: frozenset[str],
              stages: list[dict[str, Any]] | None) -> Path:
    settings_ = Settings.from_mapping({"run_id": RUN_ID}, ["credits"])
    write_json(run / "options.json", {"run_id": RUN_ID, "scenarios": ["credits"], "settings": settings_.public()})
    writers: dict[str, HistoryWriter] = {}
    for rec in ops:
        w = writers.get(rec["process"])
        if w is None:
            w = writers[rec["process"]] = HistoryWriter(run / "history", run_id=RUN_ID, process=rec["process"])
        w.record(rec)
    for process, w in writers.items():
        w.close()
        if process in incomplete:
            (run / "history" / f"{process}.done.json").unlink()
    if final is not None:
        write_final(run / "final" / "credits.json", final, min_rows=0)  # the Arrow copy, whatever the size
    write_json(run / "final" / "server.json", {"sessions": [], "prepared_xacts": [], "waited_s": 0.0})
    if stages:
        write_json(run / "stages.json", stages)
    return run


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.booleans(), st.booleans())
def test_columnar_verdict_equals_the_verdict_over_records(case: Any, ramp: bool, captured: bool) -> None:
    """Files written by the project's writers (history as Arrow, final state with its Arrow copy), judged both ways:
    the same verdict, figures, gates and stages."""
    ops, final, incomplete = case
    stages = [{"stage": 1, "users": 5, "start": 1_700_000_000.0}, {"stage": 2, "users": 50,
                                                                   "start": 1_700_000_010.0}] if ramp else None
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "run", ops, final if captured else None, incomplete, stages)
        fast = evaluate(run)
        assert orjson.dumps(fast) == orjson.dumps(evaluate(run, columnar=False))


# --- the parsers --------------------------------------------------------------------------------------------------

scalars = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 20), st.floats(allow_nan=False),
                    st.text(max_size=3), st.booleans(), st.none())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["account", "amount", "x"]), scalars, max_size=3), max_size=40),
       st.integers(0, 3))
def test_flat_ints_read_exactly_what_orjson_reads_or_decline(rows: list[dict[str, Any]], skip: int) -> None:
    column = pa.array([orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows], pa.binary()).slice(
        min(skip, len(rows)))
    got = parse.flat_ints(column, ("account", "amount"))
    parsed = [orjson.loads(b) for b in column.to_pylist()]
    exact = all(list(r) == ["account", "amount"] and all(type(v) is int for v in r.values()) for r in parsed)
    if got is None:
        assert not exact or any(abs(v) >= 10**18 for r in parsed for v in r.values())
        return
    assert exact
    assert got["account"].tolist() == [r["account"] for r in parsed]
    assert got["amount"].tolist() == [r["amount"] for r in parsed]


@contextmanager
def steps(**sizes: int) -> Iterator[None]:
    """The parser's step sizes (:mod:`checks.parse` constants) set to *sizes* for the block, then restored."""
    before = {name: getattr(parse, name) for name in sizes}
    for name, value in sizes.items():
        setattr(parse, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(parse, name, value)


op_ids = st.one_of(
    st.builds(lambda p, n: f"{p}-{n}", st.sampled_from(["p1", "p2", "", "-", "x" * 7, "x" * 8, "host.a-1-w2", "é"]),
              st.one_of(st.integers(0, 30), st.integers(10**7, 10**8 + 5), st.integers(0, 10**13))),
    st.text(alphabet="p-0123456789", max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.lists(op_ids, min_size=1, max_size=60), st.integers(1, 3), st.sampled_from([parse.CHUNK, 1, 2, 5]),
       st.sampled_from([parse.BLOCK, 1, 3]), st.sampled_from([parse.PREFIXES_BY_MASK, 0, 1]), st.booleans())
def test_op_id_codes_are_equal_exactly_for_equal_strings(ids: list[str], parts: int, chunk: int, block: int,
                                                         by_mask: int, remember: bool) -> None:
    """Whatever the steps (rows per chunk of the parser, per block of the codes; prefixes told apart by masks or by
    peeling), and with the arrays remembered (the same array coded twice reads the remembered parse)."""
    arrays = [pa.array(ids[k::parts], pa.string()) for k in range(parts)]
    with steps(CHUNK=chunk, BLOCK=block, PREFIXES_BY_MASK=by_mask), \
            parse.remembering() if remember else nullcontext():
        if remember:
            parse.string_codes(arrays[-1])  # remembered, then read again below
        codes, size = parse.string_codes(arrays)
    flat = [s for a in arrays for s in a.to_pylist()]
    assert len(codes) == len(flat) and int(codes.max()) < size and int(codes.min()) >= 0
    first: dict[str, int] = {}
    for s, c in zip(flat, codes.tolist(), strict=True):
        first.setdefault(s, c)
        assert first[s] == c
    assert len(set(first.values())) == len(first)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
@pytest.mark.parametrize("by_mask", [0, 1, 16])
def test_op_id_codes_of_interleaved_processes(chunk: int, by_mask: int) -> None:
    """A ledger's op ids: the processes' numbers interleaved, the same numbers under every prefix (short, seven
    bytes, long), chunks that start with a known prefix or a new one."""
    prefixes = ["p1", "p2", "x" * 7, "host.a-1-w2", "p1x"]
    ids = [f"{p}-{n}" for n in range(6) for p in prefixes[: 2 + n % 4]]
    with steps(CHUNK=chunk, PREFIXES_BY_MASK=by_mask):
        got = parse._op_id_codes([pa.array(ids[::2], pa.string()), pa.array(ids[1::2], pa.string())])
    assert got is not None  # coded as op ids, not by the dictionary
    codes, size = got
    flat = ids[::2] + ids[1::2]
    by_id = dict(zip(flat, codes.tolist(), strict=True))
    assert len(set(by_id.values())) == len(by_id) == len(set(flat))
    assert [by_id[i] for i in flat] == codes.tolist() and int(codes.max()) < size


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=30), st.sampled_from([b'"retries"', b"ab", b"\x00"]))
def test_find_rows_finds_every_row_holding_the_string(rows: list[bytes], needle: bytes) -> None:
    chunks = pa.chunked_array([pa.array(rows[:7], pa.binary()), pa.array(rows[7:], pa.binary())])
    assert parse.find_rows(chunks, needle).tolist() == [i for i, r in enumerate(rows) if needle in r]
    assert np.array_equal(parse.find_rows(pa.array([], pa.binary()), needle), np.zeros(0, np.int64))


def test_big_balances_stay_on_the_columnar_path() -> None:
    """Balances of 10^17 on thousands of rows (their sum beyond 64 bits) are still judged from columns; only
    amounts whose sums could overflow send a history to the checks over records."""
    rich = 10**17
    ops = [op("p1", n, "ok", 1 + n % 3, 5, invoke=float(n)) for n in range(1, 3001)]
    ledger, balance = [], {1: rich, 2: rich, 3: rich}
    for n in range(1, 3001):
        a = 1 + n % 3
        ledger.append({"seq": n, "op_id": f"p1-{n}", "account_id": a, "amount": 5, "balance_before": balance[a],
                       "balance_after": balance[a] - 5, "agent": "p1-a0"})
        balance[a] -= 5
    final = {"credit_accounts": [{"id": a, "balance": b, "initial_balance": rich, "version": 0}
                                 for a, b in balance.items()], "credit_ledger": ledger}
    fast = credits_fast.check_all(ops, final)
    assert fast is not None and all(r.valid is True for r in fast)
    assert results(fast) == results(cc.check_all(ops, final))
    huge = [{**o, "args": {"account": 1, "amount": 2**61}} for o in ops[:4]]
    assert credits_fast.check_all(huge, final) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=6)), max_size=30), st.lists(st.integers(0, 30), max_size=4),
       st.data())
def test_take_chunk_by_chunk_equals_arrows_take(values: list[bytes | None], cuts: list[int], data: Any) -> None:
    bounds = sorted({0, len(values), *(min(c, len(values)) for c in cuts)})
    column = pa.chunked_array([pa.array(values[a:b], pa.binary()) for a, b in pairwise(bounds)],
                              pa.binary())
    rows = sorted(data.draw(st.sets(st.integers(0, len(values) - 1))) if values else [])
    assert columns.take(column, np.array(rows, np.int64)) == column.take(pa.array(rows, pa.int64())).to_pylist()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.integers(-5, 5), st.integers(0, 10**12)), st.none()), max_size=25),
       st.lists(st.integers(0, 25), max_size=4))
def test_int_arguments_read_every_chunk(args: list[tuple[int, int] | None], cuts: list[int]) -> None:
    """Arguments read from a history table whose columns are in several chunks (a chunk per flush), or in one, with
    rows held as typed numbers and rows held as JSON: each row's arguments."""
    ops = [op("p1", n + 1, "ok", a[0], a[1]) if a else {**op("p1", n + 1, "ok", 0, 0), "args": {"amount": 1,
                                                                                                "account": 2}}
           for n, a in enumerate(args)]
    bounds = sorted({0, len(ops), *(min(c, len(ops)) for c in cuts)})
    batches = [columnar.encode(ops[a:b]) for a, b in pairwise(bounds)]
    chunked = pa.Table.from_batches(batches, schema=columnar.schema())
    expected = {k: [o["args"][k] for o in ops] for k in ("account", "amount")}
    got = [columns.int_arguments(table, ("account", "amount")) for table in (chunked, chunked.combine_chunks())]
    if got[0] is None:  # numbers under other names in a typed batch: the columnar path declines, whatever the chunks
        assert got[1] is None
        return
    for found in got:  # in one chunk: typed and JSON rows in the same chunk
        assert found is not None
        assert {k: v.tolist() for k, v in found.items()} == expected


def test_final_state_tables_are_written_as_one_chunk(tmp_path: Path) -> None:
    """A table given in pieces is written as one record batch: the verdict maps each column as one array and reads
    it in place (no copy of the ledger on every verdict)."""
    from toolclash.columnar import read_final_tables

    ledger = pa.concat_tables([pa.table({"seq": [1, 2], "op_id": ["p1-1", "p1-2"]}), pa.table({"seq": [3],
                                                                                               "op_id": ["p2-1"]})])
    assert ledger.column("seq").num_chunks == 2
    assert write_final(tmp_path / "credits.json", {"credit_ledger": ledger, "accounts_seeded": 1}, min_rows=0)
    got = read_final_tables(tmp_path / "credits.json")
    assert got is not None
    rest, tables = got
    assert rest == {"accounts_seeded": 1}
    assert tables["credit_ledger"].equals(ledger)
    assert {c.num_chunks for c in tables["credit_ledger"].columns} == {1}
    assert orjson.loads((tmp_path / "credits.json").read_bytes())["credit_ledger"][2] == {"seq": 3, "op_id": "p2-1"}
