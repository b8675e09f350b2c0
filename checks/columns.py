"""The verdict's steps over columns: the history as an Arrow table (:func:`toolclash.history.read_history_table`),
the final state's big tables (:func:`toolclash.columnar.read_final_tables`), and the common figures (SLA figures,
stages, duration) computed with numpy, exactly as :mod:`checks.gates` computes them over Python records.

A scenario's checks may add a columnar path (``Checks(columnar=...)``): a function of (its operations as a table,
its :class:`FinalState`, the incomplete processes) that returns the same results as its checks, or None when the
data is not in a shape it handles exactly (the verdict then runs the checks over Python records, as always).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from checks import EVIDENCE_CAP, Evidence
from checks.gates import CUT_SHORT, INJECTED, sla_counts
from checks.parse import find_rows, flat_ints, json_fields, string_codes
from toolclash import columnar
from toolclash.history import FAIL, OK

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


class FinalState:
    """A scenario's final state for columnar checks: its small keys as Python values and its tables as Arrow
    tables, from the Arrow copy when there is a valid one, else from the JSON."""

    def __init__(self, path: Path | None, data: Any = None) -> None:
        self.path = path
        got = columnar.read_final_tables(path) if path is not None else None
        self.columnar = got is not None
        if got is not None:
            self.rest, self.tables = got
        else:
            self.rest, self.tables = orjson.loads(path.read_bytes()) if path is not None else data, {}
        self._dict: Any = None if self.columnar else self.rest

    @classmethod
    def of(cls, data: Any) -> FinalState:
        """A final state held in memory (as a scenario's snapshot returns it)."""
        return cls(None, data)

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.rest, Mapping)

    def __contains__(self, key: str) -> bool:
        return key in self.tables or (self.is_mapping and key in self.rest)

    def get(self, key: str, default: Any = None) -> Any:
        """A small key's value (not a table's)."""
        return self.rest.get(key, default) if self.is_mapping else default

    def table(self, key: str) -> pa.Table | None:
        """Table *key* (None when absent or when its rows are not one flat table: the columnar path declines)."""
        if key in self.tables:
            return self.tables[key]
        if not self.is_mapping or key not in self.rest:
            return None
        got = columnar.table_of(self.rest[key])
        if got is not None:
            self.tables[key] = got
        return got

    def rows(self, key: str) -> int:
        """Rows of table *key* (0 when absent or empty)."""
        if key in self.tables:
            return int(self.tables[key].num_rows)
        value = self.get(key)
        return len(value) if isinstance(value, list) else 0

    def as_dict(self) -> Any:
        """The final state as the checks over Python records read it (the JSON)."""
        if self._dict is None:
            assert self.path is not None
            self._dict = orjson.loads(self.path.read_bytes())
        return self._dict


COMPUTED = ("op_id", "invoke_ts", "complete_ts")
"""The columns the verdict turns into numpy arrays, more than once. Others stay in chunks: Arrow's kernels (string
equality, sums) and :mod:`checks.parse` read them chunk by chunk, evidence takes single rows, and combining them
would copy about 0.7 GB per 10M operations (1 s, measured)."""


def compact(table: pa.Table) -> pa.Table:
    """*table* with each column of :data:`COMPUTED` in one chunk (a history file holds a chunk per flush: thousands;
    every computation on a column would otherwise combine them again)."""
    import pyarrow as pa

    columns = [pa.chunked_array([c.combine_chunks()]) if name in COMPUTED and c.num_chunks > 1 else c
               for name, c in zip(table.column_names, table.columns, strict=True)]
    return pa.Table.from_arrays(columns, schema=table.schema)


