"""Pool exhaustion: more agents than connections run long analytical queries.

``analyze()`` aggregates a window of ``--scan-rows`` rows of an UNLOGGED fact table (seeded with
``generate_series`` by :func:`reset`) in one read-only transaction under ``SET LOCAL
statement_timeout``. Where the connection comes from is the ``--pool`` option:

* ``client`` — the gevent-aware bounded pool of :mod:`toolclash.db` (``--pool-size`` connections per
  Locust process straight to PostgreSQL; FIFO waiters; ``--pool-acquire-timeout-s``; max lifetime;
  health check on checkout; leak tracking);
* ``pgbouncer`` — PgBouncer (``PGBOUNCER_URL``; the embedded one pools 20 server connections):
  ``--pgbouncer-mode transaction`` keeps one client connection per agent and PgBouncer lends a server
  connection per transaction; ``session`` connects per call and PgBouncer lends one per session. The
  acquire timeout becomes PgBouncer's ``query_wait_timeout`` (set through its admin console).

Outcomes: ``ok``; ``fail`` with reason ``pool-timeout`` (no connection in time: the message says
which pool, how long it waited and how many were waiting) or ``cancelled`` (57014, past
``statement_timeout``); anything else is a ``fail`` the checks call unaccounted for. Every call's
result holds ``wait_ms`` (the acquire wait: measured by the client pool, or for PgBouncer the round
trip of the transaction's first statement, which waits for a server connection).

Planted faults: ``leak``, a tool path that forgets to commit and to return its connection (at most
once per agent, on a share of calls), which the checks must catch naming the agent; ``off_by_one``, the
aggregate's window leaves out its first row (``id > lo`` for ``id >= lo``); ``swallow_timeout``, a pool
timeout is hidden from the caller: the tool quietly asks the pool again until it gets a connection.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from typing import Any

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions

from toolclash import db, schema
from toolclash.history import FAIL, OK, Op, make_op, read_history
from toolclash.option import Option, SettingsError, mask_url
from toolclash.scenario import Context, Scenario
from toolclash.tools import COMMIT, STATEMENT, Call

NAME = "pool"
STRATEGIES = ("aggregate",)
DEFAULT_STRATEGY = "aggregate"
FAULTS = ("leak", "off_by_one", "swallow_timeout")
FAULT_RATE = 0.2
"""Share of an agent's calls that may take the leaking path (at most one leak per agent)."""
TOOL = "analyze"
STATE_TOOL, SAMPLE_TOOL = "pool_state", "pool_sample"
"""History records that are not tool calls: a process's pool state when its last agent stopped, and the
periodic samples of its pool (read back by :func:`finish`, judged by checks/pool.py)."""

POOLS = ("client", "pgbouncer")
BOUNCER_MODES = ("transaction", "session")
TIMEOUT, CANCELLED = "pool-timeout", "cancelled"
QUEUED_MS = 10.0
"""An acquire that waited at least this long found the pool exhausted (counted, and what recovery waits for)."""

OPTIONS: tuple[Option, ...] = (
    Option("pool", str, "client", "where agents get connections: client (toolclash's own bounded pool, straight "
           "to PostgreSQL) or pgbouncer (PGBOUNCER_URL)", choices=POOLS),
    Option("pgbouncer_mode", str, "transaction", "with --pool pgbouncer: transaction (one client connection per "
           "agent, a server connection per transaction) or session (connect per call)", choices=BOUNCER_MODES),
    Option("pool_size", int, 20, "connections of the client pool (per Locust process)"),
    Option("pool_acquire_timeout_s", float, 5.0, "longest wait for a connection before the call fails with "
           "pool-timeout (client pool), or PgBouncer's query_wait_timeout (--pool pgbouncer)"),
    Option("pool_max_lifetime_s", float, 300.0, "client pool: a connection older than this is closed at "
           "checkout or return and replaced"),
    Option("pool_leak_after_s", float, 5.0, "client pool: a connection held longer than this is reported as a "
           "leak, naming the agent that holds it"),
    Option("pool_sample_s", float, 1.0, "period of the pool samplers (client pool state; PgBouncer SHOW POOLS)"),
    Option("statement_timeout_ms", int, 5000, "statement_timeout of each analytical query; past it the query "
           "is cancelled (57014) and counted"),
    Option("facts_rows", int, 1_000_000, "rows seeded into the fact table by the run's reset"),
    Option("scan_rows", int, 250_000, "rows each analytical query aggregates (a random window of the table)"),
    Option("gate_pool_recovery_s", float, 2.0, "SLA gate: longest time from a burst exhausting the pool until "
           "its queue drained (acquire wait under 10 ms again)"),
)


