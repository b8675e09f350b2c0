"""The example platform: an agent platform's credit and configuration tools as a small HTTP API over PostgreSQL.

It stands for *your* platform: toolclash knows nothing of this code and talks to it only over HTTP (or to its
tables, read-only, for the final state). It is a plain WSGI application served by gunicorn (gevent workers);
``python -m examples.platform`` starts it. Two variants:

* ``correct`` — a deduction is one guarded ``UPDATE … WHERE balance >= amount`` and its ledger row in one
  transaction; a configuration field is set in place (``jsonb_set``) under the row lock; a request's
  idempotency key is looked up (under an advisory lock) and a retry gets the stored answer, never a second effect;
* ``racy`` — read the balance (or the document) in one statement, write the new absolute value in another,
  no lock; the idempotency key is stored but never looked up, so a retried request is applied again.

Endpoints (JSON in and out; write requests carry an ``Idempotency-Key`` header):

====== ================================ ==============================================================
GET    /health                          200 ``{"variant": …}``
POST   /admin/reset                     ``{"accounts", "initial_balance", "configs", "fields"}``: empty and seed
POST   /accounts/<id>/deduct            ``{"amount", "agent"}`` → 200 ``{"balance_before", "balance_after"}``,
                                        402 ``{"error": "insufficient_funds"}``, 404 ``{"error": "no_such_account"}``
GET    /accounts                        ``[{"id", "balance", "initial_balance"}]``
GET    /ledger                          ``[{"id", "idempotency_key", "account_id", "amount", "balance_before",
                                        "balance_after", "agent"}]``
PUT    /configs/<id>/fields/<field>     ``{"value"}`` → 200 ``{"version"}``, 404 ``{"error": "no_such_config"}``
GET    /configs                         ``[{"id", "doc", "version"}]``
GET    /config-log                      ``[{"id", "idempotency_key", "config_id", "field", "value", "version_read",
                                        "version_after", "doc_after"}]``
====== ================================ ==============================================================

Settings come from the environment (``__main__`` sets them): ``PLATFORM_DATABASE_URL``, ``PLATFORM_VARIANT``,
``PLATFORM_THINK_MS`` (racy: a pause between the read and the write, as a slow service would have),
``PLATFORM_DELAY_MS`` with ``PLATFORM_DELAY_EVERY`` (every n-th write answers that much later, after it
committed: a slow answer that a client's timeout turns into an in-doubt call).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras

VARIANTS = ("correct", "racy")
SCHEMA = Path(__file__).with_name("schema.sql")
POOL_SIZE = 40

Response = tuple[int, Any]


class HttpError(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


IDLE_CHECK_S = 1.0
"""A pooled connection idle this long is tested before use."""


class Pool:
    """A few connections shared by the requests of one worker (gevent-cooperative through psycogreen)."""

    def __init__(self, url: str, size: int = POOL_SIZE) -> None:
        self.url = url
        self.free: queue.LifoQueue[Any] = queue.LifoQueue()
        self.slots = queue.Queue(size)  # type: ignore[var-annotated]
        for _ in range(size):
            self.slots.put(None)

    def run(self, fn: Callable[[Any], Response]) -> Response:
        self.slots.get()
        try:
            conn = self._borrow()
            try:
                return fn(conn)
            except psycopg2.Error:
                conn.close()
                raise
            finally:
                if not conn.closed:
                    conn.rollback()
                    self.free.put((conn, time.monotonic()))
        finally:
            self.slots.put(None)

    def _borrow(self) -> Any:
        """A pooled connection; one idle for a while is tested first (the database may have restarted since)."""
        while True:
            try:
                conn, idle_since = self.free.get_nowait()
            except queue.Empty:
                return psycopg2.connect(self.url, application_name="example-platform")
            if time.monotonic() - idle_since < IDLE_CHECK_S:
                return conn
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                conn.rollback()
                return conn
            except psycopg2.Error:
                conn.close()  # gone with a restarted server: try the next one, or a new connection


class Platform:
    def __init__(self, url: str, variant: str, *, think_ms: float = 0.0, delay_ms: float = 0.0,
                 delay_every: int = 0) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.pool = Pool(url)
        self.think_s = think_ms / 1000.0
        self.delay_s = delay_ms / 1000.0
        self.delay_every = delay_every
        self.writes = itertools.count(1)
        self.pool.run(self._schema)

    @staticmethod
    def _schema(conn: Any) -> Response:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(8240001)")  # two workers starting at once
            cur.execute(SCHEMA.read_text(encoding="utf-8"))
        conn.commit()
        return 200, None

    def slow_answer(self) -> None:
        """Every ``delay_every``-th write answers ``delay_ms`` late (it has committed already)."""
        if self.delay_every and next(self.writes) % self.delay_every == 0:
            time.sleep(self.delay_s)

    # --- admin

    def reset(self, body: dict[str, Any]) -> Response:
        accounts, initial = int(body.get("accounts", 5)), int(body.get("initial_balance", 1_000_000))
        configs, fields = int(body.get("configs", 1)), int(body.get("fields", 15))
        doc = {f"f{i:0{max(2, len(str(fields)))}d}": "init" for i in range(1, fields + 1)}

        def run(conn: Any) -> Response:
            with conn.cursor() as cur:
                cur.execute("TRUNCATE platform.ledger, platform.accounts, platform.config_log, platform.configs "
                            "RESTART IDENTITY")
                cur.execute("INSERT INTO platform.accounts SELECT g, %s, %s FROM generate_series(1, %s) g",
                            (initial, initial, accounts))
                cur.execute("INSERT INTO platform.configs (id, doc) SELECT g, %s FROM generate_series(1, %s) g",
                            (json.dumps(doc), configs))
            conn.commit()
            return 200, {"accounts": accounts, "configs": configs, "fields": fields}

        return self.pool.run(run)

    # --- credits

    def deduct(self, account: int, body: dict[str, Any], key: str) -> Response:
        amount, agent = int(body["amount"]), str(body.get("agent", ""))
        if amount <= 0:
            raise HttpError(400, "amount_must_be_positive")
        answer = self.pool.run(lambda conn: (self._deduct_correct if self.variant == "correct" else
                                             self._deduct_racy)(conn, account, amount, agent, key))
        self.slow_answer()
        return answer

    @staticmethod
    def _stored_deduction(cur: Any, key: str) -> Response | None:
        cur.execute("SELECT balance_before, balance_after FROM platform.ledger WHERE idempotency_key = %s", (key,))
        row = cur.fetchone()
        return None if row is None else (200, {"balance_before": row[0], "balance_after": row[1], "replayed": True})

    def _deduct_correct(self, conn: Any, account: int, amount: int, agent: str, key: str) -> Response:
        with conn.cursor() as cur:
            if key:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
                stored = self._stored_deduction(cur, key)
                if stored is not None:
                    return stored
            cur.execute("UPDATE platform.accounts SET balance = balance - %s WHERE id = %s AND balance >= %s "
                        "RETURNING balance", (amount, account, amount))
            row = cur.fetchone()
            if row is None:
                cur.execute("SELECT 1 FROM platform.accounts WHERE id = %s", (account,))
                if cur.fetchone() is None:
                    raise HttpError(404, "no_such_account")
                raise HttpError(402, "insufficient_funds")
            after = int(row[0])
            cur.execute("INSERT INTO platform.ledger (idempotency_key, account_id, amount, balance_before, "
                        "balance_after, agent) VALUES (%s, %s, %s, %s, %s, %s)",
                        (key, account, amount, after + amount, after, agent))
        conn.commit()
        return 200, {"balance_before": after + amount, "balance_after": after}

    def _deduct_racy(self, conn: Any, account: int, amount: int, agent: str, key: str) -> Response:
        with conn.cursor() as cur:
            cur.execute("SELECT balance FROM platform.accounts WHERE id = %s", (account,))
            row = cur.fetchone()
            conn.commit()  # the read is its own statement: nothing holds the row until the write
            if row is None:
                raise HttpError(404, "no_such_account")
            before = int(row[0])
            if before < amount:
                raise HttpError(402, "insufficient_funds")
            if self.think_s:
                time.sleep(self.think_s)
            cur.execute("UPDATE platform.accounts SET balance = %s WHERE id = %s", (before - amount, account))
            cur.execute("INSERT INTO platform.ledger (idempotency_key, account_id, amount, balance_before, "
                        "balance_after, agent) VALUES (%s, %s, %s, %s, %s, %s)",
                        (key, account, amount, before, before - amount, agent))
        conn.commit()
        return 200, {"balance_before": before, "balance_after": before - amount}

    # --- configuration

    def set_field(self, config: int, field: str, body: dict[str, Any], key: str) -> Response:
        value = str(body["value"])
        answer = self.pool.run(lambda conn: (self._set_correct if self.variant == "correct" else
                                             self._set_racy)(conn, config, field, value, key))
        self.slow_answer()
        return answer

    def _set_correct(self, conn: Any, config: int, field: str, value: str, key: str) -> Response:
        with conn.cursor() as cur:
            if key:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
                cur.execute("SELECT version_after FROM platform.config_log WHERE idempotency_key = %s", (key,))
                row = cur.fetchone()
                if row is not None:
                    return 200, {"version": row[0], "replayed": True}
            cur.execute("UPDATE platform.configs SET doc = jsonb_set(doc, ARRAY[%s], to_jsonb(%s::text)), "
                        "version = version + 1 WHERE id = %s RETURNING version, doc", (field, value, config))
            row = cur.fetchone()
            if row is None:
                raise HttpError(404, "no_such_config")
            cur.execute("INSERT INTO platform.config_log (idempotency_key, config_id, field, value, version_read, "
                        "version_after, doc_after) VALUES (%s, %s, %s, %s, NULL, %s, %s)",
                        (key, config, field, value, row[0], json.dumps(row[1])))
        conn.commit()
        return 200, {"version": row[0]}

    def _set_racy(self, conn: Any, config: int, field: str, value: str, key: str) -> Response:
        with conn.cursor() as cur:
            cur.execute("SELECT doc, version FROM platform.configs WHERE id = %s", (config,))
            row = cur.fetchone()
            conn.commit()
            if row is None:
                raise HttpError(404, "no_such_config")
            doc, version_read = dict(row[0]), int(row[1])
            if self.think_s:
                time.sleep(self.think_s)
            doc[field] = value
            cur.execute("UPDATE platform.configs SET doc = %s, version = version + 1 WHERE id = %s "
                        "RETURNING version", (json.dumps(doc), config))
            version = int(cur.fetchone()[0])
            cur.execute("INSERT INTO platform.config_log (idempotency_key, config_id, field, value, version_read, "
                        "version_after, doc_after) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        (key, config, field, value, version_read, version, json.dumps(doc)))
        conn.commit()
        return 200, {"version": version}

    # --- reads (the final state over HTTP)

    def rows(self, sql: str) -> Response:
        def run(conn: Any) -> Response:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql)
                return 200, [dict(r) for r in cur.fetchall()]

        return self.pool.run(run)


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/health"), "health"),
    ("POST", re.compile(r"/admin/reset"), "reset"),
    ("POST", re.compile(r"/accounts/(?P<account>\d+)/deduct"), "deduct"),
    ("GET", re.compile(r"/accounts"), "accounts"),
    ("GET", re.compile(r"/ledger"), "ledger"),
    ("PUT", re.compile(r"/configs/(?P<config>\d+)/fields/(?P<field>[A-Za-z0-9_]{1,64})"), "set_field"),
    ("GET", re.compile(r"/configs"), "configs"),
    ("GET", re.compile(r"/config-log"), "config_log"),
]

_READS = {
    "accounts": "SELECT id, balance, initial_balance FROM platform.accounts ORDER BY id",
    "ledger": "SELECT id, idempotency_key, account_id, amount, balance_before, balance_after, agent "
              "FROM platform.ledger ORDER BY id",
    "configs": "SELECT id, doc, version FROM platform.configs ORDER BY id",
    "config_log": "SELECT id, idempotency_key, config_id, field, value, version_read, version_after, doc_after "
                  "FROM platform.config_log ORDER BY id",
}

_REASONS = {200: "OK", 400: "Bad Request", 402: "Payment Required", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def create_app(platform: Platform | None = None) -> Callable[..., Iterable[bytes]]:
    """The WSGI application (gunicorn: ``'examples.platform.app:create_app()'``), configured from the environment."""
    if platform is None:
        try:
            from gevent import monkey

            if monkey.is_module_patched("socket"):
                from psycogreen.gevent import patch_psycopg

                patch_psycopg()
        except ImportError:
            pass
        env = os.environ
        platform = Platform(env["PLATFORM_DATABASE_URL"], env.get("PLATFORM_VARIANT", "correct"),
                            think_ms=float(env.get("PLATFORM_THINK_MS", 0)),
                            delay_ms=float(env.get("PLATFORM_DELAY_MS", 0)),
                            delay_every=int(env.get("PLATFORM_DELAY_EVERY", 0)))
    p = platform

    def handle(method: str, path: str, body: dict[str, Any], key: str) -> Response:
        for verb, pattern, name in _ROUTES:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            if verb != method:
                raise HttpError(405, "method_not_allowed")
            args = m.groupdict()
            if name == "health":
                return 200, {"variant": p.variant}
            if name == "reset":
                return p.reset(body)
            if name == "deduct":
                return p.deduct(int(args["account"]), body, key)
            if name == "set_field":
                return p.set_field(int(args["config"]), args["field"], body, key)
            return p.rows(_READS[name])
        raise HttpError(404, "no_such_endpoint")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise HttpError(400, "body_must_be_an_object")
            status, payload = handle(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), body,
                                     environ.get("HTTP_IDEMPOTENCY_KEY", ""))
        except HttpError as exc:
            status, payload = exc.status, {"error": exc.error}
        except (ValueError, KeyError) as exc:
            status, payload = 400, {"error": f"bad_request: {exc}"}
        except psycopg2.OperationalError as exc:
            status, payload = 503, {"error": f"database_unavailable: {str(exc).strip()[:200]}"}
        out = json.dumps(payload, default=str).encode()
        start_response(f"{status} {_REASONS.get(status, 'Status')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]

    return app
