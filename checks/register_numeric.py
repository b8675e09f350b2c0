"""The register checks as array operations, for histories in which the checks find nothing to report.

The micro-operations are read from the bytes of the ``result`` column with numpy (``{"txn":[["r",5,"p-1:0"],…]}``
exactly as orjson writes it), each value coded as a whole number (equal numbers for equal strings, and only for
them: a value's bytes, zero-padded to whole words, with its length, dictionary-encoded by Arrow), and the write log
from its Arrow columns. The version order per key, each read's version, the ``wr``/``rw``/``ww`` edges and their
count, the strongly connected components and every condition under which :mod:`checks.register` would report
something are then computed over arrays.

:func:`judge` gives the results of :func:`checks.register.write_log` and :func:`checks.register.isolation` (same
verdicts, counts, summaries) only when both find no anomaly and no disagreement: no evidence to name. Anything
else — a forbidden or allowed anomaly, a log that disagrees with the history, a cycle, an operation recorded only
in the log, a value or key of another type, bytes not in the form above — raises :class:`Declined`, and the view
over Python values (:class:`checks.register.RegisterView`, :func:`checks.graph.analyse`) decides and names the
evidence, as before. ``tests/test_register_numeric.py`` compares both on random histories with planted anomalies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from checks import CheckResult
from checks.columns import FinalState, numpy, one
from checks.graph import Analysis
from checks.parse import _MASKS, CHUNK, _arrays, _body, _digits, _matches, as_words, string_codes
from checks.register import _writes, isolation_verdict, log_verdict
from toolclash import columnar as files
from toolclash.history import FAIL, OK

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

MAX_VALUE_BYTES = 64
"""Longer values (a run's values are ``<op id>:<index>``) send the run to the view over Python values."""
PAD = MAX_VALUE_BYTES + 32
"""Zero bytes around a copied buffer: words may be read that far past a value's start."""


class Declined(Exception):
    """The history is not in the form read here, or the checks would report something: the view decides."""


def judge(ops: pa.Table, final: FinalState, incomplete: frozenset[str]) -> list[CheckResult]:
    """``[register.log, register.isolation]`` of a history (the register tool's operations) in which neither check
    finds anything to report; raises :class:`Declined` otherwise."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if "register_log" not in final:
        raise Declined("no write log")
    claim = final.get("isolation") or {}
    level, expect = str(claim.get("level", "")), str(claim.get("expect", ""))
    registers = {int(k): v for k, v in _rows(final, "registers")}
    logt = final.table("register_log")
    n = ops.num_rows
    if logt is None or n == 0 or logt.num_rows == 0 or not _lists(logt, 4):
        raise Declined("no write log table, or no operation")
    types = [logt.schema.field(i).type for i in range(4)]
    if types != [pa.int64(), pa.int64(), pa.string(), pa.string()] or any(c.null_count for c in logt.columns):
        raise Declined("write log columns of other types")
    seq, lkey = numpy(logt.column(0)), numpy(logt.column(1))
    lval, lop = one(logt.column(2)), one(logt.column(3))
    m = len(seq)

    outcome = ops.column("outcome")
    ok = numpy(pc.fill_null(pc.equal(outcome, OK), False))
    fail = numpy(pc.fill_null(pc.equal(outcome, FAIL), False))
    doubt = ~ok & ~fail
    op_ids = one(ops.column("op_id"))
    if op_ids.null_count:
        raise Declined("an op id is missing")
    codes, size = string_codes([op_ids, lop])
    row_of = np.full(size, -1, np.int64)
    row_of[codes[:n]] = np.arange(n)
    if np.count_nonzero(row_of >= 0) != n:
        raise Declined("an op id recorded twice")
    writer = row_of[codes[n:]]  # the history row of each log row's operation
    if (writer < 0).any():
        raise Declined("log rows of an operation not in the history (phantom, or of an incomplete process)")
    logged = np.zeros(n, bool)
    logged[writer] = True
    if (fail & logged).any():
        raise Declined("a failed operation's writes are logged")
    committed = ok | (doubt & logged)
    in_doubt = {"committed": int(np.count_nonzero(doubt & logged)),
                "not_committed": int(np.count_nonzero(doubt & ~logged)), "reads_unknown": 0,
                "from_incomplete_history": 0}
    in_doubt["reads_unknown"] = _in_doubt_reads(ops, np.flatnonzero(doubt), logged)

    mops = _micro_ops(ops.column("result"), n)
    row, is_w, key = mops["row"], mops["write"], mops["key"]
    has_txn = np.zeros(n, bool)
    has_txn[row] = True
    if (fail & ~has_txn).any():
        raise Declined("a failed operation without its micro-operations (the view reads its arguments)")
    lv_off, lv_data = _padded(lval)
    llen = np.diff(lv_off)
    width = 8 * -(-max(int(mops["length"].max(initial=0)), int(llen.max(initial=0))) // 8)
    if width > MAX_VALUE_BYTES:
        raise Declined("long values")
    # each value as the log row that holds it: -1 null, -2 a value not in the log
    mval = _value_ids((mops["data"], mops["start"], mops["length"]), (lv_data, lv_off[:-1], llen), width)
    mval[mops["null"]] = -1

    # the write log: each key's last value its register's final value
    commit = np.argsort(seq, kind="stable")  # commit order, as sorted(log, key=seq)
    order = commit[np.argsort(lkey[commit], kind="stable")]  # per key, in commit order
    gk, gw = lkey[order], writer[order]
    key_end = np.ones(m, bool)
    key_end[:-1] = gk[:-1] != gk[1:]
    last_rows = order[key_end]
    last_value = dict(zip(gk[key_end].tolist(), lval.take(pa.array(last_rows)).to_pylist(), strict=True))
    for k, value_now in sorted(registers.items()):
        if value_now != last_value.get(k):
            raise Declined("a register's final value is not its last logged value")

    # the write log against the acknowledged writes
    okm = ok[row]
    wv = mval[okm & is_w]
    if not ((wv >= 0).all() and (lkey[wv] == key[okm & is_w]).all()):
        raise Declined("an acknowledged write is not logged (or a write of null)")

    # version order: a transaction's consecutive writes of a key install its last one (the others are intermediate)
    keep = key_end | np.concatenate([gw[:-1] != gw[1:], [True]])
    ki = np.flatnonzero(keep)
    kk, kw, kv = gk[ki], gw[ki], order[ki]
    kend = key_end[ki]
    if _repeats(kk, kw, n):
        raise Declined("a transaction's writes of a key are not consecutive in the log")
    kstart = np.concatenate([[True], kend[:-1]])
    first_of = np.maximum.accumulate(np.where(kstart, np.arange(len(ki)), 0))
    version = np.full(m, -1, np.int64)  # by log row: its value's position in its key's order (from 1), -1 if
    version[kv] = np.arange(len(ki)) - first_of + 1  # intermediate
    vwriter = np.full(m, -1, np.int64)
    vwriter[kv] = kw
    vnext = np.full(m, -1, np.int64)
    vnext[kv[:-1]] = np.where(kend[:-1], -1, kw[1:])
    keys = kk[kstart]
    first_writer = kw[kstart]
    ww_src, ww_dst = kw[:-1][~kend[:-1]], kw[1:][~kend[:-1]]

    # each transaction's micro-operations per key, in order: own writes, reads, and what each read saw
    r, w, k, c, jj = row[okm], is_w[okm], key[okm], mval[okm], mops["index"][okm]
    if len(r):
        kmin, span, per_row = int(k.min()), int(k.max() - k.min()) + 1, int(jj.max()) + 1
        if n * span * per_row < 2**62:
            g = np.argsort((r * span + (k - kmin)) * per_row + jj)  # (row, key, index): each one distinct
        else:
            g = np.lexsort((jj, k, r))
        r, w, k, c = r[g], w[g], k[g], c[g]
    n_mops = len(r)
    idx = np.arange(n_mops)
    gstart = np.ones(n_mops, bool)
    gstart[1:] = (r[1:] != r[:-1]) | (k[1:] != k[:-1])
    group_first = np.maximum.accumulate(np.where(gstart, idx, 0))
    last_w = np.maximum.accumulate(np.where(w, idx, -1))
    covered = ~w & (last_w >= group_first)  # a read after the transaction's own write of the key
    if (c[covered] != c[last_w[covered]]).any():
        raise Declined("internal: a read that is not the transaction's own earlier write")
    read = ~w & ~covered
    rr, rk, rc = r[read], k[read], c[read]
    if (rc == -2).any():
        raise Declined("a read of a value nobody logged (G1a, garbage)")
    null = rc == -1
    rc = np.maximum(rc, 0)  # null reads: no log row (their lookups below are not used)
    pos = np.where(null, 0, version[rc])
    if ((pos < 0) | (~null & (lkey[rc] != rk))).any():
        raise Declined("a read of a value that is not an installed version of its key (G1b, garbage)")
    at = np.searchsorted(keys, rk)
    has_key = at < len(keys)
    has_key[has_key] = keys[at[has_key]] == rk[has_key]
    src_w = np.where(null, -1, vwriter[rc])
    nxt = np.where(null, np.where(has_key, first_writer[np.minimum(at, len(keys) - 1)], -1), vnext[rc])
    wr = (src_w >= 0) & (src_w != rr)
    rw = (nxt >= 0) & (nxt != rr)
    # lost update: two transactions that read the same version of a key (last, before writing it) and wrote it
    if n_mops:
        first_write = np.flatnonzero(w & ((idx == group_first) | (last_w[idx - 1] < group_first)))
        before = first_write[first_write > group_first[first_write]] - 1  # the read just before it
        rpos = np.full(n_mops, -1, np.int64)
        rpos[read] = pos
        bk, bp = k[before], rpos[before]
        if _repeats(bk, bp, m + 1):
            raise Declined("lost update")
    src = np.concatenate([src_w[wr], rr[rw], ww_src])
    dst = np.concatenate([rr[wr], nxt[rw], ww_dst])
    if len(src) and not _forward(n, src, dst, writer, commit, rr, src_w, committed) and _cyclic(n, src, dst):
        raise Declined("a cycle")
    counts: dict[str, Any] = {"ops": n, "log_rows": m, "missing": 0, "failed_but_logged": 0, "phantom": 0,
                              "duplicate_values": 0, "final_mismatch": 0, "duplicate_op_ids": 0,
                              "in_doubt": dict(in_doubt)}
    from checks import Evidence

    analysis = Analysis(transactions=int(np.count_nonzero(committed)), edges=len(src))
    return [log_verdict(counts, Evidence()), isolation_verdict(analysis, level, expect, in_doubt, incomplete)]


def _lists(table: pa.Table, width: int) -> bool:
    """Whether *table* holds rows that were lists of *width* values (``[seq, key, value, op id]``)."""
    return bool((table.schema.metadata or {}).get(b"toolclash.rows") == b"lists" and table.num_columns == width)


def _rows(final: FinalState, key: str) -> Any:
    """The rows of a small key of the final state, as the view reads them (a table of them when it was stored as
    one)."""
    if key not in final.tables:
        return final.get(key, [])
    table = final.tables[key]
    if not _lists(table, 2):
        raise Declined(f"{key} stored as a table of another form")
    return zip(*(c.to_pylist() for c in table.columns), strict=True)


def _repeats(a: np.ndarray, b: np.ndarray, b_size: int) -> bool:
    """Whether a pair ``(a[i], b[i])`` occurs twice (*b* in ``range(b_size)``)."""
    import numpy as np

    if len(a) < 2:
        return False
    lo, hi = int(a.min()), int(a.max())
    if (hi - lo + 1) * b_size < 2**62:  # one number per pair: a sort of whole numbers
        pairs = np.sort((a - lo) * b_size + b)
        return bool((pairs[1:] == pairs[:-1]).any())
    order = np.lexsort((b, a))
    return bool(((a[order][1:] == a[order][:-1]) & (b[order][1:] == b[order][:-1])).any())


def _in_doubt_reads(ops: pa.Table, rows: np.ndarray, logged: np.ndarray) -> int:
    """The planned reads of the in-doubt calls the log shows committed (their arguments, as the view reads them)."""
    import numpy as np
    import pyarrow as pa

    if not len(rows):
        return 0
    if len(rows) > 5000:
        part = ops.take(pa.array(rows)).combine_chunks()
        records = [r for b in part.to_batches() for r in files.decode(b)]
    else:  # a few: each from its own batch (a take, or a slice of the table, resolves every chunk of it)
        batches = ops.to_batches()
        first = np.cumsum([0, *(b.num_rows for b in batches)])
        records = []
        for i in rows.tolist():
            b = int(np.searchsorted(first, i, side="right")) - 1
            records.extend(files.decode(batches[b].slice(i - int(first[b]), 1)))
    reads = 0
    for i, op in zip(rows.tolist(), records, strict=True):
        planned = op["args"]["txn"]
        _writes(op["op_id"], planned)  # what the view evaluates for every in-doubt call (it may raise)
        if logged[i]:
            reads += sum(1 for f, _, _ in planned if f == "r")
    return reads


def _padded(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a binary or string column (its chunks one after the other), the bytes copied once into
    one buffer with :data:`PAD` zero bytes around them."""
    import numpy as np

    spans = [_body(array) for array in _arrays(column)]
    out = np.empty(PAD + sum(int(off[-1] - off[0]) for off, _ in spans) + PAD, np.uint8)
    out[:PAD] = 0
    out[len(out) - PAD:] = 0
    at = PAD
    starts = []
    for off, body in spans:
        lo, hi = int(off[0]), int(off[-1])
        out[at:at + hi - lo] = body[lo:hi]
        starts.append(off[:-1] - lo + at)
        at += hi - lo
    starts.append(np.array([at], np.int64))
    return np.concatenate(starts), out


def _controls(body: np.ndarray) -> tuple[int, bool]:
    """(bytes below 32 or above 127, whether there is a backslash), read a piece at a time (in the cache)."""
    import numpy as np

    count, backslash = 0, False
    signed = body.view(np.int8)
    for at in range(0, len(body), 1 << 22):
        piece = signed[at:at + (1 << 22)]
        count += int(np.count_nonzero(piece < 32))
        backslash = backslash or bool((piece == 92).any())
    return count, backslash


_OPEN = b'{"txn":['
_TXN_END = b"]}\n"
_EMPTY = b"{}\n"
_READ, _WRITE = int.from_bytes(b'["r",', "little"), int.from_bytes(b'["w",', "little")
_NULL = int.from_bytes(b"null]", "little")


def _micro_ops(column: Any, n: int) -> dict[str, np.ndarray]:
    """The micro-operations of a ``result`` column: for each, its row, its index in the row, whether it is a write,
    its key, whether its value is null, and where its value's bytes are. Each row is walked from its start, one
    micro-operation of every row at a time, so every byte of every row is accounted for: rows are ``{}`` or
    ``{"txn":[…]}`` as orjson writes them, keys whole numbers, values strings without escapes, or null; else
    :class:`Declined`."""
    import numpy as np

    if column.null_count:
        raise Declined("a null result")
    off, data = _padded(column)
    words = as_words(data)
    body = data[PAD:len(data) - PAD]
    if _controls(body) != (n, False):  # only the rows' newlines, no escape
        raise Declined("control bytes, non-ASCII bytes or escapes")
    start, end = off[:-1], off[1:]
    length = end - start
    empty = length == 3
    txn = ~empty
    bare = length == 11  # {"txn":[]}
    if not (_matches(words, start[empty], _EMPTY) and not (length[txn] < 11).any()
            and _matches(words, start[txn], _OPEN) and _matches(words, end[txn] - 3, _TXN_END)
            and (data[start[bare] + 8] == 93).all()):
        raise Declined("a result of another form")
    parts: list[tuple[np.ndarray, ...]] = []
    every = np.flatnonzero(txn & ~bare)
    for first in range(0, len(every), CHUNK):  # a chunk of rows at a time: the temporaries stay in the cache
        _walk(every[first:first + CHUNK], start, end, data, words, parts)
    cols = [np.concatenate(c) if parts else np.zeros(0, np.int64) for c in zip(*parts, strict=True)] or [
        np.zeros(0, np.int64)] * 7
    return {"row": cols[0], "index": cols[1], "write": cols[2].astype(bool, copy=False), "key": cols[3],
            "null": cols[4].astype(bool, copy=False), "start": cols[5], "length": cols[6], "data": data}


def _walk(rows: np.ndarray, start: np.ndarray, end: np.ndarray, data: np.ndarray, words: np.ndarray,
          parts: list[tuple[np.ndarray, ...]]) -> None:
    """The micro-operations of *rows* (each with at least one) into *parts*: the first of every row, then the second
    of those that have one, and so on (see :func:`_micro_ops`)."""
    import numpy as np

    p = start[rows] + 8
    u = np.uint64
    mask5 = u(_MASKS[5])
    quote = u(0x2222222222222222)
    ones, highs = u(0x0101010101010101), u(0x8080808080808080)
    j = 0
    while len(rows):
        head = words[p] & mask5
        write = head == u(_WRITE)
        if not (write | (head == u(_READ))).all():
            raise Declined("a micro-operation of another form")
        key, digits = _digits(words, p + 5, len(p))
        if ((digits == 0) | (digits > 18) | ((data[p + 5] == 48) & (digits > 1))).any():
            raise Declined("a key that is not a whole number as orjson writes it")
        q = p + 5 + digits
        null = (words[q + 1] & mask5) == u(_NULL)
        string = data[q + 1] == 34
        if not ((data[q] == 44).all() and (null | string).all()):
            raise Declined("a micro-operation of another form")
        vstart = q + 2
        size = np.zeros(len(p), np.int64)
        todo = np.flatnonzero(string)
        for at in range(0, MAX_VALUE_BYTES + 8, 8):  # the closing quote, eight bytes at a time
            if not len(todo):
                break
            x = words[vstart[todo] + at] ^ quote
            hit = (x - ones) & ~x & highs  # its lowest flag is the first quote byte
            found = hit != 0
            low = hit[found] & (~hit[found] + u(1))
            size[todo[found]] = at + (np.frexp(low.astype(np.float64))[1] - 1) // 8
            todo = todo[~found]
        if len(todo):
            raise Declined("a value longer than MAX_VALUE_BYTES")
        e = np.where(string, vstart + size + 2, q + 6)  # just past the micro-operation's ]
        if not (data[e - 1] == 93).all():
            raise Declined("a micro-operation of another form")
        parts.append((rows, np.full(len(rows), j, np.int64), write, key, null, vstart, size))
        more = data[e] == 44
        done = ~more
        stop, row_end = e[done], end[rows[done]]
        if not (_matches(words, stop, _TXN_END) and (stop + 3 == row_end).all()):
            raise Declined("a result of another form")
        rows, p = rows[more], e[more] + 1
        j += 1


def _value_ids(mops: tuple[np.ndarray, np.ndarray, np.ndarray], log: tuple[np.ndarray, np.ndarray, np.ndarray],
               width: int) -> np.ndarray:
    """For each value given as (bytes, starts, lengths) in *mops*: the row of *log* whose value is the same string,
    or -2 when there is none. Values are compared word by word (zero-padded to *width*) after a lookup by a hash of
    their words; :class:`Declined` if two log values have the same hash (two equal values, or a rare collision)."""
    import numpy as np
    import pandas as pd

    nw = max(width // 8, 1)
    masks = np.array(_MASKS, np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)

    def slots(data: np.ndarray, st: np.ndarray, ln: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        words = as_words(data)
        got = [words[st + 8 * k] & masks[np.clip(ln - 8 * k, 0, 8)] for k in range(nw)]
        h = ln.astype(np.uint64) * mult
        for w in got:
            h = (h ^ w) * mult
            h ^= h >> np.uint64(29)
        return got, h

    mw, mh = slots(*mops)
    lw, lh = slots(*log)
    index = pd.Index(lh)
    if not index.is_unique:
        raise Declined("a value logged twice (or two log values with the same hash)")
    at = index.get_indexer(mh).astype(np.int64)
    hit = np.flatnonzero(at >= 0)
    same = mops[2][hit] == log[2][at[hit]]
    for a, b in zip(mw, lw, strict=True):
        same &= a[hit] == b[at[hit]]
    at[hit[~same]] = -1  # the same hash, another string
    at[at < 0] = -2
    return at


def _forward(n: int, src: np.ndarray, dst: np.ndarray, writer: np.ndarray, commit: np.ndarray, reader: np.ndarray,
             read_from: np.ndarray, committed: np.ndarray) -> bool:
    """Whether every edge goes forward in commit order (then the graph has no cycle, and no component search is
    needed): a transaction that wrote is placed at its last log row, one that only read just after the last writer
    it read from. False says nothing (:func:`_cyclic` then decides)."""
    import numpy as np

    seq_order = np.empty(len(commit), np.int64)
    seq_order[commit] = np.arange(len(commit))  # each log row's place in commit order
    rank = np.full(n, -1, np.int64)
    np.maximum.at(rank, writer, 2 * seq_order + 2)
    only_read = committed & (rank < 0)
    after = np.where(read_from >= 0, rank[np.maximum(read_from, 0)] + 1, 1)  # between it and the next writer
    got = np.ones(n, np.int64)
    np.maximum.at(got, reader, after)
    rank = np.where(only_read, got, rank)
    return bool((rank[src] < rank[dst]).all())


def _cyclic(n: int, src: np.ndarray, dst: np.ndarray) -> bool:
    """Whether the graph has a strongly connected component of more than one node (scipy's linear-time search)."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    graph = csr_matrix((np.ones(len(src), dtype=np.int8), (src.astype(np.int32), dst.astype(np.int32))),
                       shape=(n, n))
    count, _ = connected_components(graph, directed=True, connection="strong")
    return bool(count < n)
