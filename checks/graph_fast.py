""":func:`checks.graph.analyse` with its per-operation loop over arrays: the same :class:`checks.graph.Analysis`
(counts, examples in the same order, edges, components), about 1 µs less per read.

The Python loop of :func:`checks.graph.analyse` visits every micro-operation of every committed transaction; here
the micro-operations are flattened once into arrays (transaction, key, is-a-write), and

* a read shadowed by the transaction's own earlier write of the key (no edge; an ``internal`` anomaly if it saw
  another value) is found by sorting the micro-operations by (transaction, key): a running count of writes;
* the version each other read saw is one dictionary lookup (the version order's own index), and its ``wr`` and
  ``rw`` edges are array lookups in the writers of each version;
* ``ww`` edges are consecutive versions of a key; ``lost-update`` groups are the (key, version) pairs that more
  than one transaction read last before its first write of the key.

Rare events (reads of a value that is not an installed version, aborted reads, internal reads) keep the Python
code of :mod:`checks.graph`, in the order the loop meets them; so do the cycle searches, which run only inside
components that have a cycle. A history this does not read exactly (a micro-operation that is not a triple) goes
to :func:`checks.graph.analyse` itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from itertools import chain, compress, islice, repeat
from operator import eq, itemgetter, ne
from typing import Any

from checks.graph import Analysis, Txn, _aborted_read, _cycles, _unseen_read, _Versions, _who, analyse


def analyse_fast(committed: Sequence[Txn], versions: Mapping[Any, Sequence[tuple[Any, str]]], *,
                 initial: Any = None, aborted: Iterable[Txn] = (),
                 describe: Callable[[str], Mapping[str, Any]] | None = None) -> Analysis:
    """:func:`checks.graph.analyse`, the same result (see the module's documentation)."""
    aborted = list(aborted)
    try:
        return _analyse(committed, versions, initial, aborted, describe)
    except Exception:  # noqa: BLE001 - a history this does not read: analyse says what is wrong with it
        return analyse(committed, versions, initial=initial, aborted=aborted, describe=describe)


def _analyse(committed: Sequence[Txn], versions: Mapping[Any, Sequence[tuple[Any, str]]], initial: Any,
             aborted: list[Txn], describe: Callable[[str], Mapping[str, Any]] | None) -> Analysis:
    import numpy as np

    mops = [m for _, m in committed]
    flat = list(chain.from_iterable(mops))
    if set(map(type, flat)) - {list, tuple} or set(map(len, flat)) - {3}:
        return analyse(committed, versions, initial=initial, aborted=aborted, describe=describe)
    out = Analysis(transactions=len(committed))
    node = dict(zip(map(itemgetter(0), committed), range(len(committed)), strict=True))
    ver = _versions(versions, node, initial)
    aborted_writes: dict[Hashable, dict[Any, str]] = defaultdict(dict)
    aborted_ids: set[str] = set()
    for op_id, ops in aborted:
        aborted_ids.add(op_id)
        for f, k, v in ops:
            if f == "w":
                aborted_writes[k][v] = op_id
    n = len(flat)
    fs, ks, vs = (tuple(map(itemgetter(i), flat)) for i in range(3))
    lens = np.fromiter(map(len, mops), np.int64, len(mops))
    txn = np.repeat(np.arange(len(mops)), lens)
    write = _is_write(fs)
    kc, keys = _key_codes(ks)
    # -- within a transaction: writes of the same key before each micro-operation (sort by transaction, key)
    order = np.argsort(txn * max(len(keys), 1) + kc, kind="stable")
    group = np.r_[True, (txn[order][1:] != txn[order][:-1]) | (kc[order][1:] != kc[order][:-1])] if n else \
        np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(group, np.arange(n), 0)) if n else np.zeros(0, np.int64)
    w_sorted = write[order].astype(np.int64)
    before = np.cumsum(w_sorted) - w_sorted
    before -= before[start]  # writes of the key earlier in the transaction
    shadowed_sorted = before > 0
    shadowed = np.empty(n, bool)
    shadowed[order] = shadowed_sorted
    # -- each read the transaction did not shadow: the version it saw
    reads = np.flatnonzero(~write & ~shadowed)
    info = ver.info
    p_arr = np.empty(len(reads), np.int64)  # the position of the value read in its key's versions (-1: none)
    by_key = np.argsort(kc[reads], kind="stable")
    cuts = np.flatnonzero(np.diff(kc[reads][by_key])) + 1
    for rows in np.split(by_key, cuts) if len(reads) else ():
        first = int(reads[rows[0]])
        k = ks[first]
        pos = (info.get(k) or ver.empty(k))[0]
        got = map(pos.get, map(vs.__getitem__, reads[rows].tolist()), repeat(-1))
        p_arr[rows] = np.fromiter(got, np.int64, len(rows))
    base: dict[Hashable, int] = {}
    writers: list[list[int]] = []
    nexts: list[list[int]] = []
    size = 0
    for key, (_, wid, nxt) in info.items():
        base[key] = size
        writers.append(wid)
        nexts.append(nxt)
        size += len(wid)
    wid_all = np.fromiter(chain.from_iterable(writers), np.int64, size)
    next_all = np.fromiter(chain.from_iterable(nexts), np.int64, size)
    found = p_arr >= 0
    key_base = np.fromiter((base.get(k, 0) for k in keys), np.int64, len(keys))
    g = key_base[kc[reads]] + p_arr
    g = np.where(found, g, 0)
    t_read = txn[reads]
    w_of = np.where(found, wid_all[g] if size else -1, -1)
    n_of = np.where(found, next_all[g] if size else -1, -1)
    wr = found & (w_of >= 0) & (w_of != t_read)
    rw = found & (n_of >= 0) & (n_of != t_read)
    ww_a, ww_b = wid_all[:-1], wid_all[1:]
    same_key = np.ones(max(size - 1, 0), bool)
    for b in base.values():
        if 0 < b <= size - 1:
            same_key[b - 1] = False  # a key's first version does not follow the previous key's last
    ww = same_key & (ww_a >= 0) & (ww_b >= 0) & (ww_a != ww_b)
    src = np.concatenate([w_of[wr], t_read[rw], ww_a[ww]])
    dst = np.concatenate([t_read[wr], n_of[rw], ww_b[ww]])
    # -- rare events, in the order analyse's loop meets them
    events: list[tuple[int, Callable[[], None]]] = []
    internal = np.flatnonzero(~write & shadowed)
    if len(internal):
        last_write = np.maximum.accumulate(np.where(write[order], np.arange(n), -1))
        own = np.empty(n, np.int64)
        own[order] = order[last_write]
        for i in internal.tolist():
            j = int(own[i])
            if vs[j] != vs[i]:
                events.append((i, _internal(out, committed[int(txn[i])][0], ks[i], vs[i], vs[j])))
    for r in np.flatnonzero(~found).tolist():
        i = int(reads[r])
        events.append((i, _unseen(out, ver, aborted_writes, committed[int(txn[i])][0], ks[i], vs[i], describe)))
    aborted_writer = found & (w_of < 0) & (p_arr > 0)
    for r in np.flatnonzero(aborted_writer).tolist():
        i = int(reads[r])
        writer = ver.op[ks[i]][int(p_arr[r])]
        if writer in aborted_ids:
            events.append((i, _aborted(out, committed[int(txn[i])][0], ks[i], vs[i], str(writer), describe)))
    for _, add in sorted(events, key=lambda e: e[0]):
        add()
    out.edges = len(src)
    _lost_updates(out, committed, ver, ks, txn, write, order, group, start, reads, found, p_arr, describe)
    if len(src):
        _cycles(out, committed, ver, src, dst, describe)  # type: ignore[arg-type]
    return out