def validate(opts: Any) -> None:
    """Raise :class:`SettingsError` (one line, naming the flag) if an option is out of range."""
    if opts.pool not in POOLS:
        raise SettingsError(f"--pool {opts.pool!r} is not one of {', '.join(POOLS)}")
    if opts.pgbouncer_mode not in BOUNCER_MODES:
        raise SettingsError(f"--pgbouncer-mode {opts.pgbouncer_mode!r} is not one of {', '.join(BOUNCER_MODES)}")
    if opts.pool_size < 1:
        raise SettingsError("--pool-size must be at least 1")
    for name in ("pool_acquire_timeout_s", "pool_max_lifetime_s", "pool_leak_after_s", "pool_sample_s",
                 "gate_pool_recovery_s"):
        if not getattr(opts, name) > 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be greater than 0")
    if opts.statement_timeout_ms < 1:
        raise SettingsError("--statement-timeout-ms must be at least 1")
    if not 1 <= opts.scan_rows <= opts.facts_rows:
        raise SettingsError("--scan-rows and --facts-rows must satisfy 1 <= scan rows <= facts rows")


QUERY = ("SELECT tenant %% 64 AS bucket, count(*), sum(amount), avg(amount), stddev_samp(amount), max(amount) "
         "FROM toolclash.pool_facts WHERE id BETWEEN %s AND %s GROUP BY 1")
OFF_BY_ONE_QUERY = QUERY.replace("id BETWEEN %s AND %s", "id > %s AND id <= %s")
"""``--fault off_by_one``: the window's first row is left out."""
SWALLOWED_TRIES = 50
"""``--fault swallow_timeout``: how often the tool asks the pool again before it lets a timeout through."""
_SETUP = "SET LOCAL statement_timeout = %s; SET LOCAL max_parallel_workers_per_gather = 0"


# ------------------------------------------------------------------------------------------ sources


class ClientSource:
    """Connections from toolclash's own :class:`toolclash.db.Pool`."""

    kind = "client"

    def __init__(self, pool: db.Pool) -> None:
        self.pool = pool
        self.label = pool.name

    def acquire(self, agent: str, op_id: str) -> db.Lease:
        return self.pool.acquire(agent, op_id)

    def release(self, lease: db.Lease, *, discard: bool = False) -> None:
        self.pool.release(lease, discard=discard)

    def forget(self, lease: db.Lease) -> None:
        """The leaking path: the lease stays checked out (the pool's leak tracking must see it)."""


_LEAKED: list[Any] = []
"""Connections dropped on purpose by ``--fault leak`` through PgBouncer (they live until the process exits)."""


class BouncerSource:
    """Connections through PgBouncer: one per agent (transaction mode) or one per call (session mode).

    The acquire wait happens inside PgBouncer, at the transaction's first statement. ``connect(who)``
    opens a connection to the pooled database; ``waiting()`` (optional) says how many clients PgBouncer
    has queued (for the pool-timeout message).
    """

    kind = "pgbouncer"

    def __init__(self, connect: Any, *, mode: str, label: str, query_wait_timeout_s: float,
                 waiting: Any = None) -> None:
        self._connect = connect
        self.mode = mode
        self.label = label
        self.query_wait_timeout_s = query_wait_timeout_s
        self.waiting = waiting
        self._conns: dict[str, Any] = {}

    def acquire(self, agent: str, op_id: str) -> db.Lease:
        start = time.monotonic()
        conn = self._conns.get(agent) if self.mode == "transaction" else None
        if conn is None or conn.closed:
            conn = self._connect(agent)
            if self.mode == "transaction":
                self._conns[agent] = conn
        now = time.monotonic()
        return db.Lease(conn, agent, op_id, now, now, now - start, 0)

    def release(self, lease: db.Lease, *, discard: bool = False) -> None:
        conn = lease.conn
        if self.mode == "session" or discard or conn.closed:
            db.close_quietly(conn)
            if self._conns.get(lease.holder) is conn:
                del self._conns[lease.holder]
            return
        try:
            if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                conn.rollback()
        except psycopg2.Error:
            self.release(lease, discard=True)

    def forget(self, lease: db.Lease) -> None:
        """The leaking path: the client connection (and its open transaction) is dropped by the agent but
        kept alive, so PgBouncer keeps a server connection assigned to it."""
        if self._conns.get(lease.holder) is lease.conn:
            del self._conns[lease.holder]
        _LEAKED.append(lease.conn)  # module-level: garbage collection of the source must not close it

    def close(self) -> None:
        for conn in self._conns.values():
            db.close_quietly(conn)
        self._conns.clear()


