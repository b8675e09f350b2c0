"""Operation history: one record per tool call, written in batches off the agent's path.

Record fields (DESIGN.md): ``run_id, op_id, process, agent, tool, strategy, args, invoke_ts,
complete_ts, outcome, attempts, error_class, result`` plus ``reason`` (why a call failed or is in
doubt). ``outcome`` is ``ok`` (the effect happened), ``fail`` (it definitely did not) or
``unknown`` (in doubt). Timestamps are Unix seconds (float).

Each process writes ``history/<process>.arrow`` (columnar, :mod:`toolclash.columnar`; runs of older versions
and hand-written tests have ``history/<process>.jsonl``, read the same way) and, when it closes cleanly, a
``history/<process>.done.json`` holding its record count; :func:`read_history` uses those
to tell a complete history from one cut short by a crashed process. The process that judges the run
lists every process that took part in ``processes.json`` (:class:`Roster`) as it joins, so that a process
whose history never arrived at all is not invisible: :func:`read_history` reports it as incomplete too.

``python -m toolclash.history RUN_DIR`` prints a run's records as JSON lines.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import orjson

from toolclash import columnar

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"
OUTCOMES = (OK, FAIL, UNKNOWN)


class Op(TypedDict):
    """One operation record (one tool call, or one observation such as a pool sample), as written and read."""

    run_id: str
    op_id: str
    """Unique in the run: ``<process>-<sequence>``."""
    process: str
    agent: str
    tool: str
    strategy: str
    args: dict[str, Any]
    invoke_ts: float
    """Unix seconds when the call began."""
    complete_ts: float
    outcome: str
    """``ok`` (the effect happened), ``fail`` (it definitely did not) or ``unknown`` (in doubt)."""
    attempts: int
    error_class: str | None
    reason: str | None
    """Why a call failed or is in doubt."""
    result: dict[str, Any]


def make_op(*, run_id: str, op_id: str, process: str, agent: str, tool: str, strategy: str, args: dict[str, Any],
       invoke_ts: float, complete_ts: float, outcome: str, attempts: int = 0, error_class: str | None = None,
       reason: str | None = None, result: dict[str, Any] | None = None) -> Op:
    """The one place an operation record is made (agents, observers, tests and the benchmark all call this)."""
    return {"run_id": run_id, "op_id": op_id, "process": process, "agent": agent, "tool": tool,
            "strategy": strategy, "args": args, "invoke_ts": invoke_ts, "complete_ts": complete_ts,
            "outcome": outcome, "attempts": attempts, "error_class": error_class, "reason": reason,
            "result": {} if result is None else result}


def process_name(worker_index: int | None = None) -> str:
    """A name for this process that is unique across hosts: ``host-pid`` (plus the worker index)."""
    host = socket.gethostname().split(".")[0][:32] or "host"
    suffix = f"-w{worker_index}" if worker_index is not None else ""
    return f"{host}-{os.getpid()}{suffix}"


class HistoryWriter:
    """Collects operation records in memory and writes them to a history file in batches.

    :meth:`record` only appends to a list (no I/O on the agent's path); a background thread
    (a greenlet under gevent's monkey patching) writes every ``flush_interval`` seconds.
    :meth:`close` writes what is left and the ``.done.json`` marker.
    """

    def __init__(self, directory: str | os.PathLike[str] | None, *, run_id: str, process: str,
                 flush_interval: float = 0.5, sink: Callable[[list[Any]], None] | None = None) -> None:
        """Write to ``<directory>/<process>.arrow``, or, with *sink*, hand each batch to *sink* instead
        (a worker ships its batches to the master, which writes them with :class:`HistoryReceiver`)."""
        if directory is None and sink is None:
            raise ValueError("HistoryWriter needs a directory or a sink")
        self.run_id = run_id
        self.process = process
        self._sink = sink
        self.path = Path(directory or ".") / f"{process}{columnar.SUFFIX}"
        self._flush_interval = flush_interval
        self._buffer: list[Op | dict[str, Any]] = []
        self._seq = itertools.count(1)
        self._written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._lock = threading.Lock()
        self.closed = False

    def new_op_id(self) -> str:
        """A new operation id, unique in the run: ``<process>-<sequence>``."""
        return f"{self.process}-{next(self._seq)}"

    def start(self) -> HistoryWriter:
        """Open the file (unless batches go to a sink) and start the background flusher."""
        columnar.warm_up()
        if self._sink is None:
            self._file = columnar.StreamAppender(self.path)
        self._thread = threading.Thread(target=self._run, name=f"history-{self.process}", daemon=True)
        self._thread.start()
        return self

    def record(self, rec: Op | dict[str, Any]) -> None:
        """Queue one operation record (must already hold every field)."""
        self._buffer.append(rec)

    def _run(self) -> None:
        while not self._stop.wait(self._flush_interval):
            self.flush()

    def flush(self) -> int:
        """Write the queued records now; returns how many were written."""
        with self._lock:
            batch, self._buffer = self._buffer, []
            if batch and self._sink is not None:
                self._sink(batch)
                self._written += len(batch)
                return len(batch)
            if not batch or self._file is None:
                self._buffer[:0] = batch
                return 0
            self._file.append(batch)
            self._written += len(batch)
            return len(batch)

    @property
    def written(self) -> int:
        return self._written

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def close(self) -> int:
        """Stop the flusher, write the rest and the completion marker; returns the record count."""
        if self.closed:
            return self._written
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self._sink is not None:
            self.flush()
            self.closed = True
            return self._written
        if self._file is None and self._buffer:  # never started: still write what was recorded
            self._file = columnar.StreamAppender(self.path)
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        marker = self.path.with_suffix(".done.json")
        marker.write_bytes(orjson.dumps({"process": self.process, "records": self._written}))
        self.closed = True
        return self._written


class HistoryReceiver:
    """The master's side of shipped histories: appends each worker's batches to its file and writes the
    ``.done.json`` marker only when the worker's final count matches what arrived (so the hand-off
    works whether or not the hosts share a filesystem, and a short delivery stays visibly incomplete)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        columnar.warm_up()
        self.directory = Path(directory)
        self.received: dict[str, int] = {}
        self._files: dict[str, Any] = {}

    def add(self, process: str, records: list[dict[str, Any]]) -> None:
        fh = self._files.get(process)
        if fh is None:
            fh = self._files[process] = columnar.StreamAppender(self.directory / f"{process}{columnar.SUFFIX}")
        if records:
            fh.append(records)
        self.received[process] = self.received.get(process, 0) + len(records)

    def done(self, process: str, records: int) -> bool:
        """The worker says it sent *records* in all: mark complete if that many arrived."""
        fh = self._files.pop(process, None)
        if fh is not None:
            fh.close()
        ok = self.received.get(process, 0) == records
        if ok:
            (self.directory / f"{process}.done.json").write_bytes(
                orjson.dumps({"process": process, "records": records}))
        return ok

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


ROSTER = "processes.json"
"""The run directory's list of every process that took part (see :class:`Roster`)."""


class Roster:
    """Every process that took part in a run, in ``<run_dir>/processes.json``, written as each one joins.

    The process that judges the run keeps it: a single process lists itself; a Locust master lists itself
    (it records no operations: ``history`` false) and each worker as it connects, by its Locust client id,
    with its process name once the worker told it. :func:`read_history` then expects a complete history
    of every listed process that records operations, whether or not any file of it arrived.
    """

    def __init__(self, run_dir: str | os.PathLike[str], run_id: str) -> None:
        self.path = Path(run_dir) / ROSTER
        self.run_id = run_id
        self.entries: dict[str, dict[str, Any]] = {}

    def join(self, key: str, *, process: str | None, role: str, history: bool = True) -> None:
        """List a process (*key*: its Locust client id, or its process name); rewrites the file."""
        known = self.entries.get(key)
        if known is not None:
            if process and not known.get("process"):
                self.name(key, process)
            return
        self.entries[key] = {"key": key, "process": process or None, "role": role, "history": history,
                             "joined_at": time.time()}
        self.write()

    def name(self, key: str, process: str) -> None:
        """The process name of *key* arrived (a worker learns its own at its start and says it)."""
        entry = self.entries.get(key)
        if entry is not None and entry.get("process") != process:
            entry["process"] = process
            self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(orjson.dumps({"run_id": self.run_id, "processes": list(self.entries.values())},
                                     option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)


def read_roster(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
    """The processes listed in ``<run_dir>/processes.json``; None when the file is missing or unreadable."""
    path = Path(run_dir) / ROSTER
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    entries = data.get("processes") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else None


@dataclass
class History:
    """All operation records of a run, with what is known about the completeness of each process's history."""

    ops: list[dict[str, Any]]
    processes: dict[str, int] = field(default_factory=dict)
    """Records read per process."""
    incomplete: dict[str, str] = field(default_factory=dict)
    """Processes whose history is not known to be complete, with the reason (an unnamed one by ``worker <id>``)."""
    roster: list[dict[str, Any]] | None = None
    """The processes ``processes.json`` lists (None: the run directory does not say which processes took part)."""
    unnamed: list[str] = field(default_factory=list)
    """Listed processes whose name never arrived: their operations cannot be told from anyone else's."""

    @property
    def complete(self) -> bool:
        return not self.incomplete

    @property
    def attributable(self) -> bool:
        """Every process that took part is known by name, so every effect can be traced to its process."""
        return self.roster is not None and not self.unnamed


def history_files(run_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(process, path)`` of every history file of a run, in the order they are read."""
    paths = [*Path(run_dir, "history").glob("*.jsonl"), *Path(run_dir, "history").glob(f"*{columnar.SUFFIX}")]
    return [(p.name[: -len(p.suffix)], p) for p in sorted(paths)]


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one history file; a torn last record (a crashed writer) is skipped."""
    if path.suffix == columnar.SUFFIX:
        return columnar.iter_records(path)
    return iter_jsonl(path)


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one JSON-lines history file; a torn last line (a crashed writer) is skipped."""
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return
            yield orjson.loads(line)


def _marker_count(marker: Path) -> Any:
    try:
        return orjson.loads(marker.read_bytes()).get("records")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None


def read_history(run_dir: str | os.PathLike[str]) -> History:
    """Read ``<run_dir>/history/*.arrow`` (and ``*.jsonl``); a file without its ``.done.json`` marker, or whose
    count differs from the marker's, is reported in :attr:`History.incomplete`, and so is every process that
    ``processes.json`` lists with no history at all (its file never arrived, or was lost). The same files as one
    columnar table: :func:`read_history_table`."""
    ops: list[dict[str, Any]] = []

    def read(path: Path) -> int:
        before = len(ops)
        ops.extend(iter_records(path))
        return len(ops) - before

    found = read_files(run_dir, read)
    return History(ops=ops, processes=found.processes, incomplete=found.incomplete, roster=found.roster,
                   unnamed=found.unnamed)


@dataclass
class Files:
    """What reading a run's history files tells about its processes (see :func:`read_files`)."""

    processes: dict[str, int]
    """Records read per process."""
    incomplete: dict[str, str]
    """Processes whose history is not known to be complete, with the reason."""
    roster: list[dict[str, Any]] | None
    """``processes.json``: every process that took part (None: a run directory without it)."""
    unnamed: list[str]
    """Processes the roster lists without a name (their effects cannot be told apart)."""


def read_files(run_dir: str | os.PathLike[str], read: Callable[[Path], int]) -> Files:
    """Read every history file of a run with *read* (which returns the records it read), then match them with
    the markers and with ``processes.json``: a process that recorded nothing leaves only its marker, and one the
    roster lists with no history at all (its file never arrived, or was lost) is incomplete."""
    processes: dict[str, int] = {}
    incomplete: dict[str, str] = {}
    for name, path in history_files(run_dir):
        processes[name] = read(path)
        why = incomplete_why(path, processes[name])
        if why:
            incomplete[name] = why
    for marker in sorted(Path(run_dir, "history").glob("*.done.json")):
        name = marker.name[: -len(".done.json")]
        if name not in processes:
            processes[name] = 0
            expected = _marker_count(marker)
            if expected != 0:
                incomplete[name] = f"0 records read, {expected} written (its history file is missing)"
    roster = read_roster(run_dir)
    unnamed: list[str] = []
    for entry in roster or []:
        if not entry.get("history", True):
            continue
        listed = entry.get("process")
        if not listed:
            key = f"worker {entry.get('key')}"
            unnamed.append(key)
            incomplete[key] = "took part in the run, but its process name never reached the master"
        elif str(listed) not in processes:
            incomplete[str(listed)] = "took part in the run, but no history of it arrived"
    return Files(processes, incomplete, roster, unnamed)


def incomplete_why(path: Path, records: int) -> str | None:
    """Why the history file at *path*, of which *records* were read, is not known to be complete (None: it is)."""
    marker = path.with_suffix(".done.json")
    if not marker.exists():
        return "history not closed (process stopped before flushing)"
    expected = _marker_count(marker)
    if expected != records:
        return f"{records} records read, {expected} written"
    return None


@dataclass
class HistoryTable:
    """All operation records of a run as one Arrow table (the columns of :func:`toolclash.columnar.schema`), with
    what is known about the completeness of each file (as :class:`History`)."""

    table: Any
    processes: dict[str, int] = field(default_factory=dict)
    incomplete: dict[str, str] = field(default_factory=dict)
    roster: list[dict[str, Any]] | None = None
    unnamed: list[str] = field(default_factory=list)

    @property
    def typed(self) -> bool:
        """Every record is in the typed columns (none stored whole): the columnar checks can read them."""
        return bool(self.table.column("raw").null_count == self.table.num_rows)

    @property
    def attributable(self) -> bool:
        """Every process that took part is known by name (see :attr:`History.attributable`)."""
        return self.roster is not None and not self.unnamed

    def history(self) -> History:
        """The same records as :func:`read_history` gives them (Python dicts)."""
        ops = [op for batch in self.table.to_batches() for op in columnar.decode(batch)]
        return History(ops=ops, processes=dict(self.processes), incomplete=dict(self.incomplete), roster=self.roster,
                       unnamed=list(self.unnamed))


def read_history_table(run_dir: str | os.PathLike[str], *,
                       progress: Callable[[int, int, int, float], None] | None = None) -> HistoryTable:
    """The history of a run as one columnar table (memory-mapped ``.arrow`` files, JSON lines converted): what
    :func:`read_history` reads, without a Python object per record. *progress(files read, files, records read,
    seconds)* is called after each file that took a while (JSON lines of an older run take seconds per million)."""
    import time

    import pyarrow as pa

    found: list[pa.RecordBatch] = []
    files = len(history_files(run_dir))
    started = last = time.monotonic()
    counted = [0, 0]  # files, records

    def read(path: Path) -> int:
        nonlocal last
        got = _read_batches(path)
        found.extend(got)
        count = sum(b.num_rows for b in got)
        counted[0] += 1
        counted[1] += count
        now = time.monotonic()
        if progress is not None and now - last > 1.0:
            progress(counted[0], files, counted[1], now - started)
            last = now
        return count

    read_out = read_files(run_dir, read)
    return HistoryTable(pa.Table.from_batches(found, schema=columnar.schema()), read_out.processes,
                        read_out.incomplete, read_out.roster, read_out.unnamed)


def _read_batches(path: Path) -> list[Any]:
    if path.suffix == columnar.SUFFIX:
        return list(columnar.batches(path))
    return list(columnar.jsonl_batches(iter_jsonl(path)))


def main(argv: list[str] | None = None) -> int:
    """``python -m toolclash.history RUN_DIR|FILE``: the records as JSON lines, file after file."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m toolclash.history", description=main.__doc__)
    parser.add_argument("path", help="a run directory (reports/<run-id>), its history/ directory, or one file")
    parser.add_argument("--tool", help="only the records of this tool")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="at most N records (default: all)")
    args = parser.parse_args(argv)
    target = Path(args.path)
    if target.is_file():
        paths = [target]
    else:
        run = target.parent if target.name == "history" else target
        paths = [p for _, p in history_files(run)]
        if not paths:
            sys.stderr.write(f"python -m toolclash.history: no history file under {run / 'history'}; pass a run "
                             "directory (reports/<run-id>) or a history file\n")
            return 2
    shown = 0
    out = sys.stdout.buffer
    try:
        for path in paths:
            for rec in iter_records(path):
                if args.tool and rec.get("tool") != args.tool:
                    continue
                out.write(orjson.dumps(rec) + b"\n")
                shown += 1
                if args.limit and shown >= args.limit:
                    return 0
    except BrokenPipeError:  # `| head`
        return 0
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
