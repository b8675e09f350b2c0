"""Parsers of Arrow string and binary columns with numpy, a chunk of rows at a time and eight bytes at a time (no
Python object per row): the whole-number fields of JSON objects in orjson's form, op ids (``<process>-<n>``) as
numbers, and the rows whose bytes contain a string. Each returns None when a row is not in the form it reads
exactly, and its caller then takes the general way (Arrow's JSON reader or dictionary encoding, or Python).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


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


def as_words(data: np.ndarray) -> np.ndarray:
    """The bytes of *data* seen as a little-endian 64-bit word at every position (a view: nothing is copied)."""
    import numpy as np

    return np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, offset=0, strides=(1,))


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
        whole = as_words(body) if hi else None
        pieces = [(0, lo, False), (lo, hi, True), (hi, n, False)] if hi else [(0, n, False)]
        for first, last, in_place in pieces:
            for c in range(first, last, CHUNK):
                stop = min(c + CHUNK, last)
                if in_place:
                    yield row0 + c, body, off[c:stop], off[c + 1:stop + 1], whole  # type: ignore[misc]
                    continue
                size = int(off[stop] - off[c])
                data = np.zeros(BEFORE + size + AFTER, np.uint8)
                data[BEFORE:BEFORE + size] = body[int(off[c]):int(off[stop])]
                shift = off[c] - BEFORE
                yield row0 + c, data, off[c:stop] - shift, off[c + 1:stop + 1] - shift, as_words(data)
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
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), len(enc.dictionary)


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


class _Parts(NamedTuple):
    """One array of op ids parsed: each row's number and prefix (an index into *reps*, the prefixes' bytes)."""

    seq: np.ndarray
    prefix: np.ndarray
    reps: list[bytes]
    top: np.ndarray
    """The largest number of each prefix."""


_memo: list[tuple[tuple[int, ...], Any, _Parts]] | None = None
"""The last array parsed, while :func:`remembering` (None: not remembering)."""


@contextmanager
def remembering() -> Iterator[None]:
    """Within this block, the op ids of the last array coded are kept, so that coding the same array again (the
    history's op ids: for duplicates, then for the join with the ledger) reads its bytes once."""
    global _memo
    outer = _memo
    _memo = [] if outer is None else outer
    try:
        yield
    finally:
        _memo = outer


def _key(array: Any) -> tuple[int, ...]:
    """An array's identity: where its bytes are (while the array is alive, nothing else is there), and its slice."""
    return (*(b.address if b is not None else 0 for b in array.buffers()), array.offset, len(array))


def _op_id_codes(arrays: list[Any]) -> tuple[np.ndarray, int] | None:
    """Codes of op ids ``<prefix>-<number>`` (a number without leading zeros): prefixes are told apart by their bytes
    (up to seven of them: exactly; longer ones by a hash checked byte for byte against the first row with that hash)
    and numbered; the code is the number offset by its prefix's base. None when a value has another form."""
    import numpy as np

    parts = []
    for array in arrays:
        key = _key(array)
        got = next((p for k, _, p in _memo if k == key), None) if _memo else None
        if got is None:
            got = _op_id_parts(array)
            if got is None:
                return None
            if _memo is not None:
                _memo[:] = [(key, array, got)]  # the array itself is held: its buffers stay where they are
        parts.append(got)
    number: dict[bytes, int] = {}  # a prefix's bytes -> its number over every array
    where = [np.array([number.setdefault(r, len(number)) for r in p.reps], np.int64) for p in parts]
    top = np.zeros(len(number), np.int64)
    for p, w in zip(parts, where, strict=True):
        np.maximum.at(top, w, p.top)
    base = np.concatenate([[0], np.cumsum(top + 1)])
    n = sum(len(a) for a in arrays)
    size = int(base[-1])
    if size > 4 * n + (1 << 20):
        return None  # sparse numbers: the dictionary is smaller
    codes = np.empty(n, np.int64)
    row0 = 0
    for p, w in zip(parts, where, strict=True):
        offset = base[w]  # each prefix of this array: its base
        for c in range(0, len(p.seq), BLOCK):  # in blocks: no temporary of the whole column
            stop = min(c + BLOCK, len(p.seq))
            np.add(offset[p.prefix[c:stop]], p.seq[c:stop], out=codes[row0 + c:row0 + stop])
        row0 += len(p.seq)
    return codes, size


BLOCK = 1 << 20
"""Rows per step where a step over a whole column would only make temporaries (and page faults) of its size."""


def _op_id_parts(array: Any) -> _Parts | None:
    """:class:`_Parts` of one array of op ids (None when a value is not ``<prefix>-<number>``)."""
    import numpy as np

    n = len(array)
    seq = np.empty(n, np.int64)
    prefix = np.empty(n, np.int16)  # at most 4096 prefixes
    known: dict[int, int] = {}  # key (or hash) of a prefix -> its number
    reps: list[bytes] = []  # each prefix's bytes
    masks = np.array(_MASKS, dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    for c, data, start, end, words in _chunks(array):
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
        code = np.full(len(h), -1, np.int16)
        todo = None
        if len(known) <= PREFIXES_BY_MASK:  # a compare per known prefix (no gathers); new prefixes peeled below
            assigned = 0
            for hv, number in known.items():
                same_m = h == np.uint64(hv)
                k = int(np.count_nonzero(same_m))
                if k:
                    np.putmask(code, same_m, number)
                    assigned += k
                    if assigned == len(h):
                        break
            if assigned < len(h):
                todo = np.flatnonzero(code < 0)
        else:
            todo = np.arange(len(h))
        while todo is not None and len(todo):  # prefixes not known yet: peel them off one by one
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
    return _Parts(seq, prefix, reps, top)


PREFIXES_BY_MASK = 16
"""Up to this many known prefixes, a chunk's rows get theirs by one comparison per prefix (a ledger interleaves the
processes' op ids); with more, by peeling the distinct ones off one after the other."""


def find_rows(column: Any, needle: bytes) -> np.ndarray:
    """Rows of a binary column whose bytes contain *needle* (a scan of each buffer, not row by row)."""
    import numpy as np

    found = []
    row0 = 0
    pattern = re.compile(re.escape(needle))
    for array in _arrays(column):
        off, body = _body(array)
        view = memoryview(body.data)[int(off[0]):int(off[-1])] if len(off) > 1 else memoryview(b"")
        hits = [m.start() for m in pattern.finditer(view)]
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