def is_query_wait_timeout(exc: BaseException, kind: str, in_queue: bool, wait_s: float, limit_s: float) -> bool:
    """Whether PgBouncer gave up on a queued query. PgBouncer sends ``ERROR: query_wait_timeout`` and closes
    the connection, but libpq reports only the closed connection; so: the connection was lost during the
    transaction's first statement (the one that waits for a server) after waiting at least the limit."""
    if "query_wait_timeout" in str(exc):
        return True
    return kind == "connection" and in_queue and wait_s >= 0.95 * limit_s


# --------------------------------------------------------------------------------------------- tool


class AnalyticsTool:
    """The ``analyze`` tool of one agent."""

    def __init__(self, source: Any, *, agent: str, statement_timeout_ms: int, facts_rows: int, scan_rows: int,
                 fault: str = "none", rng: random.Random | None = None) -> None:
        self.source = source
        self.agent = agent
        self.statement_timeout_ms = statement_timeout_ms
        self.facts_rows = facts_rows
        self.scan_rows = scan_rows
        self.fault = fault
        self.rng = rng or random.Random()
        self.leaks = 0

    def window(self) -> tuple[int, int]:
        lo = self.rng.randint(1, self.facts_rows - self.scan_rows + 1)
        return lo, lo + self.scan_rows - 1

    def analyze(self, call: Call, lo: int, hi: int) -> Call:
        """Aggregate rows ``lo..hi`` as operation *call* (filled in and returned)."""
        call.attempts.next()
        source = self.source
        try:
            lease = self._acquire(call)
        except db.PoolTimeout as exc:
            return call.finish(FAIL, TIMEOUT, "PoolTimeout", pool=source.label, wait_ms=round(exc.waited_s * 1000, 3),
                               waiting=exc.waiting, message=str(exc))
        except db.PoolClosed as exc:
            return call.finish(FAIL, "pool-closed", "PoolClosed", pool=source.label, message=str(exc))
        except db.ConnectError as exc:
            return call.finish(FAIL, "connect-failed", "ConnectError", pool=source.label, message=str(exc))
        wait_s = lease.wait_s
        call.result.update(pool=source.label, waiting_at_acquire=lease.waiting_at_acquire)
        started = time.monotonic()
        query_started = started
        leak = False
        try:
            conn = lease.conn
            call.phase = STATEMENT
            with conn.cursor() as cur:
                cur.execute(_SETUP, (self.statement_timeout_ms,))  # BEGIN: PgBouncer lends a server here
                query_started = time.monotonic()
                if source.kind == "pgbouncer":
                    wait_s += query_started - started
                cur.execute(OFF_BY_ONE_QUERY if self.fault == "off_by_one" else QUERY, (lo, hi))
                groups = cur.fetchall()
            leak = self.fault == "leak" and self.leaks == 0 and self.rng.random() < FAULT_RATE
            if leak:  # planted: forget to commit and to give the connection back
                self.leaks += 1
                source.forget(lease)
                return call.finish(OK, rows=sum(int(g[1]) for g in groups), groups=len(groups),
                                   wait_ms=round(wait_s * 1000, 3),
                                   query_ms=round((time.monotonic() - query_started) * 1000, 3))
            call.phase = COMMIT
            conn.commit()
        except psycopg2.Error as exc:
            query_ms = round((time.monotonic() - query_started) * 1000, 3)
            if source.kind == "pgbouncer" and call.phase == STATEMENT and query_started == started:
                wait_s += time.monotonic() - started  # failed while PgBouncer had it queued
            source.release(lease, discard=True)
            return self._failed(call, exc, wait_s, query_ms, in_queue=query_started == started)
        except BaseException:  # GreenletExit at stop, Ctrl-C: close the session, then go on stopping
            source.release(lease, discard=True)
            raise
        source.release(lease)
        return call.finish(OK, rows=sum(int(g[1]) for g in groups), groups=len(groups),
                           wait_ms=round(wait_s * 1000, 3),
                           query_ms=round((time.monotonic() - query_started) * 1000, 3))

    def _acquire(self, call: Call) -> db.Lease:
        if self.fault != "swallow_timeout":
            return self.source.acquire(self.agent, call.op_id)
        for _ in range(SWALLOWED_TRIES - 1):  # the planted fault: the caller never hears of a pool timeout
            try:
                return self.source.acquire(self.agent, call.op_id)
            except db.PoolTimeout:
                continue
        return self.source.acquire(self.agent, call.op_id)

    def _failed(self, call: Call, exc: psycopg2.Error, wait_s: float, query_ms: float, *, in_queue: bool) -> Call:
        kind = db.classify(exc)
        wait_ms = round(wait_s * 1000, 3)
        if kind.sqlstate == psycopg2.errorcodes.QUERY_CANCELED:
            return call.finish(FAIL, CANCELLED, kind.error_class, wait_ms=wait_ms, query_ms=query_ms,
                               statement_timeout_ms=self.statement_timeout_ms)
        if isinstance(self.source, BouncerSource) and is_query_wait_timeout(exc, kind.kind, in_queue, wait_s,
                                                                            self.source.query_wait_timeout_s):
            waiting = self.source.waiting() if self.source.waiting else None
            message = (f"pool {self.source.label!r}: no server connection within {wait_s:.3f} s "
                       f"(PgBouncer query_wait_timeout {self.source.query_wait_timeout_s:g} s), "
                       f"{'?' if waiting is None else waiting} client(s) waiting")
            return call.finish(FAIL, TIMEOUT, kind.error_class, wait_ms=wait_ms, waiting=waiting, message=message)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = "connection-lost" if kind.kind == "connection" else kind.kind
        return call.finish(FAIL, reason, kind.error_class, wait_ms=wait_ms, message=first[:200])