def one(column: Any) -> Any:
    """A column as one Arrow array (no copy when it already is one chunk)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def record(table: pa.Table, row: int) -> dict[str, Any]:
    """Row *row* of a history table as the operation record it was written as."""
    (batch,) = table.slice(row, 1).combine_chunks().to_batches()
    return columnar.decode(batch)[0]


def take(column: Any, rows: np.ndarray) -> list[Any]:
    """The values of *rows* (ascending) of a column as Python values, taken chunk by chunk (``ChunkedArray.take``
    combines every chunk first: 3 s for the 490 MB of a 10M history's ``result``, measured)."""
    import numpy as np
    import pyarrow as pa

    if not isinstance(column, pa.ChunkedArray):
        return column.take(pa.array(rows, pa.int64())).to_pylist()
    out: list[Any] = []
    ends = np.cumsum([len(c) for c in column.chunks])
    cut = np.searchsorted(rows, ends)
    start = 0
    for k, chunk in enumerate(column.chunks):
        mine = rows[start:cut[k]]
        if len(mine):
            out.extend(chunk.take(pa.array(mine - (ends[k] - len(chunk)), pa.int64())).to_pylist())
        start = int(cut[k])
    return out


def _chunks(column: Any) -> list[Any]:
    """The arrays of a column (one for an array)."""
    import pyarrow as pa

    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]


def numpy(column: Any) -> np.ndarray:
    """A numeric column without nulls as a numpy array (no copy when it is one chunk)."""
    return one(column).to_numpy(zero_copy_only=False)


def select(table: pa.Table, tools: Iterable[str]) -> pa.Table:
    """The rows of *table* whose tool is one of *tools*, in order (the table itself when all are)."""
    import pyarrow.compute as pc

    column = table.column("tool")
    mask = None
    for tool in tools:  # string equality: no hashing of a million values
        eq = pc.fill_null(pc.equal(column, tool), False)
        mask = eq if mask is None else pc.or_(mask, eq)
    if mask is None:
        return table.slice(0, 0)
    if pc.all(mask).as_py():
        return table
    return table.filter(mask)


