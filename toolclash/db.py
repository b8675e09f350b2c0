"""PostgreSQL access for agents: gevent cooperation, connects with a deadline, SQLSTATE classification.

:func:`patch_gevent` must run before any connection is made in a gevent process (the Locust
plugin calls it in ``events.init``); a blocking libpq call inside a gevent loop stalls every
agent of the process. psycogreen's wait callback ignores libpq's ``connect_timeout``, so
:func:`connect` enforces its own deadline.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions

from toolclash.retry import DEADLOCK, LOCK_NOT_AVAILABLE, SERIALIZATION
from toolclash.settings import mask_url

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