def _is_write(fs: Sequence[Any]) -> Any:
    """``f == "w"`` of every micro-operation (Arrow compares the strings; anything else, one by one)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if set(map(type, fs)) <= {str}:
        return pc.equal(pa.array(fs, pa.string()), "w").to_numpy(zero_copy_only=False)
    return np.fromiter(map(eq, repeat("w", len(fs)), fs), bool, len(fs))


def _key_codes(ks: Sequence[Any]) -> tuple[Any, list[Any]]:
    """A code per key (equal keys, as a dict sees them, share one), and a key for each code."""
    import numpy as np

    if ks and set(map(type, ks)) == {int}:
        values = np.fromiter(ks, np.int64, len(ks)) if max(ks) < 2**63 and min(ks) >= -(2**63) else None
        if values is not None:
            lo = int(values.min())
            if int(values.max()) - lo < 2**24:  # a dense range (register numbers): the number is the code
                present = np.zeros(int(values.max()) - lo + 1, bool)
                present[values - lo] = True
                codes = np.cumsum(present) - 1
                return codes[values - lo], [int(k) + lo for k in np.flatnonzero(present).tolist()]
    keys = list(dict.fromkeys(ks))
    code = dict(zip(keys, range(len(keys)), strict=True))
    return np.fromiter(map(code.__getitem__, ks), np.int64, len(ks)), keys


def _versions(versions: Mapping[Any, Sequence[tuple[Any, str]]], node: Mapping[str, int], initial: Any) -> _Versions:
    """:class:`checks.graph._Versions`, the same attributes, built with C loops (``map``, ``compress``) instead of a
    Python step per row."""
    ver = _Versions.__new__(_Versions)
    ver.initial = initial
    ver.info, ver.value, ver.op, ver.intermediate = {}, {}, {}, {}
    get = node.get
    for key, rows in versions.items():
        if not rows:
            continue
        all_values, ops = zip(*rows, strict=True)
        kept_values: Sequence[Any] = all_values
        kept_ops: Sequence[str] = ops
        n = len(ops)
        if len(set(ops)) != n:  # a transaction wrote the key more than once: its last write counts
            last = list(compress(range(n - 1), map(ne, ops, islice(ops, 1, None))))
            last.append(n - 1)
            kept_ops = tuple(map(ops.__getitem__, last))
            if len(set(kept_ops)) == len(kept_ops):  # its writes were consecutive (under its row lock)
                kept_values = tuple(map(all_values.__getitem__, last))
                dropped = sorted(set(range(n)) - set(last))
                ver.intermediate[key] = {all_values[i]: ops[i] for i in dropped}
            else:
                kept_values, kept_ops = ver._installed(key, rows)
        values = [initial, *kept_values]
        wid = [-1, *map(get, kept_ops, repeat(-1))]
        size = len(values)
        pos = dict(zip(reversed(values), range(size - 1, -1, -1), strict=True))  # first position of a value
        ver.info[key] = (pos, wid, [*wid[1:], -1])
        ver.value[key] = values
        ver.op[key] = [None, *kept_ops]
    return ver


def _internal(out: Analysis, op_id: str, k: Any, read: Any, own: Any) -> Callable[[], None]:
    return lambda: out.add("internal", {"op": op_id, "key": k, "read": read, "own_write": own,
                                        "what": "read a different value than its own earlier write"})


def _unseen(out: Analysis, ver: _Versions, aborted_writes: Mapping[Hashable, Mapping[Any, str]], op_id: str, k: Any,
            v: Any, describe: Callable[[str], Mapping[str, Any]] | None) -> Callable[[], None]:
    return lambda: _unseen_read(out, ver, aborted_writes, op_id, k, v, describe)


def _aborted(out: Analysis, op_id: str, k: Any, v: Any, writer: str,
             describe: Callable[[str], Mapping[str, Any]] | None) -> Callable[[], None]:
    return lambda: _aborted_read(out, op_id, k, v, writer, describe)


def _lost_updates(out: Analysis, committed: Sequence[Txn], ver: _Versions, ks: Sequence[Any], txn: Any, write: Any,
                  order: Any, group: Any, start: Any, reads: Any, found: Any, p_arr: Any,
                  describe: Callable[[str], Mapping[str, Any]] | None) -> None:
    """Transactions that read a version of a key last before their first write of it, grouped by that version."""
    import numpy as np

    n = len(txn)
    if not n:
        return
    version = np.full(n, -1, np.int64)  # the version each unshadowed, found read saw
    version[reads[found]] = p_arr[found]
    w_sorted = write[order]
    first_write = w_sorted & (np.cumsum(w_sorted) - w_sorted - (np.cumsum(w_sorted) - w_sorted)[start] == 0)
    seen = np.where(version[order] >= 0, np.arange(n), -1)  # reads that set `read[k]`
    last_read = np.maximum.accumulate(seen)
    hit = first_write & (last_read >= start)
    if not hit.any():
        return
    writes_at = order[hit]  # the first write of each (transaction, key) after a read of the key
    read_at = order[last_read[hit]]
    by_event = np.argsort(writes_at, kind="stable")
    readers: dict[tuple[Any, int], list[int]] = {}
    for w_i, r_i in zip(writes_at[by_event].tolist(), read_at[by_event].tolist(), strict=True):
        slot = (ks[w_i], int(version[r_i]))
        readers.setdefault(slot, []).append(int(txn[w_i]))
    for (k, p), ts in readers.items():
        if len(ts) > 1:
            out.add("lost-update", {"key": k, "read": ver.value[k][p], "ops": [_who(committed[t][0], describe)
                                                                               for t in ts],
                                    "what": f"{len(ts)} transactions read the same version of the key and each "
                                            "wrote the key: all but one of the writes is lost"})