def int_arguments(table: pa.Table, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The whole-number arguments *keys* of every operation in *table* (each operation's ``args`` must be exactly
    those keys, in that order, with whole numbers: the shape :mod:`toolclash.columnar` stores as numbers, or as
    orjson writes it); None when an operation's arguments have another shape."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    typed = numpy(pc.fill_null(pc.equal(table.column("arg_keys"), columnar.KEY_SEP.join(keys)), False)) if n else \
        np.zeros(0, bool)
    out = {k: np.empty(n, np.int64) for k in keys}
    if typed.any():  # chunk by chunk: a history holds a chunk per flush, and combining them copies 200 MB per 10M
        width = len(keys)
        row0 = 0
        for lists in _chunks(table.column("arg_ints")):
            mine = typed[row0:row0 + len(lists)]
            every = bool(mine.all())
            if every or mine.any():
                if not every:
                    lists = lists.filter(pa.array(mine))
                offsets = numpy(lists.offsets)
                if not bool((np.diff(offsets) == width).all()):
                    return None
                values = numpy(lists.values)[offsets[0]:offsets[-1]].reshape(-1, width)
                at: Any = slice(row0, row0 + len(mine)) if every else row0 + np.flatnonzero(mine)
                for i, k in enumerate(keys):
                    out[k][at] = values[:, i]
            row0 += len(mine)
    rest = np.flatnonzero(~typed)
    if len(rest):
        blobs = table.column("args").take(pa.array(rest))
        if blobs.null_count:
            return None  # numbers under other names
        got = flat_ints(blobs, keys)
        if got is None:
            parsed = json_fields(blobs, {k: pa.int64() for k in keys})
            if parsed is None or any(parsed.column(k).null_count for k in keys):
                return None
            got = {k: numpy(parsed.column(k)) for k in keys}
        for k in keys:
            out[k][rest] = got[k]
    return out


def evidence(total: int, items: Iterator[Any], cap: int = EVIDENCE_CAP) -> Evidence:
    """Evidence of *total* items of which the first :data:`EVIDENCE_CAP` are made by *items* (lazily)."""
    ev = Evidence(cap)
    for item in items:
        if len(ev.items) >= cap:
            break
        ev.items.append(item)
    ev.total = total
    return ev


def chain(*parts: tuple[int, Iterator[Any]]) -> Evidence:
    """Evidence added in order by several loops, each given as (its count, its items)."""
    total = sum(n for n, _ in parts)

    def items() -> Iterator[Any]:
        for n, it in parts:
            if n:
                yield from it

    return evidence(total, items())


# ------------------------------------------------------------------------------------------------ SLA figures


def sane(table: pa.Table) -> bool:
    """Finite timestamps: the figures below then equal :func:`checks.gates.figures` (which sorts Python floats)."""
    import numpy as np

    return bool(np.isfinite(numpy(table.column("invoke_ts"))).all()
                and np.isfinite(numpy(table.column("complete_ts"))).all())


def figures(table: pa.Table, rejections: frozenset[str]) -> dict[str, Any]:
    """:func:`checks.gates.figures` of the operations in *table* (a :func:`sane` one), from its columns."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    attempts = int(pc.sum(table.column("attempts")).as_py() or 0)
    conflicts = 0
    retries_by_cause: dict[str, int] = {}
    result = table.column("result")
    if n:
        with_retries = find_rows(result, b'"retries"')
        if len(with_retries):
            blobs = take(result, with_retries)  # each ends with a newline: one JSON array of them, parsed at once
            for doc in orjson.loads(b"[" + b",".join(blobs) + b"]"):
                for cause, k in (doc or {}).get("retries", {}).items():
                    conflicts += k
                    retries_by_cause[cause] = retries_by_cause.get(cause, 0) + k
    outcome = table.column("outcome")
    is_ok = numpy(pc.fill_null(pc.equal(outcome, OK), False))
    is_fail = numpy(pc.fill_null(pc.equal(outcome, FAIL), False))
    rejected_m = is_fail & numpy(pc.fill_null(pc.is_in(table.column("reason"), value_set=pa.array(
        sorted(rejections), pa.string())), False))
    interrupted_m = is_fail & ~rejected_m & numpy(pc.fill_null(pc.equal(table.column("error_class"), "interrupted"),
                                                               False))
    is_unknown = ~is_ok & ~is_fail
    error_class = table.column("error_class")
    cut_short_m = is_unknown & numpy(pc.fill_null(pc.equal(error_class, CUT_SHORT), False))
    injected_m = is_unknown & numpy(pc.fill_null(pc.equal(error_class, INJECTED), False))
    ok = int(is_ok.sum())
    rejected = int(rejected_m.sum())
    interrupted = int(interrupted_m.sum())
    failed = int(is_fail.sum()) - rejected - interrupted
    unknown = n - ok - rejected - interrupted - failed
    cut_short, injected = int(cut_short_m.sum()), int(injected_m.sum())
    # as gates.figures: ok, failed, rejected and in-doubt calls are timed; interrupted and cut-short ones are not
    timed = is_ok | (is_fail & ~interrupted_m) | (is_unknown & ~cut_short_m)
    complete, invoke = numpy(table.column("complete_ts")), numpy(table.column("invoke_ts"))
    if timed.all():  # the same numbers without two gathers of every row
        latencies = np.subtract(complete, invoke)
        latencies *= 1000.0
    else:
        latencies = (complete[timed] - invoke[timed]) * 1000.0
    count = len(latencies)
    ranks = {q: max(1, math.ceil(q / 100.0 * count)) - 1 for q in (50, 95, 99)}  # as gates.percentile
    picked = np.partition(latencies, sorted({*ranks.values(), count - 1})) if count else latencies
    return {**sla_counts(ok=ok, failed=failed, rejected=rejected, interrupted=interrupted, unknown=unknown,
                         cut_short=cut_short, injected=injected, attempts=attempts, conflicts=conflicts,
                         retries_by_cause=retries_by_cause),
            "p50_ms": float(picked[ranks[50]]) if count else math.nan,
            "p95_ms": float(picked[ranks[95]]) if count else math.nan,
            "p99_ms": float(picked[ranks[99]]) if count else math.nan,
            "max_ms": float(picked[count - 1]) if count else math.nan}


def stage_of(table: pa.Table, stages: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The ramp stage of each operation (as :func:`checks.gates.by_stage`: by its invoke time)."""
    import numpy as np

    starts = np.array([float(st["start"]) for st in stages], dtype=np.float64)
    return np.maximum(np.searchsorted(starts, numpy(table.column("invoke_ts")), side="right") - 1, 0)


def duration(table: pa.Table) -> float:
    """Last completion − first invocation (NaN without operations)."""
    if table.num_rows == 0:
        return math.nan
    return float(numpy(table.column("complete_ts")).max() - numpy(table.column("invoke_ts")).min())


# ------------------------------------------------------------------------------------------------ the verdict's parts


class Part:
    """Operations of one scope of the verdict (a scenario, a stage of it): its table when the columnar path can read
    it, and its Python records, made only when something asks for them."""

    def __init__(self, table: pa.Table | None = None, ops: list[Any] | None = None) -> None:
        self.table = compact(table) if table is not None else None
        self._ops = ops
        self.sane = table is not None and sane(table)

    @property
    def count(self) -> int:
        return int(self.table.num_rows) if self.table is not None else len(self._ops or [])

    @property
    def ops(self) -> list[Any]:
        if self._ops is None:
            assert self.table is not None
            self._ops = [op for batch in self.table.to_batches() for op in columnar.decode(batch)]
        return self._ops

    def figures(self, rejections: frozenset[str]) -> dict[str, Any]:
        from checks import gates

        return figures(self.table, rejections) if self.sane else gates.figures(self.ops, rejections)

    def select(self, tools: frozenset[str]) -> Part:
        if self.table is not None:
            return Part(select(self.table, tools))
        return Part(ops=[op for op in self.ops if op["tool"] in tools])

    def by_stage(self, stages: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Part]]:
        """As :func:`checks.gates.by_stage`."""
        if not stages:
            return []
        if not self.sane:
            from checks import gates

            return [(st, Part(ops=ops)) for st, ops in gates.by_stage(self.ops, stages)]
        import pyarrow as pa

        assert self.table is not None
        index = stage_of(self.table, stages)
        return [(st, Part(self.table.filter(pa.array(index == k)))) for k, st in enumerate(stages)]

    def duplicates(self) -> dict[str, list[dict[str, Any]]]:
        """Op id → its records, for op ids recorded more than once (none in a sound history; then the records are
        decoded to name them)."""
        if self.table is not None:
            import numpy as np

            column = self.table.column("op_id")
            if not len(column):
                return {}
            if not column.null_count:  # codes of op ids, not a hash table of strings (7 s for 10M in Arrow, measured)
                codes, size = string_codes(column)
                if int(np.bincount(codes, minlength=size).max()) <= 1:
                    return {}
        return duplicate_op_ids(self.ops)

    def duration(self) -> float:
        """Last completion − first invocation of these operations (NaN without any)."""
        if self.sane:
            assert self.table is not None
            return duration(self.table)
        if not self.ops:
            return math.nan
        return float(max(op["complete_ts"] for op in self.ops) - min(op["invoke_ts"] for op in self.ops))


def table_of_records(ops: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Operation records held in memory as a history table (as :func:`toolclash.history.read_history_table`)."""
    import pyarrow as pa

    return pa.Table.from_batches([columnar.encode(list(ops))], schema=columnar.schema())


def duplicate_op_ids(ops: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Op id → every record of it, for the op ids recorded more than once (op ids are unique in a run)."""
    seen: dict[str, dict[str, Any]] = {}
    dups: dict[str, list[dict[str, Any]]] = {}
    for op in ops:
        first = seen.setdefault(op["op_id"], op)
        if first is not op:
            dups.setdefault(op["op_id"], [first]).append(op)
    return dups
