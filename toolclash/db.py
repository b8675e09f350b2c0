"""PostgreSQL access for agents: gevent cooperation, connects with a deadline, SQLSTATE classification.

:func:`patch_gevent` must run before any connection is made in a gevent process (the Locust
plugin calls it in ``events.init``); a blocking libpq call inside a gevent loop stalls every
agent of the process. psycogreen's wait callback ignores libpq's ``connect_timeout``, so
:func:`connect` enforces its own deadline.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions

from toolclash.option import mask_url
from toolclash.retry import DEADLOCK, LOCK_NOT_AVAILABLE, SERIALIZATION

_patch_lock = threading.Lock()
_patched = False


def patch_gevent() -> None:
    """Make psycopg2 cooperate with gevent (idempotent). Call before the first connection."""
    global _patched
    with _patch_lock:
        if not _patched:
            from psycogreen.gevent import patch_psycopg

            patch_psycopg()
            _patched = True


def gevent_patched() -> bool:
    return _patched


class ConnectError(ConnectionError):
    """The database could not be reached. The message is one line: what and how to fix it."""


def connect(url: str, *, timeout: float = 10.0, application_name: str = "toolclash") -> psycopg2.extensions.connection:
    """Open one connection to *url* within *timeout* seconds, or raise :class:`ConnectError`.

    Under gevent the deadline is a ``gevent.Timeout`` (libpq's ``connect_timeout`` is not honoured
    by the wait callback); otherwise libpq's own ``connect_timeout`` applies.
    """
    kwargs: dict[str, Any] = {"application_name": application_name[:63], "connect_timeout": max(1, round(timeout))}
    try:
        if _patched:
            import gevent

            with gevent.Timeout(timeout, ConnectError(f"no connection to {mask_url(url)} within {timeout:g} s")):
                return psycopg2.connect(url, **kwargs)
        return psycopg2.connect(url, **kwargs)
    except psycopg2.OperationalError as exc:
        first = (str(exc).strip().splitlines() or ["connection failed"])[0]
        raise ConnectError(f"cannot connect to {mask_url(url)}: {first}") from None
    except psycopg2.ProgrammingError as exc:  # e.g. invalid dsn
        raise ConnectError(f"bad database URL {mask_url(url)}: {str(exc).strip()}") from None


@dataclass(frozen=True)
class Classified:
    """What an exception from the driver means for a tool call."""

    kind: str
    """``retryable`` (a conflict: retry), ``connection`` (the session is gone), ``timeout``
    (statement or lock timeout), ``error`` (anything else: a definite failure)."""
    cause: str | None
    """Conflict cause for retryable errors (see :mod:`toolclash.retry`)."""
    sqlstate: str | None
    error_class: str
    """SQLSTATE when there is one, else the exception's class name."""


_RETRYABLE = {
    psycopg2.errorcodes.SERIALIZATION_FAILURE: SERIALIZATION,  # 40001
    psycopg2.errorcodes.DEADLOCK_DETECTED: DEADLOCK,  # 40P01
}


def classify(exc: BaseException, *, retry_lock_not_available: bool = False) -> Classified:
    """Map a driver exception to what it means for the call (SQLSTATE → outcome)."""
    sqlstate = getattr(exc, "pgcode", None)
    name = type(exc).__name__
    if sqlstate in _RETRYABLE:
        return Classified("retryable", _RETRYABLE[sqlstate], sqlstate, sqlstate)
    if sqlstate == psycopg2.errorcodes.LOCK_NOT_AVAILABLE:  # 55P03
        if retry_lock_not_available:
            return Classified("retryable", LOCK_NOT_AVAILABLE, sqlstate, sqlstate)
        return Classified("timeout", None, sqlstate, sqlstate)
    if sqlstate == psycopg2.errorcodes.QUERY_CANCELED:  # 57014 statement_timeout
        return Classified("timeout", None, sqlstate, sqlstate)
    if sqlstate and sqlstate.startswith(("08", "57P")):  # connection exception, admin shutdown
        return Classified("connection", None, sqlstate, sqlstate)
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and not sqlstate:
        return Classified("connection", None, None, name)
    return Classified("error", None, sqlstate, sqlstate or name)


