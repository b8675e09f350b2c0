"""The binary, columnar form of a run's files: the operation history and the big tables of a final state.

**History** (``history/<process>.arrow``): an Arrow IPC stream, one record batch per flush of
:class:`toolclash.history.HistoryWriter` (or per batch a worker shipped). One column per field of the record;
``args`` and ``result`` hold the JSON of their dict (orjson, one per line, so that the column's bytes are
newline-delimited JSON a columnar reader parses in one call). A batch whose records do not have exactly the
record's fields with their types (a hand-made record, an integer timestamp) is stored whole: each record's JSON in
the ``raw`` column, so reading it back gives exactly what was written. A crash in the middle of a write leaves a
torn last batch: the reader keeps the batches before it.

Why not JSON lines (measured, ``docs/benchmarks.md``): parsing 1M records takes 2 s with orjson (one Python object
per record) or 4 s with pyarrow's JSON reader, and the verdict's goal is 1M records a second from the files.
Writing a batch costs about 1 µs per record more than JSON lines; reading the columns costs nothing (memory-mapped).

**Final state** (``final/<scenario>.arrow``, beside ``final/<scenario>.json``): written by :func:`write_final` when
a table of the final state is big; the JSON stays complete (people and every other reader use it), and the Arrow
file holds the same tables as columns plus the JSON's other keys, with the JSON's size, time and CRC so that a
JSON edited afterwards is never shadowed by a stale copy.

``python -m toolclash.history RUN_DIR|FILE`` prints the records as JSON lines (a run read by eye).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pyarrow as pa

SUFFIX = ".arrow"
FIELDS = ("run_id", "op_id", "process", "agent", "tool", "strategy", "args", "invoke_ts", "complete_ts", "outcome",
          "attempts", "error_class", "reason", "result")
"""The fields of an operation record, in :func:`toolclash.history.make_op`'s order."""
_STR = ("run_id", "op_id", "process", "agent", "tool", "strategy", "outcome", "error_class", "reason")
_FLOAT = ("invoke_ts", "complete_ts")
_JSON = ("args", "result")
_JSON_AT = frozenset(FIELDS.index(f) for f in _JSON)
_ARGS_AT = FIELDS.index("args")
_FLOAT_AT = frozenset(FIELDS.index(f) for f in _FLOAT)
_ATTEMPTS_AT = FIELDS.index("attempts")
_GET = itemgetter(*FIELDS)
NL = orjson.OPT_APPEND_NEWLINE
JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
"""How the run's JSON files are written (:func:`toolclash.run.write_json`)."""
FINAL_MIN_ROWS = 10_000
"""A final state gets its Arrow copy from this many rows in one table on."""


class _Misfit(Exception):
    """A batch that does not fit the typed columns (stored whole, as JSON)."""


@cache
def schema() -> pa.Schema:
    """The columns of a history file."""
    import pyarrow as pa

    types = {"invoke_ts": pa.float64(), "complete_ts": pa.float64(), "attempts": pa.int64(), "args": pa.binary(),
             "result": pa.binary()}
    return pa.schema([(name, types.get(name, pa.string())) for name in FIELDS]
                     + [("arg_keys", pa.string()), ("arg_ints", pa.list_(pa.int64())), ("raw", pa.binary())],
                     metadata={"toolclash": "history 1"})


KEY_SEP = "\x1f"
"""Between the names of ``arg_keys``."""


# ------------------------------------------------------------------------------------------------ writing


def encode(records: Sequence[Mapping[str, Any]]) -> pa.RecordBatch:
    """One record batch of *records* (typed columns, or whole JSON records when they do not fit)."""
    import pyarrow as pa

    sch = schema()
    try:
        return pa.RecordBatch.from_arrays(_typed(records, sch), schema=sch)
    except (_Misfit, KeyError, TypeError, pa.ArrowInvalid, pa.ArrowTypeError):
        dumps = orjson.dumps
        n = len(records)
        nulls = [pa.nulls(n, f.type) for f in sch][:-1]
        return pa.RecordBatch.from_arrays([*nulls, pa.array([dumps(r) for r in records], pa.binary())], schema=sch)


