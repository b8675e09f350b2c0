"""Histories from workers to the master over Locust's messages (no shared filesystem needed).

A worker's :class:`HistoryWriter` hands each batch to :func:`worker_writer`'s sink, which sends it as
``tc_history_batch``; at stop the worker sends ``tc_history_done`` with its record count. The master's
:class:`Collector` appends each worker's batches to ``history/<process>.arrow`` and marks a history complete
only when the count matches. Locust fires ``test_stop`` on a headless master before its workers finish
(see the docs' notes on Locust), so the master asks every worker to stop and deliver (``tc_stop``) and
waits for each one's count, up to a deadline: a worker that never answers is *lost*.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import gevent

from toolclash.history import HistoryReceiver, HistoryWriter

log = logging.getLogger("toolclash")

HANDOFF_TIMEOUT_S = 15.0
"""How long the master waits for each worker's final history count (plus the run's --stop-timeout)."""
MISSING_GRACE_S = 3.0
"""After asking for the histories, how long the master still waits for a worker that Locust's heartbeat has marked
missing (a frozen or killed worker) before it stops waiting for it: its history is then incomplete, and the verdict
unknown."""


def worker_writer(runner: Any, run_id: str, process: str) -> HistoryWriter:
    """A worker's history writer: every batch goes to the master as a message."""

    def ship(batch: list[dict[str, Any]]) -> None:
        runner.send_message("tc_history_batch", {"run_id": run_id, "process": process, "records": batch})

    return HistoryWriter(None, run_id=run_id, process=process, sink=ship).start()


def worker_done(runner: Any, run_id: str, process: str, count: int) -> None:
    """The worker's last word: its final request statistics, then how many records it sent in all."""
    runner._send_stats()  # private, but it is how a worker flushes its last request stats
    runner.send_message("tc_history_done", {"run_id": run_id, "process": process, "records": count})


class Collector:
    """The master's side of one run's hand-off."""

    def __init__(self, run_id: str, history_dir: Path) -> None:
        self.run_id = run_id
        self.receiver = HistoryReceiver(history_dir)
        self.done: dict[str, dict[str, Any]] = {}
        """Worker client id → its final message."""
        self.lost: list[str] = []

    def on_batch(self, msg: Any) -> None:
        if msg.data.get("run_id") == self.run_id:
            self.receiver.add(msg.data["process"], msg.data["records"])

    def on_done(self, msg: Any) -> None:
        if msg.data.get("run_id") != self.run_id:
            return
        process, count = msg.data["process"], msg.data["records"]
        if not self.receiver.done(process, count):
            log.error("worker %s reported %s records but %s arrived; its history stays incomplete", process, count,
                      self.receiver.received.get(process))
        self.done[msg.node_id] = msg.data

    def collect(self, runner: Any, stop_timeout_s: float, dead: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Ask every worker to stop and deliver; wait for each one's final count (not for the *dead*: workers
        known killed). Returns the lost workers."""
        everyone = {c.id for c in runner.clients.all} | set(dead)
        expected = everyone - set(dead)
        runner.send_message("tc_stop", {"run_id": self.run_id})
        started = time.monotonic()
        deadline = started + HANDOFF_TIMEOUT_S + stop_timeout_s
        while not expected.issubset(self.done) and time.monotonic() < deadline:
            if time.monotonic() - started > MISSING_GRACE_S:  # Locust stopped hearing from it: waiting is in vain
                expected -= {c.id for c in runner.clients.missing} - set(self.done)
            gevent.sleep(0.05)
        self.lost = sorted(everyone - set(self.done))
        for worker in self.lost:
            log.error("worker %s delivered no final history count; its in-flight operations stay unknown", worker)
        self.receiver.close()
        return self.lost
