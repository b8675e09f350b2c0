"""Failures injected beside the crossservice relay while agents run (``--inject clickhouse_outage|auth_restart``).

:class:`Outage` is started by the scenario's ``start`` hook next to the relay and stopped by its
``finish`` hook: one outage, ``--outage-after-s`` seconds after the start, lasting ``--outage-s``.

* ``clickhouse_outage`` detaches the analytics table for that long, then attaches it again. ClickHouse
  then answers every relay insert with an error (table unknown), as a stopped server fails every
  insert: the outbox backs up and drains once the table is back.
* ``auth_restart`` stops the auth PostgreSQL server (``pg_ctl stop -m immediate``) for that long, then
  starts it (:func:`auth_server_control`: only a local server this machine runs).

The injections agents apply to their own calls (``coordinator_crash``, ``participant_terminate``) are
the tool's (:mod:`.coordinator`).
"""

from __future__ import annotations

import threading
from typing import Any

from toolclash.option import SettingsError
from toolclash.stack.control import ServerControl
from toolclash.stack.process import StackError
from toolclash.tools.crossservice.relay import clickhouse_client

OUTAGES = ("clickhouse_outage", "auth_restart")
"""The ``--inject`` values :class:`Outage` applies."""


def auth_server_control(backend: Any) -> ServerControl:
    """The auth PostgreSQL server, for ``--inject auth_restart`` (stopped with ``pg_ctl stop -m immediate``, then
    started): only a local server this machine runs (the embedded stack's, or a local cluster)."""
    try:
        return ServerControl.of(backend.url("AUTH_DATABASE_URL"))
    except StackError as exc:
        raise SettingsError("--inject auth_restart stops and starts the auth server with pg_ctl: it needs a "
                            "local server (leave AUTH_DATABASE_URL unset to use the embedded one); "
                            f"{' '.join(str(exc).split())}") from None


class Outage:
    """One outage of *kind* (``clickhouse_outage`` or ``auth_restart``) from *after_s* seconds after :meth:`start`
    for *length_s* seconds, in its own thread (a greenlet under gevent).

    :attr:`counts` holds ``outages: 1`` once it began; a step that failed counts in :attr:`errors` (ending the
    outage is retried every *retry_s* seconds until it worked or :meth:`stop` is called, which tries once more
    and raises if that fails too).
    """

    def __init__(self, backend: Any, kind: str, *, after_s: float, length_s: float,
                 auth_server: ServerControl | None = None, retry_s: float = 0.1) -> None:
        if kind not in OUTAGES:
            raise ValueError(f"unknown outage {kind!r}")
        if kind == "auth_restart" and auth_server is None:
            raise ValueError("auth_restart needs the auth server's control")
        self.backend = backend
        self.kind = kind
        self.after_s, self.length_s, self.retry_s = after_s, length_s, retry_s
        self.auth_server = auth_server
        self.counts: dict[str, int] = {}
        self.errors = 0
        self.last_error = ""
        self._state = "before"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, backend: Any, opts: Any) -> Outage | None:
        """The outage the options ask for (``--inject``, ``--outage-after-s``, ``--outage-s``), or None."""
        if opts.inject not in OUTAGES:
            return None
        auth_server = auth_server_control(backend) if opts.inject == "auth_restart" else None
        return cls(backend, opts.inject, after_s=opts.outage_after_s, length_s=opts.outage_s,
                   auth_server=auth_server, retry_s=opts.relay_interval_s)

    def start(self) -> Outage:
        self._thread = threading.Thread(target=self._run, name="toolclash-outage", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._stop.wait(self.after_s):
            return
        with self._lock:
            if self._state != "before":
                return
            self._state, self.counts["outages"] = "during", 1
            try:
                self._begin()
            except Exception as exc:  # noqa: BLE001 - counted; the end still restores the service
                self._error(exc)
        if self._stop.wait(self.length_s):
            return
        while True:
            try:
                self.end()
                return
            except Exception as exc:  # noqa: BLE001 - retried until it works or stop() tries a last time
                self._error(exc)
            if self._stop.wait(self.retry_s):
                return

    def _begin(self) -> None:
        if self.auth_server is not None:
            self.auth_server.stop("immediate")
        else:
            self._admin_ch("DETACH TABLE xs_usage")

    def end(self) -> None:
        """Restore the service if the outage is on (raises if that fails); no outage happens after this."""
        with self._lock:
            if self._state == "during":
                if self.auth_server is not None:
                    self.auth_server.start()
                else:
                    self._admin_ch("ATTACH TABLE xs_usage")
            self._state = "after"

    def stop(self) -> None:
        """Stop the thread and end the outage if it is on (raises if the service could not be restored)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=90)  # a pg_ctl step takes up to 75 s; end() waits for it in any case
            self._thread = None
        self.end()

    def _admin_ch(self, sql: str) -> None:
        ch = clickhouse_client(self.backend.url("CLICKHOUSE_URL"), self.backend.connect_timeout_s)
        try:
            ch.execute(sql)
        finally:
            ch.disconnect()

    def _error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