# ------------------------------------------------------------------------------------------- PgBouncer


def bouncer_url(url: str, mode: str) -> str:
    """The URL of *url*'s pooled database in *mode*: the embedded PgBouncer serves ``<db>`` in session
    mode and ``<db>_tx`` in transaction mode (a URL already naming ``…_tx`` is kept)."""
    from toolclash.stack.pgbouncer import PgBouncerService

    suffix = PgBouncerService.TRANSACTION_SUFFIX
    match = re.match(r"^(.*/)([^/?]+)(\?.*)?$", url)
    if not match:
        return url
    head, dbname, query = match.group(1), match.group(2), match.group(3) or ""
    base = dbname[: -len(suffix)] if dbname.endswith(suffix) else dbname
    return f"{head}{base}{suffix if mode == 'transaction' else ''}{query}"


def admin_url(url: str) -> str:
    """PgBouncer's admin console (database ``pgbouncer``) at *url*'s address."""
    return re.sub(r"^(.*/)[^/?]+", r"\g<1>pgbouncer", url, count=1)


def bouncer_admin(url: str, timeout: float = 5.0) -> Any:
    conn = psycopg2.connect(admin_url(url), connect_timeout=max(1, round(timeout)),
                            application_name="toolclash:pool-admin")
    conn.autocommit = True  # the console speaks the simple protocol only, no BEGIN
    return conn


def show(conn: Any, what: str) -> list[dict[str, Any]]:
    """``SHOW <what>`` on the admin console as dicts."""
    with conn.cursor() as cur:
        cur.execute(f"SHOW {what}")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


POOL_FIELDS = ("database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait",
               "maxwait_us", "pool_mode")