def close_quietly(conn: psycopg2.extensions.connection | None) -> None:
    """Close *conn* without a round trip (the server rolls back an open transaction); never raises.

    A connection psycopg2 marked broken (``closed == 2``, e.g. after an interrupted wait) may still
    hold its socket: it is closed too.
    """
    if conn is None or conn.closed == 1:
        return
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - the connection is being thrown away
        pass


# --------------------------------------------------------------------------------------------- the pool


def _is_closed(conn: Any) -> bool:
    return bool(getattr(conn, "closed", True))


class PoolTimeout(ConnectionError):
    """No connection came free within the acquire timeout. The message names the pool, the wait and the queue."""

    def __init__(self, pool: str, waited_s: float, waiting: int, in_use: int, size: int) -> None:
        super().__init__(f"pool {pool!r}: no connection within {waited_s:.3f} s ({in_use}/{size} in use, "
                         f"{waiting} other agent(s) waiting)")
        self.pool, self.waited_s, self.waiting, self.in_use, self.size = pool, waited_s, waiting, in_use, size


class PoolClosed(ConnectionError):
    """The pool was closed (the run is stopping)."""


@dataclass
class Lease:
    """One checked-out connection: who holds it, for which call, since when."""

    conn: Any
    holder: str
    op_id: str | None
    since: float
    """time.monotonic() at checkout."""
    born: float
    """time.monotonic() when the connection was opened (for the max lifetime)."""
    wait_s: float
    """How long the acquire waited for a free slot."""
    waiting_at_acquire: int
    """Other acquirers queued when this one asked."""
    released: bool = False
    leak_reported: bool = False


class _Waiter:
    __slots__ = ("event", "granted", "idle")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False
        self.idle: tuple[Any, float] | None = None
        """A connection handed over by its releaser, or None: the slot is ours to open a new one."""


