"""The verdict's steps over columns: the history as an Arrow table (:func:`toolclash.history.read_history_table`),
the final state's big tables (:func:`toolclash.columnar.read_final_tables`), and the common figures (SLA figures,
stages, duration) computed with numpy, exactly as :mod:`checks.gates` computes them over Python records.

A scenario's checks may add a columnar path (``Checks(columnar=...)``): a function of (its operations as a table,
its :class:`FinalState`, the incomplete processes) that returns the same results as its checks, or None when the
data is not in a shape it handles exactly (the verdict then runs the checks over Python records, as always).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from checks import EVIDENCE_CAP, Evidence
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


def record(table: pa.Table, row: int) -> dict[str, Any]:
    """Row *row* of a history table as the operation record it was written as."""
    (batch,) = table.slice(row, 1).combine_chunks().to_batches()
    return columnar.decode(batch)[0]


def numpy(column: Any) -> np.ndarray:
    """A numeric column without nulls as a numpy array (no copy when it is one chunk)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column.to_numpy(zero_copy_only=False)


def strings(column: Any) -> list[Any]:
    """A string column as Python values (for the few rows evidence names)."""
    return list(column.to_pylist())


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


def _arrays(column: Any) -> list[Any]:
    """The arrays of a column (a chunked array's chunks, or a list of arrays), each read where Arrow holds it."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        return list(column.chunks)
    if isinstance(column, list | tuple):
        return [a for c in column for a in _arrays(c)]
    return [column]


def _body(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets as int64, one more than rows; the values' bytes) of one binary or string array."""
    import numpy as np

    offsets, data = array.buffers()[1:3]
    off = np.frombuffer(offsets, dtype=np.int32, count=len(array) + 1, offset=array.offset * 4).astype(np.int64)
    body = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return off, body


BEFORE, AFTER = 16, 32
"""Bytes a parser may read before a row's start and after its end."""


