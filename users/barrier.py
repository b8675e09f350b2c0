"""A run-wide barrier: agents on every process meet before acting (``--sync``), through the master.

A worker sends each arrival to the master; the master (or the single process) counts arrivals and, at the
last one, releases its own agents and tells every worker. The transport is given by the process's role.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import gevent.event


class Barrier:
    """Named barriers of one run in one process."""

    def __init__(self, *, parties: Callable[[], int], send_arrival: Callable[[str], None] | None = None,
                 broadcast_release: Callable[[str], None] | None = None) -> None:
        """*send_arrival* (a worker's: to the master) replaces counting here; *broadcast_release* (the master's)
        tells the workers that a barrier opened."""
        self._parties = parties
        self._send_arrival = send_arrival
        self._broadcast = broadcast_release
        self._events: dict[str, gevent.event.Event] = {}
        self._arrivals: Counter[str] = Counter()

    def wait(self, name: str, timeout: float) -> bool:
        """Wait until every party has arrived at *name*; False on timeout (the agent goes on alone)."""
        event = self._events.setdefault(name, gevent.event.Event())
        if self._send_arrival is not None:
            self._send_arrival(name)
        else:
            self.arrive(name)
        return bool(event.wait(timeout))

    def arrive(self, name: str) -> None:
        """Count one arrival (master or single process); release everybody at the last one."""
        self._arrivals[name] += 1
        if self._arrivals[name] == self._parties():
            self.release(name)
            if self._broadcast is not None:
                self._broadcast(name)

    def release(self, name: str) -> None:
        self._events.setdefault(name, gevent.event.Event()).set()