def _typed(records: Sequence[Mapping[str, Any]], sch: pa.Schema) -> list[pa.Array]:
    import pyarrow as pa

    n = len(records)
    if set(map(len, records)) != {len(FIELDS)}:
        raise _Misfit  # a field more or less than a record has
    dumps = orjson.dumps
    columns = list(zip(*map(_GET, records), strict=True))  # KeyError: a field missing
    out = []
    ints = _int_args(columns[_ARGS_AT]) if n else None
    for i, (name, column) in enumerate(zip(FIELDS, columns, strict=True)):
        if i == _ARGS_AT and ints is not None:
            out.append(pa.nulls(n, pa.binary()))
            continue
        if i in _JSON_AT:
            out.append(pa.array([dumps(v, None, NL) for v in column], pa.binary()))
            continue
        if i in _FLOAT_AT and not set(map(type, column)) <= {float}:
            raise _Misfit  # an int timestamp would come back a float
        if i == _ATTEMPTS_AT and not set(map(type, column)) <= {int, type(None)}:
            raise _Misfit
        out.append(pa.array(column, sch.field(name).type))  # a string column refuses what is not a string
    if ints is not None:
        out.extend(ints)
    else:
        out.extend([pa.nulls(n, pa.string()), pa.nulls(n, pa.list_(pa.int64()))])
    out.append(pa.nulls(n, pa.binary()))
    return out


def _int_args(args: Sequence[Any]) -> tuple[pa.Array, pa.Array] | None:
    """``(arg_keys, arg_ints)`` when every record of the batch has arguments with the same names and whole-number
    values (``{"account": 12, "amount": 5}``: no JSON to write or parse); None otherwise."""
    import pyarrow as pa

    if set(map(type, args)) != {dict}:
        return None
    shapes = set(map(tuple, args))
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    if not shape or any(type(k) is not str or KEY_SEP in k for k in shape):
        return None
    values = list(chain.from_iterable(map(dict.values, args)))
    if set(map(type, values)) != {int}:
        return None
    try:
        flat = pa.array(values, pa.int64())
    except (pa.ArrowInvalid, OverflowError):
        return None  # beyond 64 bits
    width = len(shape)
    offsets = pa.array(range(0, width * (len(args) + 1), width), pa.int32())
    keys = KEY_SEP.join(shape)
    return pa.array([keys] * len(args), pa.string()), pa.ListArray.from_arrays(offsets, flat)


def warm_up() -> None:
    """Pay pyarrow's one-time cost now, before the load, rather than at a writer's first flush.

    pyarrow's first conversion of a Python list asks whether pandas is installed, by importing it (about 1.2 s of
    CPU and 60 MB in every Locust process). The history never converts from or to pandas, so that first question
    is answered "no" here, once per process, when pandas is not loaded yet; code that imports pandas later gets
    it as usual."""
    import sys

    import pyarrow as pa

    if "pandas" in sys.modules:
        pa.array([0])
        return
    sys.meta_path.insert(0, _NoPandas)  # `import pandas` raises ImportError meanwhile
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(_NoPandas)


class _NoPandas:
    """An import finder that refuses pandas (see :func:`warm_up`)."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not needed to write a history")


class StreamAppender:
    """Appends record batches to one history file (opened for appending: a file of an earlier writer of the same
    process gets its batches after the ones already there, as JSON lines did)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fresh = not path.exists() or path.stat().st_size == 0
        self._fh = open(path, "ab")  # noqa: SIM115 - closed in close()

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write one batch (the stream's schema first, with the first batch: a file holds bytes once it holds
        records)."""
        head = schema().serialize().to_pybytes() if self._fresh else b""
        self._fh.write(head + encode(records).serialize().to_pybytes())
        self._fh.flush()
        self._fresh = False

    def close(self) -> None:
        self._fh.close()


# ------------------------------------------------------------------------------------------------ reading


def batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of one history file, memory-mapped; a torn last batch ends the file."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except (OSError, pa.ArrowInvalid):
        return  # empty, or torn inside the schema: no record
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (OSError, pa.ArrowInvalid):
            return  # a crash in the middle of a write
        yield batch


def json_lines(column: pa.Array) -> list[Any]:
    """The values of a column of newline-terminated JSON documents, parsed in one call."""
    if len(column) == 0:
        return []
    offsets, data = column.buffers()[1:3]
    import numpy as np

    off = np.frombuffer(offsets, dtype=np.int32, count=len(column) + 1, offset=column.offset * 4)
    body = data.to_pybytes()[off[0]:off[-1]]
    return orjson.loads(b"[" + body[:-1].replace(b"\n", b",") + b"]")


def decode(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The records of one batch, exactly as they were written."""
    raw = batch.column("raw")
    if raw.null_count == len(raw):
        return decode_typed(batch)
    loads = orjson.loads
    if raw.null_count == 0:
        return [loads(r) for r in raw.to_pylist()]
    typed = decode_typed(batch.filter(raw.is_null()))[::-1]  # not written by this module: rows of both kinds
    return [loads(r) if r is not None else typed.pop() for r in raw.to_pylist()]