def _chunks(column: Any) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The rows of a binary or string column (or list of arrays) in steps of :data:`CHUNK`: ``(first row, bytes, each
    row's start and end in them, the bytes seen as a little-endian 64-bit word at every position)``. Rows are read
    where Arrow holds them; only the few rows too near the ends of a buffer are copied with zeros around them."""
    import numpy as np

    row0 = 0
    for array in _arrays(column):
        off, body = _body(array)
        n = len(off) - 1
        lo = int(np.searchsorted(off[:-1], BEFORE))  # rows from here start far enough from the buffer's start
        hi = int(np.searchsorted(off[1:], len(body) - AFTER, side="right"))  # rows before here end far from its end
        if lo >= hi or len(body) < 8:
            lo = hi = 0
        words = np.ndarray((len(body) - 7,), dtype="<u8", buffer=body, offset=0, strides=(1,)) if hi else None
        pieces = [(0, lo, False), (lo, hi, True), (hi, n, False)] if hi else [(0, n, False)]
        for first, last, in_place in pieces:
            for c in range(first, last, CHUNK):
                stop = min(c + CHUNK, last)
                if in_place:
                    yield row0 + c, body, off[c:stop], off[c + 1:stop + 1], words  # type: ignore[misc]
                    continue
                size = int(off[stop] - off[c])
                data = np.zeros(BEFORE + size + AFTER, np.uint8)
                data[BEFORE:BEFORE + size] = body[int(off[c]):int(off[stop])]
                shift = off[c] - BEFORE
                yield (row0 + c, data, off[c:stop] - shift, off[c + 1:stop + 1] - shift,
                       np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, offset=0, strides=(1,)))
        row0 += n


_MASKS = [(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1]


def _matches(words: np.ndarray, pos: np.ndarray, literal: bytes) -> bool:
    """Every row has *literal* at *pos* (compared eight bytes at a time)."""
    import numpy as np

    for k in range(0, len(literal), 8):
        chunk = literal[k:k + 8]
        want = np.uint64(int.from_bytes(chunk, "little"))
        got = words[pos + k]
        if len(chunk) < 8:
            got = got & np.uint64(_MASKS[len(chunk)])
        if not bool((got == want).all()):
            return False
    return True


CHUNK = 65536
"""Rows per step of the byte-level parsers (their temporaries then stay in the processor's cache: 2× faster than
whole columns at once, measured)."""


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
    rows = np.flatnonzero(typed)
    if len(rows):
        lists = table.column("arg_ints")
        lists = (lists.combine_chunks() if lists.num_chunks != 1 else lists.chunk(0)).take(pa.array(rows))
        offsets = numpy(lists.offsets)
        if not bool((np.diff(offsets) == len(keys)).all()):
            return None
        values = numpy(lists.values)[offsets[0]:offsets[-1]].reshape(-1, len(keys))
        for i, k in enumerate(keys):
            out[k][rows] = values[:, i]
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


def flat_ints(column: Any, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The integer fields *keys* of a column of JSON objects written exactly as orjson writes a dict of those keys in
    that order with integer values (``{"account":12,"amount":5}`` and a newline), parsed with numpy; None as soon as
    one row has another form (the caller then parses the JSON)."""
    import numpy as np

    n = len(column)
    out = {k: np.empty(n, np.int64) for k in keys}
    literals = [(b"{" if i == 0 else b",") + orjson.dumps(key) + b":" for i, key in enumerate(keys)]
    for c, data, pos, end, words in _chunks(column):
        for key, literal in zip(keys, literals, strict=True):
            if not _matches(words, pos, literal):
                return None
            pos = pos + len(literal)
            negative = data[pos] == 45  # '-'
            pos = pos + negative
            value, digits = _digits(words, pos, len(pos))
            if (digits == 0).any() or (digits > 18).any() or ((data[pos] == 48) & (digits > 1)).any():
                return None  # no digit, too long for 64 bits, or a leading zero: not orjson's integer
            out[key][c:c + len(pos)] = np.where(negative, -value, value)
            pos = pos + digits
        if not _matches(words, pos, b"}\n") or not bool(((pos + 2) == end).all()):
            return None
    return out


_POW10 = [10**k for k in range(9)]


def _digits(words: np.ndarray, pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(value, number of digits) of the decimal digits at *pos*, eight bytes at a time (at most 24 are read)."""
    import numpy as np

    value = np.zeros(n, np.int64)
    digits = np.zeros(n, np.int64)
    pow10 = np.array(_POW10, np.int64)
    going = np.ones(n, bool)
    for w in range(0, 24, 8):
        count, part = _leading_digits(words[pos + w])
        count = np.where(going, count, 0)
        value = value * pow10[count] + np.where(going, part, 0)
        digits += count
        going &= count == 8
        if not going.any():
            break
    return value, digits


def _leading_digits(word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(how many of the bottom bytes of each little-endian *word* are ASCII digits, their value)."""
    import numpy as np

    u = np.uint64
    flags = _not_digits(word)
    low_bad = np.frexp((flags & (~flags + u(1))).astype(np.float64))[1] - 1  # the lowest byte not a digit
    count = np.where(flags == 0, 8, low_bad // 8).astype(np.int64)
    shift = (u(8) * (u(8) - count.astype(np.uint64))) % u(64)
    aligned = np.where(count == 0, u(0), word << shift)  # the digits moved to the top bytes
    return count, _eight_digits(aligned, count)


def _not_digits(word: np.ndarray) -> np.ndarray:
    """Bit 7 of each byte of *word* set where that byte is not an ASCII digit (SWAR)."""
    import numpy as np

    u = np.uint64
    bad = ((word & u(0xF0F0F0F0F0F0F0F0)) ^ u(_ZEROS)) | (
        ((word & u(0x0F0F0F0F0F0F0F0F)) + u(0x0606060606060606)) & u(0xF0F0F0F0F0F0F0F0))
    return (((bad & u(0x7F7F7F7F7F7F7F7F)) + u(0x7F7F7F7F7F7F7F7F)) | bad) & u(0x8080808080808080)


def _eight_digits(word: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The value of the *count* digits in the top bytes of each *word* (the bytes below them read as zeros)."""
    import numpy as np

    u = np.uint64
    keep = np.array(_TOP, dtype=np.uint64)[count]
    x = ((word & keep) | (u(_ZEROS) & ~keep)) - u(_ZEROS)
    x = x * u(10) + (x >> u(8))
    x = (((x & u(0x000000FF000000FF)) * u(100 + (1000000 << 32)))
         + (((x >> u(16)) & u(0x000000FF000000FF)) * u(1 + (10000 << 32)))) >> u(32)
    return x.astype(np.int64)


def string_codes(column: Any) -> tuple[np.ndarray, int]:
    """A code per value of a string column (or of a list of them, one after the other), equal for equal strings and
    only for them, in ``range(size)``: ``(codes, size)``. Op ids (``<process>-<n>``) are coded by their process and
    number without hashing each string (*size* may then exceed the number of distinct values); other strings by
    Arrow's dictionary encoding."""
    import numpy as np
    import pyarrow as pa

    arrays = _arrays(column)
    got = None
    if sum(len(a) for a in arrays) and not any(a.null_count for a in arrays):
        got = _op_id_codes(arrays)
    if got is not None:
        return got
    enc = pa.chunked_array(arrays, pa.string()).combine_chunks().dictionary_encode()
    return numpy(enc.indices).astype(np.int64), len(enc.dictionary)


_ZEROS = 0x3030303030303030
_TOP = [(2**64 - 1) ^ ((1 << (8 * (8 - k))) - 1) if k else 0 for k in range(9)]
"""Masks of the top k bytes of a word."""


def _trailing_digits(word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(how many of the top bytes of each little-endian *word* are ASCII digits, their value)."""
    import numpy as np

    flags = _not_digits(word)
    top_bad = np.frexp(flags.astype(np.float64))[1] - 1  # the highest byte that is not a digit (-1: none)
    count = np.where(flags == 0, 8, 7 - top_bad // 8).astype(np.int64)
    return count, _eight_digits(word, count)


def _op_id_codes(arrays: list[Any]) -> tuple[np.ndarray, int] | None:
    """Codes of op ids ``<prefix>-<number>`` (a number without leading zeros): prefixes are told apart by their bytes
    (up to seven of them: exactly; longer ones by a hash checked byte for byte against the first row with that hash)
    and numbered; the code is the number offset by its prefix's base. None when a value has another form."""
    import numpy as np

    n = sum(len(a) for a in arrays)
    seq = np.empty(n, np.int64)
    prefix = np.empty(n, np.int64)
    known: dict[int, int] = {}  # key (or hash) of a prefix -> its number
    reps: list[bytes] = []  # each prefix's bytes
    masks = np.array(_MASKS, dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    for c, data, start, end, words in _chunks(arrays):
        digits, value = _trailing_digits(words[end - 8])
        more = np.flatnonzero(digits == 8)
        if len(more):  # eight digits or more: the word before too
            extra, high = _trailing_digits(words[end[more] - 16])
            digits[more] += extra
            value[more] += high * 10**8
        dash = end - digits - 1
        if ((digits == 0) | (digits > 13) | ((data[end - digits] == 48) & (digits > 1)) | (dash < start)
                | (data[dash] != 45)).any():
            return None  # not <prefix>-<number> (or a number another spelling of which would read the same)
        length = dash - start
        width = int(length.max())
        first = words[start] & masks[np.minimum(length, 8)]
        h = first | (length.astype(np.uint64) << np.uint64(56))  # up to seven bytes: the prefix itself is the key
        if width > 7:  # longer ones: a hash (its top byte 0xFF, never a length of the exact keys)
            long = length > 7
            mixed = (first ^ length.astype(np.uint64)) * mult
            for k in range(8, width, 8):  # as many rounds as the prefix has words, whatever the others in the chunk
                mixed = np.where(length > k, (mixed ^ (words[start + k] & masks[np.clip(length - k, 0, 8)])) * mult,
                                 mixed)
            h = np.where(long, mixed | np.uint64(0xFF << 56), h)
        code = np.empty(len(h), np.int64)
        todo = np.arange(len(h))
        while len(todo):  # few distinct prefixes: peel them off one by one
            hit = h[todo] == h[todo[0]]
            same, todo = todo[hit], todo[~hit]
            hv = int(h[same[0]])
            if hv not in known:
                if len(reps) >= 4096:
                    return None
                known[hv] = len(reps)
                reps.append(data[int(start[same[0]]):int(dash[same[0]])].tobytes())
            code[same] = known[hv]
        if width > 7:  # equal hashes: compare the bytes themselves
            rep_len = np.array([len(r) for r in reps], np.int64)
            if not bool((length == rep_len[code]).all()):
                return None
            for k in range(0, width, 8):
                rep_words = np.array([int.from_bytes(r[k:k + 8].ljust(8, b"\0"), "little") for r in reps], np.uint64)
                if not bool(((words[start + k] & masks[np.clip(length - k, 0, 8)]) == rep_words[code]).all()):
                    return None
        seq[c:c + len(start)] = value
        prefix[c:c + len(start)] = code
    top = np.zeros(len(reps), np.int64)
    np.maximum.at(top, prefix, seq)
    base = np.concatenate([[0], np.cumsum(top + 1)])
    size = int(base[-1])
    if size > 4 * n + (1 << 20):
        return None  # sparse numbers: the dictionary is smaller
    return base[prefix] + seq, size


def find_rows(column: Any, needle: bytes) -> np.ndarray:
    """Rows of a binary column whose bytes contain *needle* (a scan of each buffer, not row by row)."""
    import numpy as np

    found = []
    row0 = 0
    pattern = re.compile(re.escape(needle))
    for array in _arrays(column):
        off, body = _body(array)
        hits = [m.start() for m in pattern.finditer(memoryview(body)[int(off[0]):int(off[-1])])] if len(off) > 1 \
            else []
        if hits:
            found.append(row0 + np.searchsorted(off - off[0], np.asarray(hits, np.int64), side="right") - 1)
        row0 += len(array)
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)


def json_fields(column: Any, fields: Mapping[str, Any]) -> pa.Table | None:
    """*fields* (name → Arrow type) of the JSON objects in *column* (``args`` or ``result``), parsed in C; None when
    one is not an object or a value does not have its type."""
    import pyarrow as pa
    import pyarrow.json as pj

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(column) == 0:
        return pa.table({k: pa.array([], t) for k, t in fields.items()})
    if column.null_count:
        return None
    offsets, data = column.buffers()[1:3]
    import numpy as np

    off = np.frombuffer(offsets, dtype=np.int32, count=len(column) + 1, offset=column.offset * 4)
    body = data.slice(int(off[0]), int(off[-1] - off[0]))
    options = pj.ParseOptions(explicit_schema=pa.schema(list(fields.items())), unexpected_field_behavior="ignore")
    try:
        parsed = pj.read_json(pa.BufferReader(body), parse_options=options,
                              read_options=pj.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if parsed.num_rows != len(column):
        return None
    return parsed


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
            for blob in result.take(pa.array(with_retries)).to_pylist():
                for cause, k in (orjson.loads(blob) or {}).get("retries", {}).items():
                    conflicts += k
                    retries_by_cause[cause] = retries_by_cause.get(cause, 0) + k
    outcome = table.column("outcome")
    is_ok = numpy(pc.fill_null(pc.equal(outcome, OK), False))
    is_fail = numpy(pc.fill_null(pc.equal(outcome, FAIL), False))
    rejected_m = is_fail & numpy(pc.fill_null(pc.is_in(table.column("reason"), value_set=pa.array(
        sorted(rejections), pa.string())), False))
    interrupted_m = is_fail & ~rejected_m & numpy(pc.fill_null(pc.equal(table.column("error_class"), "interrupted"),
                                                               False))
    ok = int(is_ok.sum())
    rejected = int(rejected_m.sum())
    interrupted = int(interrupted_m.sum())
    failed = int(is_fail.sum()) - rejected - interrupted
    unknown = n - ok - rejected - interrupted - failed
    timed = is_ok | (is_fail & ~interrupted_m)
    latencies = (numpy(table.column("complete_ts"))[timed] - numpy(table.column("invoke_ts"))[timed]) * 1000.0
    decided = ok + failed
    count = len(latencies)
    ranks = {q: max(1, math.ceil(q / 100.0 * count)) - 1 for q in (50, 95, 99)}  # as gates.percentile
    picked = np.partition(latencies, sorted({*ranks.values(), count - 1})) if count else latencies
    return {
        "calls": ok + failed + rejected + interrupted + unknown, "ok": ok, "failed": failed,
        "rejected": rejected, "unknown": unknown, "attempts": attempts, "conflicts": conflicts,
        "retries_by_cause": retries_by_cause,
        "conflict_rate": conflicts / attempts if attempts else math.nan,
        "success_rate": ok / decided if decided else math.nan,
        "p50_ms": float(picked[ranks[50]]) if count else math.nan,
        "p95_ms": float(picked[ranks[95]]) if count else math.nan,
        "p99_ms": float(picked[ranks[99]]) if count else math.nan,
        "max_ms": float(picked[count - 1]) if count else math.nan,
    }


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
        self.table = table
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

    def duration(self) -> float:
        """Last completion − first invocation of these operations (NaN without any)."""
        if self.sane:
            return duration(self.table)  # type: ignore[arg-type]
        if not self.ops:
            return math.nan
        return float(max(op["complete_ts"] for op in self.ops) - min(op["invoke_ts"] for op in self.ops))


def table_of_records(ops: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Operation records held in memory as a history table (as :func:`toolclash.history.read_history_table`)."""
    import pyarrow as pa

    return pa.Table.from_batches([columnar.encode(list(ops))], schema=columnar.schema())