class Pool:
    """A bounded connection pool with FIFO waiters, an acquire timeout, a max lifetime, a health check on
    checkout and leak tracking.

    Cooperative under gevent: it only uses ``threading`` primitives looked up at call time, which gevent's
    monkey patching (done by Locust) turns into greenlet primitives; under plain threads (tests) it is
    thread-safe. Waiters are served strictly in arrival order: a released connection is handed to the
    oldest waiter, never to a newcomer. ``connect()`` is called outside the lock.

    ``on_event(name, n)`` (optional) receives counters as they happen (``pool_in_use`` and ``pool_waiting``
    are gauges: +1 / -1 deltas that sum to the current value, never exported as counters): ``pool_acquires``,
    ``pool_waits`` (acquires that queued), ``pool_timeouts``, ``pool_opened``,
    ``pool_closed_lifetime``, ``pool_closed_unhealthy``, ``pool_discarded``, ``pool_leaks``.
    """

    def __init__(self, name: str, connect: Callable[[], Any], *, size: int = 20, acquire_timeout_s: float = 5.0,
                 max_lifetime_s: float = 300.0, leak_after_s: float = 30.0, health_check_idle_s: float = 1.0,
                 on_event: Callable[[str, int], None] | None = None) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.name = name
        self.size = size
        self.acquire_timeout_s = acquire_timeout_s
        self.max_lifetime_s = max_lifetime_s
        self.leak_after_s = leak_after_s
        self.health_check_idle_s = health_check_idle_s
        self._connect = connect
        self._on_event = on_event
        self._lock = threading.Lock()
        self._idle: deque[tuple[Any, float, float]] = deque()  # (conn, born, idle since)
        self._waiters: deque[_Waiter] = deque()
        self._leases: dict[int, Lease] = {}
        self._slots = 0
        """Slots taken outside the idle list: checked out, being opened, or handed to a waiter."""
        self._closed = False
        self.counters: Counter[str] = Counter()
        self.wait_max_s = 0.0
        self.leaks: list[dict[str, Any]] = []
        """Every lease ever held longer than ``leak_after_s`` (see :meth:`check_leaks`)."""

    # --- counters ---

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n
        if self._on_event is not None:
            try:
                self._on_event(name, n)
            except Exception:  # noqa: BLE001 - a metrics sink must not break the pool
                pass

    # --- checkout ---

    def acquire(self, holder: str, op_id: str | None = None, timeout: float | None = None) -> Lease:
        """Check a connection out for *holder* (an agent name), waiting in FIFO order up to *timeout*
        (default ``acquire_timeout_s``); raise :class:`PoolTimeout` or :class:`ConnectError`."""
        timeout = self.acquire_timeout_s if timeout is None else timeout
        start = time.monotonic()
        waiter: _Waiter | None = None
        handed: tuple[Any, float] | None = None
        with self._lock:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            waiting = len(self._waiters)
            if not self._waiters and self._idle:
                conn, born, _since = self._idle.pop()  # most recently used: warm, and lets old ones age out
                handed = (conn, born)
                self._slots += 1
            elif not self._waiters and self._slots + len(self._idle) < self.size:
                self._slots += 1
            else:
                waiter = _Waiter()
                self._waiters.append(waiter)
                self._count("pool_waiting")
        if waiter is not None:
            handed = self._wait(waiter, start, timeout)
        wait_s = time.monotonic() - start
        try:
            conn, born = self._checkout(handed)
        except BaseException:
            self._free_slot()
            raise
        lease = Lease(conn, holder, op_id, time.monotonic(), born, wait_s, waiting)
        with self._lock:
            self._leases[id(lease)] = lease
            self.wait_max_s = max(self.wait_max_s, wait_s)
        self._count("pool_acquires")
        self._count("pool_in_use")
        if waiter is not None:
            self._count("pool_waits")
        return lease

    def _wait(self, waiter: _Waiter, start: float, timeout: float) -> tuple[Any, float] | None:
        try:
            waiter.event.wait(max(0.0, timeout - (time.monotonic() - start)))
        except BaseException:  # GreenletExit while queued: leave the queue, pass on a grant that raced in
            with self._lock:
                if not waiter.granted:
                    self._leave_queue(waiter)
                    raise
            self._give_back_grant(waiter)
            raise
        with self._lock:
            if not waiter.granted:
                self._leave_queue(waiter)
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} was closed while waiting")
                waiting, in_use = len(self._waiters), len(self._leases)
                self._count("pool_timeouts")
                raise PoolTimeout(self.name, time.monotonic() - start, waiting, in_use, self.size)
        return waiter.idle

    def _leave_queue(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._count("pool_waiting", -1)

    def _give_back_grant(self, waiter: _Waiter) -> None:
        if waiter.idle is not None:
            conn, born = waiter.idle
            self._put_back(conn, born)
        else:
            self._free_slot()

    def _checkout(self, handed: tuple[Any, float] | None) -> tuple[Any, float]:
        """A usable connection: the handed one if it passes the checks, else a new one."""
        if handed is not None:
            conn, born = handed
            if self._healthy(conn, born):
                return conn, born
            close_quietly(conn)
        conn = self._connect()
        self._count("pool_opened")
        return conn, time.monotonic()

    def _healthy(self, conn: Any, born: float) -> bool:
        """Health check on checkout: open, idle (no transaction left), younger than the max lifetime."""
        if _is_closed(conn):
            self._count("pool_closed_unhealthy")
            return False
        if time.monotonic() - born > self.max_lifetime_s:
            self._count("pool_closed_lifetime")
            return False
        try:
            if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                self._count("pool_closed_unhealthy")
                return False
        except psycopg2.Error:
            self._count("pool_closed_unhealthy")
            return False
        return True

    # --- return ---

    def release(self, lease: Lease, *, discard: bool = False) -> None:
        """Return *lease*'s connection (or close it with *discard*, or when it is broken, in a transaction,
        or past its max lifetime). Releasing twice is a no-op."""
        with self._lock:
            if lease.released:
                return
            lease.released = True
            self._leases.pop(id(lease), None)
        self._count("pool_in_use", -1)
        conn = lease.conn
        if not discard and not _is_closed(conn):
            try:
                if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                    conn.rollback()
            except psycopg2.Error:
                discard = True
        if discard or _is_closed(conn) or time.monotonic() - lease.born > self.max_lifetime_s:
            if not discard and not _is_closed(conn):
                self._count("pool_closed_lifetime")
            elif discard:
                self._count("pool_discarded")
            close_quietly(conn)
            self._free_slot()
            return
        self._put_back(conn, lease.born)

    def _put_back(self, conn: Any, born: float) -> None:
        """A healthy connection comes back: to the oldest waiter if any, else to the idle list."""
        with self._lock:
            if self._closed:
                self._slots -= 1
                close_quietly(conn)
                return
            if self._waiters:
                waiter = self._waiters.popleft()
                self._count("pool_waiting", -1)
                waiter.granted, waiter.idle = True, (conn, born)
                waiter.event.set()
                return
            self._slots -= 1
            self._idle.append((conn, born, time.monotonic()))

    def _free_slot(self) -> None:
        """A slot without a connection comes free: the oldest waiter may open one, else it is given up."""
        with self._lock:
            if self._waiters and not self._closed:
                waiter = self._waiters.popleft()
                self._count("pool_waiting", -1)
                waiter.granted, waiter.idle = True, None
                waiter.event.set()
                return
            self._slots -= 1

    @contextmanager
    def connection(self, holder: str, op_id: str | None = None, timeout: float | None = None) -> Iterator[Any]:
        """``with pool.connection(agent) as conn:`` — returned on every path: success, error, GreenletExit
        (then closed: a call cut short leaves the session in an unknown state)."""
        lease = self.acquire(holder, op_id, timeout)
        try:
            yield lease.conn
        except Exception:
            self.release(lease)
            raise
        except BaseException:
            self.release(lease, discard=True)
            raise
        self.release(lease)

    # --- observation ---

    def check_leaks(self, now: float | None = None) -> list[dict[str, Any]]:
        """Leases held longer than ``leak_after_s`` that were not reported before; each is counted once
        (``pool_leaks``) and kept in :attr:`leaks`."""
        now = time.monotonic() if now is None else now
        new: list[dict[str, Any]] = []
        with self._lock:
            for lease in self._leases.values():
                held = now - lease.since
                if held > self.leak_after_s and not lease.leak_reported:
                    lease.leak_reported = True
                    item = {"pool": self.name, "agent": lease.holder, "op_id": lease.op_id,
                            "held_s": round(held, 3), "at": time.time()}
                    new.append(item)
            self.leaks.extend(new)
        for _ in new:
            self._count("pool_leaks")
        return new

    def holders(self) -> list[dict[str, Any]]:
        """Who holds a connection right now, longest first."""
        now = time.monotonic()
        with self._lock:
            items = [{"agent": lease.holder, "op_id": lease.op_id, "held_s": round(now - lease.since, 3)}
                     for lease in self._leases.values()]
        return sorted(items, key=lambda h: -h["held_s"])

    def held_by(self, holder: str) -> int:
        with self._lock:
            return sum(1 for lease in self._leases.values() if lease.holder == holder)

    def stats(self) -> dict[str, Any]:
        """size, in_use, idle, waiting, opening and the counters so far."""
        with self._lock:
            in_use, idle, waiting = len(self._leases), len(self._idle), len(self._waiters)
            opening = self._slots - in_use
        return {"pool": self.name, "size": self.size, "in_use": in_use, "idle": idle, "waiting": waiting,
                "opening": max(0, opening), "wait_max_ms": round(self.wait_max_s * 1000.0, 3),
                "counters": dict(self.counters), "leaks": list(self.leaks)}

    def close(self) -> None:
        """Close every connection (idle and checked out) and fail the waiters; idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            waiters, self._waiters = list(self._waiters), deque()
            leased = [lease.conn for lease in self._leases.values()]
            if waiters:
                self._count("pool_waiting", -len(waiters))
        for conn, _born, _since in idle:
            close_quietly(conn)
        for conn in leased:
            close_quietly(conn)
        for waiter in waiters:
            waiter.event.set()  # not granted: the waiter sees a timeout-like wake-up