def decode_typed(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    cols = [json_lines(batch.column(i)) if name in _JSON else batch.column(i).to_pylist()
            for i, name in enumerate(FIELDS)]
    if batch.column("args").null_count:
        cols[_ARGS_AT] = int_args(batch)
    return [{"run_id": a, "op_id": b, "process": c, "agent": d, "tool": e, "strategy": f, "args": g,
             "invoke_ts": h, "complete_ts": i, "outcome": j, "attempts": k, "error_class": m, "reason": n,
             "result": o} for a, b, c, d, e, f, g, h, i, j, k, m, n, o in zip(*cols, strict=True)]


def int_args(batch: pa.RecordBatch) -> list[Any]:
    """The ``args`` of a batch whose arguments are held as whole numbers (``arg_keys``, ``arg_ints``), as dicts; rows
    whose arguments are JSON come from the ``args`` column."""
    keys = batch.column("arg_keys").to_pylist()
    values = batch.column("arg_ints").to_pylist()
    blobs = batch.column("args")
    parsed = json_lines(blobs.filter(blobs.is_valid())) if blobs.null_count < len(blobs) else []
    names: dict[str, list[str]] = {}
    out: list[Any] = []
    j = 0
    for k, v in zip(keys, values, strict=True):
        if k is None:
            out.append(parsed[j])
            j += 1
            continue
        shape = names.get(k)
        if shape is None:
            shape = names[k] = k.split(KEY_SEP)
        out.append(dict(zip(shape, v, strict=True)))
    return out


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one ``.arrow`` history file, in order."""
    for batch in batches(path):
        yield from decode(batch)


def jsonl_batches(records: Iterable[Mapping[str, Any]], size: int = 65536) -> Iterator[pa.RecordBatch]:
    """Records read from JSON lines (a run of an older toolclash, a hand-written test history) as record batches."""
    chunk: list[Mapping[str, Any]] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= size:
            yield encode(chunk)
            chunk = []
    if chunk:
        yield encode(chunk)


# ------------------------------------------------------------------------------------------------ final state


def table_of(rows: Any) -> pa.Table | None:
    """*rows* (a list of flat dicts with the same keys, or of equal-length lists) as an Arrow table whose values
    read back exactly; None when they are not such a table."""
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        return rows
    if not isinstance(rows, list) or not rows:
        return None
    first = rows[0]
    if isinstance(first, dict):
        names = list(first)
        if not all(isinstance(k, str) for k in names) or any(type(r) is not dict or r.keys() != first.keys()
                                                              for r in rows):
            return None
        columns = [[r[k] for r in rows] for k in names]
        kind = "dicts"
    elif isinstance(first, list):
        width = len(first)
        if any(type(r) is not list or len(r) != width for r in rows):
            return None
        columns = [list(c) for c in zip(*rows, strict=True)] if width else []
        names = [str(i) for i in range(width)]
        kind = "lists"
    else:
        return None
    arrays = []
    for column in columns:
        kinds = set(map(type, column)) - {type(None)}
        if len(kinds) > 1 or not kinds <= {int, str, bool, float}:
            return None
        try:
            arr = pa.array(column)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return None  # an integer beyond 64 bits
        if kinds == {float}:
            import numpy as np

            if not np.isfinite(arr.to_numpy(zero_copy_only=False)).all():
                return None  # JSON has no NaN: the copy would differ
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, names=names, metadata={"toolclash.rows": kind})


def write_final(path: Path, data: Any, *, min_rows: int = FINAL_MIN_ROWS) -> bool:
    """Write the final state *data* to *path* (``final/<scenario>.json``) with its Arrow copy beside it when one of
    its tables has at least *min_rows* rows: ``<scenario>.<key>.arrow`` per table and ``<scenario>.columns.json``
    (the JSON's other keys, and its size, time and CRC), written last. A value may be a pyarrow Table (written to
    the JSON row by row, never held as Python objects). False, and nothing written, when no table is that big
    (the caller writes the JSON as usual)."""
    marker = columns_marker(path)
    marker.unlink(missing_ok=True)
    big = {k: v for k, v in data.items() if _rows(v) >= min_rows or _is_table(v)} if isinstance(data, Mapping) else {}
    tables = {k: t for k, v in big.items() if (t := table_of(v)) is not None}
    if not tables:
        return False
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    crc = 0
    with open(tmp, "wb") as fh:
        def put(chunk: bytes) -> None:
            nonlocal crc
            crc = zlib.crc32(chunk, crc)
            fh.write(chunk)

        put(b"{")
        for n, (key, value) in enumerate(data.items()):
            put((b",\n" if n else b"\n") + orjson.dumps(key) + b": ")
            if key not in tables:
                put(orjson.dumps(value, option=JSON_OPTIONS, default=str))
                continue
            put(b"[")
            for i, row in enumerate(_table_rows(tables[key])):
                put((b",\n" if i else b"\n") + orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS, default=str))
            put(b"\n]")
        put(b"\n}\n")
    os.replace(tmp, path)
    files = {}
    for key, table in tables.items():
        name = f"{path.stem}.{key}{SUFFIX}"
        with pa.OSFile(str(path.parent / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(_one_chunk(table))
        files[key] = name
    st = path.stat()
    meta = {"json_size": st.st_size, "json_mtime_ns": st.st_mtime_ns, "json_crc32": crc, "tables": files,
            "rest": {k: v for k, v in data.items() if k not in tables}}
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_bytes(orjson.dumps(meta, option=JSON_OPTIONS, default=str))
    os.replace(tmp, marker)
    return True


def _one_chunk(table: pa.Table) -> pa.Table:
    """*table* as one record batch when its columns can be (a string column holds at most 2 GB in one array): the
    reader then maps each column as one array, which numpy reads in place (10M ledger rows in 100 chunks were
    copied, 0.75 GB, on every verdict)."""
    import pyarrow as pa

    try:
        return table.combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowCapacityError, OverflowError):
        return table


def columns_marker(path: Path) -> Path:
    """``final/<scenario>.columns.json`` for ``final/<scenario>.json``."""
    return path.with_name(f"{path.stem}.columns.json")


def _is_table(value: Any) -> bool:
    return type(value).__name__ == "Table" and type(value).__module__.startswith("pyarrow")


def _rows(value: Any) -> int:
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return int(value.num_rows)
    return len(value) if isinstance(value, list) else 0


def _table_rows(table: pa.Table) -> Iterator[Any]:
    kind = (table.schema.metadata or {}).get(b"toolclash.rows", b"dicts")
    for batch in table.to_batches(max_chunksize=65536):
        if kind == b"lists":
            yield from ([*row] for row in zip(*(c.to_pylist() for c in batch.columns), strict=True))
        else:
            yield from batch.to_pylist()


def read_final_tables(path: Path) -> tuple[dict[str, Any], dict[str, pa.Table]] | None:
    """``(the other keys, {key: table})`` of the final state at *path* (``final/<scenario>.json``) from its Arrow
    copy, or None when there is none or the JSON changed since it was written (the JSON is what counts)."""
    import pyarrow as pa

    marker = columns_marker(path)
    if not marker.is_file() or not path.is_file():
        return None
    try:
        meta = orjson.loads(marker.read_bytes())
        st = path.stat()
        if st.st_size != meta["json_size"]:
            return None
        if st.st_mtime_ns != meta["json_mtime_ns"] and _crc32(path) != meta["json_crc32"]:
            return None
        tables = {key: pa.ipc.open_file(pa.memory_map(str(path.parent / name))).read_all()
                  for key, name in meta["tables"].items()}
        return dict(meta["rest"]), tables
    except (OSError, pa.ArrowInvalid, KeyError, TypeError, orjson.JSONDecodeError):
        return None


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc
