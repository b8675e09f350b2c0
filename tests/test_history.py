"""Operation history: the batched writer, its completion marker, and the reader's view of completeness."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from toolclash import columnar
from toolclash.history import (
    History,
    HistoryWriter,
    iter_records,
    main,
    process_name,
    read_history,
    read_history_table,
)

RUN_ID = "t-history"


def record(writer: HistoryWriter, n: int, outcome: str = "ok") -> dict[str, Any]:
    """A full operation record with a fresh op id from *writer*."""
    return {
        "run_id": RUN_ID, "op_id": writer.new_op_id(), "process": writer.process, "agent": f"agent-{n}",
        "tool": "deduct", "strategy": "atomic", "args": {"account": 1 + n % 3, "amount": n},
        "invoke_ts": 1_700_000_000.0 + n, "complete_ts": 1_700_000_000.01 + n, "outcome": outcome,
        "attempts": 1, "error_class": None, "reason": None, "result": {"n": n},
    }


def writer(tmp_path: Path, process: str = "p1", flush_interval: float = 3600.0) -> HistoryWriter:
    # a flusher that (in these tests) never fires on its own unless asked for a short interval
    return HistoryWriter(tmp_path / "history", run_id=RUN_ID, process=process, flush_interval=flush_interval)


def lines(path: Path) -> int:
    """Records in one history file (0 before it exists)."""
    return sum(1 for _ in iter_records(path)) if path.exists() else 0


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    """Poll *condition* until it holds or *timeout* passes; True if it held."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        tick.wait(0.005)
    return bool(condition())


def test_records_written_in_batches_are_read_back_in_order(tmp_path: Path) -> None:
    w = writer(tmp_path).start()
    sent: list[dict[str, Any]] = []
    for batch in (3, 1, 4):
        for _ in range(batch):
            rec = record(w, len(sent))
            sent.append(rec)
            w.record(rec)
        assert w.flush() == batch
    assert w.close() == 8
    history = read_history(tmp_path)
    assert isinstance(history, History)
    assert history.ops == sent
    assert history.processes == {"p1": 8}
    assert history.complete
    assert history.incomplete == {}


def test_record_does_no_io_until_flushed(tmp_path: Path) -> None:
    w = writer(tmp_path).start()
    try:
        for n in range(5):
            w.record(record(w, n))
        assert w.pending == 5
        assert w.written == 0
        assert lines(w.path) == 0
    finally:
        w.close()
    assert lines(w.path) == 5


def test_op_ids_are_unique_and_name_the_process(tmp_path: Path) -> None:
    w1, w2 = writer(tmp_path, "hostA-1"), writer(tmp_path, "hostB-1")
    ids = [w.new_op_id() for _ in range(500) for w in (w1, w2)]
    assert len(set(ids)) == len(ids) == 1000
    assert ids[:4] == ["hostA-1-1", "hostB-1-1", "hostA-1-2", "hostB-1-2"]


def test_process_name_is_host_pid_and_worker() -> None:
    assert process_name().endswith(f"-{os.getpid()}")
    assert process_name(3).endswith(f"-{os.getpid()}-w3")


def test_close_writes_done_marker_and_is_idempotent(tmp_path: Path) -> None:
    w = writer(tmp_path).start()
    for n in range(3):
        w.record(record(w, n))
    assert w.close() == 3
    marker = tmp_path / "history" / "p1.done.json"
    assert orjson.loads(marker.read_bytes()) == {"process": "p1", "records": 3}
    assert w.closed
    assert w.close() == 3
    assert read_history(tmp_path).complete


def test_several_processes_are_read_together(tmp_path: Path) -> None:
    writers = [writer(tmp_path, p).start() for p in ("p2", "p1")]
    for w in writers:
        for n in range(4):
            w.record(record(w, n))
        w.close()
    history = read_history(tmp_path)
    assert history.processes == {"p1": 4, "p2": 4}
    assert [o["op_id"] for o in history.ops] == [f"p1-{i}" for i in range(1, 5)] + [f"p2-{i}" for i in range(1, 5)]
    assert history.complete


def test_file_without_marker_is_incomplete(tmp_path: Path) -> None:
    w = writer(tmp_path).start()
    for n in range(2):
        w.record(record(w, n))
    w.close()
    (tmp_path / "history" / "p1.done.json").unlink()  # as if the process died before closing
    history = read_history(tmp_path)
    assert len(history.ops) == 2
    assert not history.complete
    assert history.incomplete == {"p1": "history not closed (process stopped before flushing)"}


def test_torn_last_line_is_skipped_and_the_file_incomplete(tmp_path: Path) -> None:
    w = writer(tmp_path).start()
    sent = [record(w, n) for n in range(3)]
    for rec in sent:
        w.record(rec)
    w.close()
    (tmp_path / "history" / "p1.done.json").unlink()
    torn = columnar.encode([record(w, 3)]).serialize().to_pybytes()
    with open(w.path, "ab") as fh:
        fh.write(torn[: len(torn) // 2])  # a crash in the middle of a write
    history = read_history(tmp_path)
    assert history.ops == sent
    assert history.processes == {"p1": 3}
    assert "p1" in history.incomplete
    assert not history.complete


def test_marker_count_differing_from_the_file_is_incomplete(tmp_path: Path) -> None:
    w = writer(tmp_path).start()
    for n in range(3):
        w.record(record(w, n))
    w.close()
    (tmp_path / "history" / "p1.done.json").write_bytes(orjson.dumps({"process": "p1", "records": 5}))
    history = read_history(tmp_path)
    assert history.incomplete == {"p1": "3 records read, 5 written"}


def test_other_process_incomplete_leaves_the_complete_one_alone(tmp_path: Path) -> None:
    for p in ("p1", "p2"):
        w = writer(tmp_path, p).start()
        w.record(record(w, 0))
        w.close()
    (tmp_path / "history" / "p2.done.json").unlink()
    history = read_history(tmp_path)
    assert set(history.incomplete) == {"p2"}
    assert history.processes == {"p1": 1, "p2": 1}


def test_writer_flushes_in_the_background(tmp_path: Path) -> None:
    w = writer(tmp_path, flush_interval=0.01).start()
    try:
        for n in range(5):
            w.record(record(w, n))
        assert wait_until(lambda: lines(w.path) == 5), f"{lines(w.path)} lines after 5 s"
        assert w.written == 5
        assert w.pending == 0
        assert not (tmp_path / "history" / "p1.done.json").exists()  # flushed, not closed
        for n in range(5, 8):
            w.record(record(w, n))
        assert wait_until(lambda: lines(w.path) == 8)
    finally:
        w.close()
    history = read_history(tmp_path)
    assert [o["result"]["n"] for o in history.ops] == list(range(8))
    assert history.complete


def test_close_without_start_keeps_the_records(tmp_path: Path) -> None:
    """close() "writes what is left": records queued on a writer never started must not vanish
    behind a done marker that says the history is complete."""
    (tmp_path / "history").mkdir()  # as create_run_dir leaves it
    w = writer(tmp_path)
    for n in range(2):
        w.record(record(w, n))
    count = w.close()
    history = read_history(tmp_path)
    assert (count, len(history.ops)) == (2, 2)


def test_shipped_batches_are_written_by_the_receiver_and_a_short_delivery_stays_incomplete(tmp_path: Path) -> None:
    """Workers ship batches (no shared filesystem); the master's receiver marks complete only on a matching count."""
    from toolclash.history import HistoryReceiver

    receiver = HistoryReceiver(tmp_path / "history")
    writer = HistoryWriter(None, run_id="r", process="w1", sink=lambda batch: receiver.add("w1", batch))
    for i in range(5):
        writer.record({"op_id": writer.new_op_id(), "i": i})
        writer.flush()
    assert receiver.done("w1", writer.close()) is True
    receiver.add("w2", [{"op_id": "w2-1"}])
    assert receiver.done("w2", 2) is False  # the worker says 2, one arrived
    history = read_history(tmp_path)
    assert [op["i"] for op in history.ops if "i" in op] == [0, 1, 2, 3, 4]
    assert history.processes == {"w1": 5, "w2": 1}
    assert set(history.incomplete) == {"w2"}


def test_a_listed_process_whose_history_never_arrived_is_incomplete(tmp_path: Path) -> None:
    """Before processes.json, read_history only knew the files that exist: a worker lost before its first batch
    left no trace at all."""
    from toolclash.history import HistoryReceiver, Roster

    roster = Roster(tmp_path, RUN_ID)
    roster.join("master", process="m", role="master", history=False)  # records nothing: no history expected
    roster.join("client-1", process="p1", role="worker")
    roster.join("client-2", process=None, role="worker")  # its name never came
    roster.join("client-3", process="p3", role="worker")  # recorded nothing: only its marker
    roster.name("client-2", "p2")
    roster.join("client-4", process=None, role="worker")
    w = writer(tmp_path, "p1").start()
    w.record(record(w, 0))
    w.close()
    assert HistoryReceiver(tmp_path / "history").done("p3", 0) is True
    history = read_history(tmp_path)
    assert history.processes == {"p1": 1, "p3": 0}
    assert history.incomplete == {"p2": "took part in the run, but no history of it arrived",
                                  "worker client-4": "took part in the run, but its process name never reached the "
                                                     "master"}
    assert history.unnamed == ["worker client-4"] and not history.attributable
    assert [e["process"] for e in history.roster or []] == ["m", "p1", "p2", "p3", None]


def test_without_processes_json_the_history_is_not_attributable(tmp_path: Path) -> None:
    w = writer(tmp_path).start()
    w.record(record(w, 0))
    w.close()
    history = read_history(tmp_path)
    assert history.complete and history.roster is None and not history.attributable


# --- the file format ------------------------------------------------------------------------------------------------


def test_records_read_back_exactly_whatever_their_shape(tmp_path: Path) -> None:
    """Typed columns where the records fit them, whole JSON where they do not: read back equal either way, and the
    columnar table holds the same records."""
    w = writer(tmp_path).start()
    shaped = [record(w, n) for n in range(3)]
    odd = [{**record(w, 3), "invoke_ts": 1_700_000_000}, {"op_id": w.new_op_id(), "tool": "x"},
           {**record(w, 5), "args": {"txn": [["r", 1, None]], "abort": False}, "attempts": None}]
    mixed_args = [{**record(w, 6), "args": {"account": 1, "amount": 2**63}}, {**record(w, 7), "args": {}}]
    for batch in (shaped, odd[:1], odd[1:2], odd[2:], mixed_args):
        for rec in batch:
            w.record(rec)
        w.flush()
    w.close()
    sent = shaped + odd + mixed_args
    got = read_history(tmp_path).ops
    assert got == sent
    assert type(got[3]["invoke_ts"]) is int  # 1_700_000_000 comes back as written, not 1.7e9
    table = read_history_table(tmp_path)
    assert table.history().ops == sent
    assert not table.typed  # some batches are whole JSON
    assert table.table.num_rows == len(sent)


def test_integer_arguments_are_stored_as_numbers(tmp_path: Path) -> None:
    w = writer(tmp_path).start()
    sent = [record(w, n) for n in range(4)]
    for rec in sent:
        w.record(rec)
    w.close()
    table = read_history_table(tmp_path)
    assert table.typed
    assert table.table.column("args").null_count == 4  # no JSON written
    assert table.table.column("arg_ints").to_pylist() == [[1 + n % 3, n] for n in range(4)]
    assert read_history(tmp_path).ops == sent


def test_json_lines_of_an_older_run_are_read_alike(tmp_path: Path) -> None:
    """A run directory written before the columnar format (or a hand-written test history) reads the same."""
    hdir = tmp_path / "history"
    hdir.mkdir()
    w = writer(tmp_path)
    sent = [record(w, n) for n in range(3)]
    (hdir / "p1.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in sent))
    (hdir / "p1.done.json").write_bytes(orjson.dumps({"process": "p1", "records": 3}))
    assert read_history(tmp_path).ops == sent
    table = read_history_table(tmp_path)
    assert (table.history().ops, table.processes, table.incomplete) == (sent, {"p1": 3}, {})


def test_the_printer_shows_a_run_by_eye(tmp_path: Path, capsys: Any) -> None:
    w = writer(tmp_path).start()
    sent = [record(w, n) for n in range(3)]
    for rec in sent:
        w.record(rec)
    w.close()
    assert main([str(tmp_path), "--limit", "2"]) == 0
    shown = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert shown == sent[:2]
    assert main([str(tmp_path / "nothing-here")]) == 2
    assert "no history file" in capsys.readouterr().err


def test_warm_up_readies_pyarrow_without_pandas_and_pandas_still_imports_after() -> None:
    """Every Locust process warms the writer up at init: pandas (1.2 s of CPU) must not come with it."""
    import subprocess
    import sys

    code = ("import sys; from toolclash import columnar; columnar.warm_up(); assert 'pandas' not in sys.modules; "
            "import pyarrow as pa; assert pa.array(['a'], pa.string()).to_pylist() == ['a']; "
            "import pandas; assert pandas.DataFrame({'a': [1]}).shape == (1, 1); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