def bouncer_pools(conn: Any, database: str) -> list[dict[str, Any]]:
    """SHOW POOLS rows of the pooled databases behind *database* (session and transaction)."""
    base = database.removesuffix("_tx")
    return [{k: row.get(k) for k in POOL_FIELDS} for row in show(conn, "POOLS")
            if row["database"] in (base, base + "_tx")]


class BouncerWaiting:
    """How many clients PgBouncer has queued, from one shared admin connection (cached 0.5 s)."""

    def __init__(self, url: str, database: str) -> None:
        self.url, self.database = url, database
        self._conn: Any = None
        self._lock = threading.Lock()
        self._at = 0.0
        self._value: int | None = None

    def __call__(self) -> int | None:
        with self._lock:
            if time.monotonic() - self._at < 0.5:
                return self._value
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = bouncer_admin(self.url)
                self._value = sum(int(p["cl_waiting"]) for p in bouncer_pools(self._conn, self.database))
            except psycopg2.Error:
                db.close_quietly(self._conn)
                self._conn, self._value = None, None
            self._at = time.monotonic()
            return self._value

    def close(self) -> None:
        db.close_quietly(self._conn)
        self._conn = None


def _database(url: str) -> str:
    from psycopg2.extensions import parse_dsn

    return str(parse_dsn(url).get("dbname", ""))


# --------------------------------------------------------------------------------------- run hooks


def preflight(backend: Any) -> None:
    """The admin console must answer (SHOW POOLS is how the run watches PgBouncer)."""
    url = backend.urls.get("PGBOUNCER_URL")
    if not url:
        return
    try:
        conn = bouncer_admin(url, backend.connect_timeout_s)
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or ["connection failed"])[0]
        raise RuntimeError(f"PgBouncer admin console at {mask_url(admin_url(url))} refused: {first}; the user "
                           "must be in admin_users or stats_users of your PgBouncer") from None
    db.close_quietly(conn)


def reset(conn: Any, *, backend: Any = None, facts_rows: int, pool: str = "client",
          pool_acquire_timeout_s: float = 5.0, **_: Any) -> None:
    """Create the schema, re-seed the fact table (skipped when it already holds *facts_rows* rows) and set
    PgBouncer's ``query_wait_timeout`` to the acquire timeout."""
    schema.apply(conn, NAME)
    with conn.cursor() as cur:
        cur.execute("SELECT rows FROM toolclash.pool_seed")
        row = cur.fetchone()
        if row is None or int(row[0]) != facts_rows:
            cur.execute("TRUNCATE toolclash.pool_facts, toolclash.pool_seed")
            cur.execute("INSERT INTO toolclash.pool_facts (id, tenant, amount) SELECT g, (g * 7919) %% 1000, "
                        "(g %% 9973)::float8 / 7 FROM generate_series(1::bigint, %s) AS g", (facts_rows,))
            cur.execute("INSERT INTO toolclash.pool_seed (rows) VALUES (%s)", (facts_rows,))
            cur.execute("ANALYZE toolclash.pool_facts")
    conn.commit()
    url = backend.urls.get("PGBOUNCER_URL") if backend is not None else None
    if pool == "pgbouncer" and url:
        admin = bouncer_admin(url, backend.connect_timeout_s)
        try:
            with admin.cursor() as cur:
                cur.execute(f"SET query_wait_timeout = {max(1, math.ceil(pool_acquire_timeout_s))}")
        finally:
            db.close_quietly(admin)


class _Sampler(threading.Thread):
    """Master side: SHOW POOLS every *period* seconds during the run (a greenlet under Locust's patching)."""

    def __init__(self, url: str, period: float) -> None:
        super().__init__(name="toolclash-pool-sampler", daemon=True)
        self.url, self.period = url, period
        self.stop_event = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.errors = 0

    def run(self) -> None:
        conn: Any = None
        database = _database(self.url)
        try:
            while not self.stop_event.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = bouncer_admin(self.url)
                    at = time.time()
                    for row in bouncer_pools(conn, database):
                        self.samples.append({"t": at, **row})
                except psycopg2.Error:
                    self.errors += 1
                    db.close_quietly(conn)
                    conn = None
                self.stop_event.wait(self.period)
        finally:
            db.close_quietly(conn)


def start(ctx: Context) -> _Sampler | None:
    """Start the master's PgBouncer sampler (when the run goes through PgBouncer)."""
    url = ctx.backend.urls.get("PGBOUNCER_URL")
    if ctx.opts.pool != "pgbouncer" or not url:
        return None
    sampler = _Sampler(url, ctx.opts.pool_sample_s)
    sampler.start()
    return sampler


def finish(ctx: Context, sampler: _Sampler | None, deadline_s: float) -> dict[str, Any]:
    """After the load: stop the sampler, let PgBouncer's queue settle (up to *deadline_s*), capture
    SHOW POOLS / SHOW CLIENTS / SHOW STATS, gather the processes' pool records from the history, then
    close PgBouncer's idle server connections (they carry the last client's application_name)."""
    opts, backend = ctx.opts, ctx.backend
    gathered: dict[str, Any] = {"pool": opts.pool, "pgbouncer_mode": opts.pgbouncer_mode, "pool_size": opts.pool_size}
    if sampler is not None:
        sampler.stop_event.set()
        sampler.join(5.0)
        gathered["bouncer_samples"] = sampler.samples
    if ctx.run_dir is not None:
        history = read_history(ctx.run_dir)
        gathered["pool_states"] = [op for op in history.ops if op["tool"] == STATE_TOOL]
        gathered["pool_samples"] = [op["result"] for op in history.ops if op["tool"] == SAMPLE_TOOL]
    url = backend.urls.get("PGBOUNCER_URL")
    if url:
        gathered["bouncer"] = _bouncer_final(url, backend, min(deadline_s, 2.0))
    return gathered


def _bouncer_final(url: str, backend: Any, settle_s: float) -> dict[str, Any]:
    database = _database(url)
    prefix = f"tc:{backend.run_id}:"
    conn = bouncer_admin(url, backend.connect_timeout_s)
    try:
        deadline = time.monotonic() + settle_s
        while True:
            pools = bouncer_pools(conn, database)
            clients = [{k: c.get(k) for k in ("database", "state", "application_name", "connect_time", "wait",
                                              "wait_us")}
                       for c in show(conn, "CLIENTS") if str(c.get("application_name") or "").startswith(prefix)]
            if (not clients and all(int(p["cl_waiting"]) == 0 for p in pools)) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        stats = [s for s in show(conn, "STATS") if s.get("database") in {p["database"] for p in pools}]
        with conn.cursor() as cur:
            cur.execute("RECONNECT")  # close server connections as they are released: none keeps the run's name
        return {"pools": pools, "clients": clients, "stats": stats}
    finally:
        db.close_quietly(conn)


def snapshot(conn: Any, backend: Any = None, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The final state the pool checks need: the seed, the processes' final pool states and samples (*facts*
    gathered by :func:`finish`), PgBouncer's pools and the run's clients."""
    out: dict[str, Any] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT rows FROM toolclash.pool_seed")
        row = cur.fetchone()
        out["facts_rows"] = int(row[0]) if row else None
    conn.rollback()
    out.update(facts or {})
    url = backend.urls.get("PGBOUNCER_URL") if backend is not None else None
    if "bouncer" not in out and url:
        out["bouncer"] = _bouncer_final(url, backend, 1.0)
    return out


def pool_state_record(run_id: str, op_id: str, process: str, agent: str, state: dict[str, Any], *,
                      tool: str = STATE_TOOL) -> Op:
    """A history record holding a process's pool state (not a tool call; see :data:`STATE_TOOL`)."""
    now = time.time()
    return make_op(run_id=run_id, op_id=op_id, process=process, agent=agent, tool=tool, strategy="observe", args={},
                   invoke_ts=now, complete_ts=now, outcome=OK, result=state)


SCENARIO = Scenario(
    name=NAME,
    summary="agents run pool-hogging analytical queries through a bounded pool or PgBouncer; checks prove every "
            "call was served or accounted for and no connection leaked",
    tools=(TOOL,),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    services=("postgres", "pgbouncer"),
    validate=validate,
    preflight=preflight,
    reset=lambda ctx, conn: reset(conn, backend=ctx.backend, **vars(ctx.opts)),
    start=start,
    finish=finish,
    snapshot=lambda ctx, conn: snapshot(conn, ctx.backend, ctx.facts),
    checks="checks.pool",
)
