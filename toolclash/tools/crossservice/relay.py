"""The crossservice outbox relay: outbox rows in main → ClickHouse's ``xs_usage``, at least once, deduplicated.

It runs beside the agents (master side, one thread or greenlet, started by the scenario's ``start``
hook) and also resolves prepared transactions left in doubt by crashed coordinators (mid-run 2PC
recovery, :func:`.recovery.resolve_prepared`). Failures injected into the services it talks to are
not its business: :mod:`.inject` does that beside it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import threading
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg2

from toolclash.db import close_quietly
from toolclash.option import SettingsError, mask_url
from toolclash.tools.crossservice.recovery import resolve_prepared


def clickhouse_client(url: str, timeout_s: float = 10.0) -> Any:
    """A clickhouse-driver client (native protocol) for *url* ``clickhouse://user:pw@host:port/db``."""
    from clickhouse_driver import Client

    parts = urlsplit(url)
    if parts.scheme != "clickhouse" or not parts.hostname:
        raise SettingsError(f"CLICKHOUSE_URL {mask_url(url)!r} is not a ClickHouse native URL; use "
                            "clickhouse://user:password@host:9000/database")
    return Client(host=parts.hostname, port=parts.port or 9000, user=unquote(parts.username or "default"),
                  password=unquote(parts.password or ""), database=parts.path.lstrip("/") or "default",
                  connect_timeout=timeout_s, send_receive_timeout=max(timeout_s, 10.0),
                  settings={"insert_deduplicate": 0})


CH_TABLE = ("CREATE TABLE IF NOT EXISTS xs_usage (event_id String, op_id String, kind String, agent String, "
            "tool String, cost Int64, created_at DateTime, relayed_at DateTime) "
            "ENGINE = ReplacingMergeTree() ORDER BY event_id")


class Relay:
    """Moves outbox rows to ClickHouse; also runs mid-run 2PC recovery. Master side, one thread/greenlet.

    At least once: a batch is inserted into ClickHouse, then marked relayed in main. If the mark is lost
    (``redeliver_rate`` injects exactly that) the batch goes again; the event id is the idempotency key
    (ReplacingMergeTree on ``event_id``, read with ``FINAL``), so a redelivery is not counted twice —
    unless ``dedup=False`` (the planted fault), which keys every delivery afresh.
    """

    def __init__(self, backend: Any, *, dedup: bool = True, redeliver_rate: float = 0.0, interval_s: float = 0.1,
                 recover_2pc: bool = True, min_age_s: float = 0.5, batch: int = 500,
                 rng: random.Random | None = None) -> None:
        self.backend = backend
        self.dedup = dedup
        self.redeliver_rate = redeliver_rate
        self.interval_s = interval_s
        self.recover_2pc = recover_2pc
        self.min_age_s = min_age_s
        self.batch = batch
        self.rng = rng or random.Random()
        self.counts = {"relayed": 0, "deliveries": 0, "redelivered_batches": 0, "errors": 0, "recovered": 0}
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._main: Any = None
        self._auth: Any = None
        self._ch: Any = None

    def _conns(self) -> tuple[Any, Any]:
        if self._main is None or self._main.closed:
            self._main = self.backend.pg("relay")
        if self._ch is None:
            self._ch = clickhouse_client(self.backend.url("CLICKHOUSE_URL"), self.backend.connect_timeout_s)
        return self._main, self._ch

    def run_once(self) -> int:
        """Relay one batch; return how many outbox rows it moved (0: nothing pending)."""
        main, ch = self._conns()
        with main.cursor() as cur:
            cur.execute("SELECT seq, event_id, op_id, kind, agent, tool, cost, created_at FROM toolclash.xs_outbox "
                        "WHERE relayed_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED", (self.batch,))
            rows = cur.fetchall()
        if not rows:
            main.rollback()
            return 0
        now = time.time()
        stamp = dt.datetime.fromtimestamp(int(now), tz=dt.UTC).replace(tzinfo=None)
        data = [(r[1] if self.dedup else f"{r[1]}#{uuid.uuid4().hex[:12]}", r[2], r[3], r[4], r[5], int(r[6]),
                 r[7].astimezone(dt.UTC).replace(tzinfo=None), stamp) for r in rows]
        try:
            ch.execute("INSERT INTO xs_usage (event_id, op_id, kind, agent, tool, cost, created_at, relayed_at) "
                       "VALUES", data)
        except BaseException:
            main.rollback()
            raise
        self.counts["deliveries"] += len(rows)
        if self.redeliver_rate and self.rng.random() < self.redeliver_rate:
            main.rollback()  # the relay "crashed" after the insert: these rows go again
            self.counts["redelivered_batches"] += 1
            return len(rows)
        with main.cursor() as cur:
            cur.execute("UPDATE toolclash.xs_outbox SET relayed_at = clock_timestamp(), deliveries = deliveries + 1 "
                        "WHERE seq = ANY(%s)", ([r[0] for r in rows],))
        main.commit()
        self.counts["relayed"] += len(rows)
        return len(rows)

    def recover_once(self, min_age_s: float) -> int:
        if self._main is None or self._main.closed:
            self._main = self.backend.pg("relay")
        if self._auth is None or self._auth.closed:
            self._auth = self.backend.pg("relay", "AUTH_DATABASE_URL")
        counts = resolve_prepared(self._main, self._auth, min_age_s=min_age_s, who="recovery-live")
        self._main.autocommit = False
        n = counts["committed"] + counts["rolled_back"]
        self.counts["recovered"] += n
        return n

    def pending(self) -> int:
        main, _ = self._conns()
        with main.cursor() as cur:
            cur.execute("SELECT count(*) FROM toolclash.xs_outbox WHERE relayed_at IS NULL")
            n = int(cur.fetchone()[0])
        main.rollback()
        return n

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.recover_2pc:
                    self.recover_once(self.min_age_s)
                while self.run_once() >= self.batch and not self._stop.is_set():
                    pass  # a full batch: more may be waiting
            except Exception as exc:  # noqa: BLE001 - keep relaying; the outbox keeps what was not moved
                self._error(exc)
            self._stop.wait(self.interval_s)

    def _error(self, exc: BaseException) -> None:
        self.counts["errors"] += 1
        self.last_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        for conn in (self._main, self._auth):
            if conn is not None and not conn.closed:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
        with contextlib.suppress(Exception):
            if self._ch is not None:
                self._ch.disconnect()
        self._ch = None

    def start(self) -> Relay:
        self._thread = threading.Thread(target=self._loop, name="toolclash-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def drain(self, deadline_s: float) -> bool:
        """Relay until the outbox is empty; False if rows are still pending at the deadline."""
        limit = time.monotonic() + deadline_s
        while True:
            try:
                while self.run_once():
                    pass
                if self.pending() == 0:
                    return True
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                self._error(exc)
            if time.monotonic() >= limit:
                return False
            time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        for conn in (self._main, self._auth):
            close_quietly(conn)
        with contextlib.suppress(Exception):
            if self._ch is not None:
                self._ch.disconnect()
        self._main = self._auth = self._ch = None
