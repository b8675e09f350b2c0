"""Deadlock cycles: agents lock resources in a cycle; the lowest-priority member is the victim and retries.

Each round is one transaction that updates resource ``first`` then resource ``second`` (each
update also writes a ``deadlock_writes`` row keyed by the op id) and inserts the round's row in
``deadlock_rounds``. The members of a cycle group of ``k`` agents lock ``r_j`` then ``r_{j+1 mod k}``
(the seed's cycle for k = 3: A locks 1 then 2, B 2 then 3, C 3 then 1). The agents meet at a
barrier before the round and again once each holds its first lock, so the cycle really forms.

Victim selection by priority (``--priority``), priority level 0 being the lowest:

* ``role_timeout`` (default; needs a superuser, as the embedded server is): each level logs in as
  its own role, made by ``CREATE ROLE … LOGIN`` and ``ALTER ROLE … SET deadlock_timeout`` (100 ms /
  400 ms / 1 s by default). PostgreSQL runs the deadlock check in the waiting backend whose
  ``deadlock_timeout`` fires first and aborts that one (40P01): the lowest priority.
* ``lock_timeout`` (for a non-superuser): the lowest level sets ``lock_timeout`` below the
  server's ``deadlock_timeout`` and gives up first (55P03, retried); the others keep waiting.
  Caveat: a lock timeout cannot tell a deadlock from a slow holder.
* ``none``: every agent on the main URL with the server's own ``deadlock_timeout``; the victim is
  whoever waited first. Known-bad for the priority check.

Victims retry with full-jitter exponential backoff (:mod:`toolclash.retry`). Planted faults:

* ``no_retry`` — a victim gives up at once (outcome ``fail``): the success-rate gate misses;
* ``commit_after_deadlock`` — the second update runs under a savepoint, and a deadlock error is
  rolled back to it and ignored: the first write commits alone, a partial round;
* ``victim_left_open`` — a victim abandons its session inside a transaction it never ends (once per agent,
  ``users/deadlock.py``): the session is still open at the end;
* ``hidden_deadlock`` — a victim's deadlock error is swallowed: the tool rolls back and runs the round again
  inside the same attempt, and its record shows one clean attempt; the server counted (and logged) a deadlock
  no agent reported.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg2

from toolclash import schema
from toolclash.backend import application_name
from toolclash.option import Option, SettingsError
from toolclash.scenario import Scenario
from toolclash.tools import Call, Reject, transact

NAME = "deadlock"
TOOL = "lock_round"
STRATEGIES = ("retry",)
"""One strategy: victims roll back and retry. The victim-selection mechanism is ``--priority``."""
DEFAULT_STRATEGY = "retry"
FAULTS = ("no_retry", "commit_after_deadlock", "victim_left_open", "hidden_deadlock")
MODES = ("cycle", "cascade")
PRIORITIES = ("role_timeout", "lock_timeout", "none")
VICTIM_STATES = ("40P01", "55P03")
"""SQLSTATEs that end a cycle member's wait: deadlock detected, lock_timeout fired."""
DEADLOCK = "40P01"
ROLE_PREFIX = "tc_deadlock_p"

OPTIONS: tuple[Option, ...] = (
    Option("deadlock_mode", str, "cycle", "deadlock scenario: cycle (every round all groups form their cycle "
           "at once) or cascade (agents work on private rows; every --cascade-every-s all of them form "
           "cycles at once)", choices=MODES),
    Option("cycle_size", int, 0, "agents per lock cycle, 2..len(--priority-timeouts-ms) (0: 3 in cycle mode, "
           "2 in cascade mode, so that 50 agents make 25 simultaneous cycles)"),
    Option("priority", str, "role_timeout", "victim selection: role_timeout (login role per priority with "
           "ALTER ROLE … SET deadlock_timeout; superuser), lock_timeout (lowest priority sets lock_timeout; "
           "any user) or none (known-bad: victim at random)", choices=PRIORITIES),
    Option("priority_timeouts_ms", str, "100,400,1000", "deadlock_timeout of priority levels 0 (lowest, the "
           "victim), 1, 2…, comma-separated, ascending (role_timeout)"),
    Option("lock_timeout_ms", int, 25, "lock_timeout of the lowest priority level (lock_timeout priority); "
           "must be below the server's deadlock_timeout, the further below the surer (a member that asks late "
           "can otherwise be picked by the server's own check)"),
    Option("cascade_every_s", float, 3.0, "cascade mode: seconds between cascades (the first comes after one "
           "period of steady load)"),
    Option("gate_detection_ms", float, 500.0, "SLA gate: most p99 deadlock detection time (cycle complete → "
           "victim's error), in ms"),
    Option("gate_max_wait_ms", float, 5000.0, "SLA gate: longest any agent's call may take (no agent starves), "
           "in ms"),
    Option("cascade_min_cycles", int, 20, "SLA gate: least simultaneous cycles in each measured cascade"),
)


def timeouts_ms(opts: Any) -> list[int]:
    try:
        values = [int(p) for p in str(opts.priority_timeouts_ms).split(",") if p.strip()]
    except ValueError:
        values = []
    if len(values) < 2 or any(v <= 0 for v in values) or values != sorted(set(values)):
        raise SettingsError(f"--priority-timeouts-ms {opts.priority_timeouts_ms!r} must be at least two distinct "
                            "ascending positive whole numbers of ms, e.g. 100,400,1000")
    return values


def cycle_size(opts: Any) -> int:
    if opts.cycle_size:
        return int(opts.cycle_size)
    return 3 if opts.deadlock_mode == "cycle" else 2


def validate(opts: Any) -> None:
    """Raise :class:`SettingsError` (one line, naming the flag) if an option is out of range."""
    if opts.deadlock_mode not in MODES:
        raise SettingsError(f"--deadlock-mode {opts.deadlock_mode!r} is not one of {', '.join(MODES)}")
    if opts.priority not in PRIORITIES:
        raise SettingsError(f"--priority {opts.priority!r} is not one of {', '.join(PRIORITIES)}")
    levels = timeouts_ms(opts)
    if opts.cycle_size and not 2 <= opts.cycle_size <= len(levels):
        raise SettingsError(f"--cycle-size must be 0 or between 2 and {len(levels)} (one priority level per "
                            "member, see --priority-timeouts-ms)")
    if opts.lock_timeout_ms <= 0:
        raise SettingsError("--lock-timeout-ms must be greater than 0")
    if opts.cascade_every_s < 1.0:
        raise SettingsError("--cascade-every-s must be at least 1")
    if opts.gate_detection_ms <= 0 or opts.gate_max_wait_ms <= 0:  # --gate-recovery-s is common: toolclash.settings
        raise SettingsError("--gate-detection-ms and --gate-max-wait-ms must be greater than 0")


# --- connections: one login per priority level ------------------------------------------------------------


def role_name(level: int) -> str:
    return f"{ROLE_PREFIX}{level}"


def role_password(admin_url: str, level: int) -> str:
    """Derived from the main URL's password, so every process finds it without shared state."""
    secret = unquote(urlsplit(admin_url).password or "")
    return hashlib.sha256(f"{secret}:{role_name(level)}".encode()).hexdigest()[:32]


def role_url(admin_url: str, level: int) -> str:
    """*admin_url* with the login of priority *level*'s role."""
    parts = urlsplit(admin_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{role_name(level)}:{quote(role_password(admin_url, level), safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def agent_url(admin_url: str, level: int, priority: str) -> str:
    return role_url(admin_url, level) if priority == "role_timeout" else admin_url


def prepare_session(conn: Any, level: int, priority: str, lock_timeout_ms: int) -> dict[str, Any]:
    """Session settings of a member of priority *level*; returns what the server says it uses."""
    with conn.cursor() as cur:
        if priority == "lock_timeout" and level == 0:
            cur.execute("SET lock_timeout = %s", (f"{int(lock_timeout_ms)}ms",))
        cur.execute("SELECT current_setting('deadlock_timeout'), current_setting('lock_timeout'), current_user")
        deadlock_timeout, lock_timeout, user = cur.fetchone()
    conn.commit()
    return {"deadlock_timeout": deadlock_timeout, "lock_timeout": lock_timeout, "user": user}


def ensure_resources(conn: Any, ids: list[str]) -> None:
    """Create *ids* if missing (sorted: agents creating overlapping ids never deadlock here)."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO toolclash.deadlock_resources (id) SELECT unnest(%s::text[]) "
                    "ON CONFLICT (id) DO NOTHING", (sorted(set(ids)),))
    conn.commit()


# --- the tool ----------------------------------------------------------------------------------------------

_WRITE = ("WITH u AS (UPDATE toolclash.deadlock_resources SET counter = counter + 1 WHERE id = %s RETURNING id) "
          "INSERT INTO toolclash.deadlock_writes (op_id, resource) SELECT %s, id FROM u")
_ROUND = ("INSERT INTO toolclash.deadlock_rounds (op_id, agent, cycle, first_res, second_res) "
          "VALUES (%s, %s, %s, %s, %s)")


class MissingResource(Exception):
    """A resource row is missing (the schema was reset under the run)."""


class DeadlockTool:
    """The ``lock_round`` tool bound to one agent's connection."""

    def __init__(self, conn: Any, *, agent: str, priority: str = "role_timeout", fault: str = "none",
                 rng: random.Random | None = None) -> None:
        self.conn = conn
        self.agent = agent
        self.priority = priority
        self.fault = fault
        self.rng = rng or random.Random()

    def _write(self, cur: Any, op_id: str, resource: str) -> None:
        cur.execute(_WRITE, (resource, op_id))
        if cur.rowcount != 1:
            raise MissingResource(resource)

    def lock_round(self, call: Call, first: str, second: str, *, cycle: str,
                   between: Callable[[], Any] | None = None) -> Call:
        """Update *first* then *second* and log the round, in one transaction, as operation *call*.

        *between* runs once, on the first attempt, while the first lock is held (the barrier that
        lets every member of the cycle take its first lock before any asks for its second).
        ``result["tries"]`` holds per attempt: ``t_first`` (first lock held), ``t_req`` (second lock
        requested), ``t_got`` (second lock held), ``t_err`` and ``sqlstate`` (if the attempt failed), wall-clock
        seconds.
        """
        tries: list[dict[str, Any]] = call.result.setdefault("tries", [])
        met = [between is None]  # the cycle's barrier is met once, on the first attempt

        def body(cur: Any) -> dict[str, Any]:
            if self.fault == "hidden_deadlock":
                return hidden(cur)
            return attempt(cur)

        def hidden(cur: Any) -> dict[str, Any]:
            """The planted fault: roll a deadlock back and go again, keeping only the clean attempt's record."""
            for _ in range(20):
                try:
                    return attempt(cur)
                except psycopg2.Error as exc:
                    if exc.pgcode != DEADLOCK:
                        raise
                    tries.pop()  # the deadlock leaves no trace in the call's record
                    cur.connection.rollback()
            return attempt(cur)

        def attempt(cur: Any) -> dict[str, Any]:
            t: dict[str, Any] = {}
            tries.append(t)
            try:
                self._write(cur, call.op_id, first)
                t["t_first"] = time.time()
                if between is not None and not met[0]:
                    met[0] = True
                    between()
                if self.fault == "commit_after_deadlock":
                    cur.execute("SAVEPOINT second_lock")
                t["t_req"] = time.time()
                try:
                    self._write(cur, call.op_id, second)
                    t["t_got"] = time.time()
                except psycopg2.Error as exc:
                    if self.fault == "commit_after_deadlock" and exc.pgcode in VICTIM_STATES:
                        t["t_err"], t["sqlstate"], t["ignored"] = time.time(), exc.pgcode, True
                        cur.execute("ROLLBACK TO SAVEPOINT second_lock")  # the planted fault: go on
                    else:
                        raise
                cur.execute(_ROUND, (call.op_id, self.agent, cycle, first, second))
            except psycopg2.Error as exc:
                t.setdefault("t_err", time.time())
                t.setdefault("sqlstate", exc.pgcode)
                raise
            except MissingResource as exc:
                raise Reject("no-such-resource", error_class="MissingResource", resource=str(exc)) from None
            return {}

        return transact(self.conn, call, body, retry_lock_not_available=self.priority == "lock_timeout",
                        give_up="victim-gave-up" if self.fault == "no_retry" else None)


# --- layout of groups and resources ------------------------------------------------------------------------


def member_of(index: int, size: int) -> tuple[int, int]:
    """(group, member) of the agent with 1-based *index* in its process."""
    return (index - 1) // size, (index - 1) % size


def cycle_resources(process: str, group: int, member: int, size: int) -> tuple[str, str]:
    """Member *member* of *group* locks ``r_member`` then ``r_(member+1) mod size``."""
    return f"{process}:g{group}:r{member}", f"{process}:g{group}:r{(member + 1) % size}"


def own_resources(agent: str) -> tuple[str, str]:
    """Private rows of an agent's background rounds (cascade mode): no other agent touches them."""
    return f"{agent}:own1", f"{agent}:own2"


# --- run hooks ---------------------------------------------------------------------------------------------


def _server_deadlock_timeout_ms(cur: Any) -> int:
    cur.execute("SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'")
    return int(cur.fetchone()[0])


def reset(conn: Any, *, backend: Any = None, priority: str = "role_timeout", priority_timeouts_ms: str = "100,400,1000",
          lock_timeout_ms: int = 25, **_: Any) -> None:
    """Create the schema, empty it, record the server's deadlock counter; make the priority roles."""
    schema.apply(conn, NAME)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.deadlock_resources, toolclash.deadlock_writes, toolclash.deadlock_rounds, "
                    "toolclash.deadlock_meta")
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        cur.execute("INSERT INTO toolclash.deadlock_meta VALUES ('deadlocks_at_start', %s), ('started_at', %s)",
                    (str(cur.fetchone()[0]), str(time.time())))
        log = _server_log(cur)
        if log is not None:
            cur.execute("INSERT INTO toolclash.deadlock_meta VALUES ('log_path', %s), ('log_offset', %s)",
                        (log[0], str(log[1])))
        if priority == "role_timeout":
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if not cur.fetchone()[0]:
                raise SettingsError("--priority role_timeout needs a superuser (ALTER ROLE … SET deadlock_timeout); "
                                    "use --priority lock_timeout with this database")
            admin_url = backend.url("DATABASE_URL") if backend is not None else ""
            for level, ms in enumerate(timeouts_ms(_Opts(priority_timeouts_ms))):
                role = role_name(level)
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(f"{verb} ROLE {role} LOGIN PASSWORD %s", (role_password(admin_url, level),))
                cur.execute(f"ALTER ROLE {role} SET deadlock_timeout = %s", (f"{ms}ms",))
                cur.execute(f"GRANT USAGE ON SCHEMA toolclash TO {role}")
                cur.execute(f"GRANT SELECT, INSERT, UPDATE ON toolclash.deadlock_resources, toolclash.deadlock_writes, "
                            f"toolclash.deadlock_rounds TO {role}")
        elif priority == "lock_timeout":
            server_ms = _server_deadlock_timeout_ms(cur)
            if lock_timeout_ms >= server_ms:
                raise SettingsError(f"--lock-timeout-ms {lock_timeout_ms} must be below the server's "
                                    f"deadlock_timeout ({server_ms} ms), or the server picks the victim")
    conn.commit()


def _server_log(cur: Any) -> tuple[str, int] | None:
    """(path, size) of the server's log if this session can read it: the embedded stack's ``postgres.log``
    next to the data directory, read through ``pg_read_file`` (superuser). None otherwise."""
    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    if not cur.fetchone()[0]:
        return None
    cur.execute("SELECT current_setting('logging_collector'), current_setting('data_directory')")
    collector, data_dir = cur.fetchone()
    if collector == "on":
        return None
    path = data_dir.rstrip("/").rsplit("/", 1)[0] + "/postgres.log"
    cur.execute("SELECT size FROM pg_stat_file(%s, true)", (path,))
    row = cur.fetchone()
    return None if row is None or row[0] is None else (path, int(row[0]))


_DEADLOCK_REPORT = re.compile(r"\[(\d+)\] ERROR:  deadlock detected")
_LOCK_TIMEOUT_REPORT = re.compile(r"\[(\d+)\] ERROR:  canceling statement due to lock timeout")
_LOG_CHUNK = 4 << 20


def read_server_log(cur: Any, path: str, offset: int) -> dict[str, Any]:
    """Deadlock and lock-timeout reports the server logged since *offset*, by victim backend pid."""
    deadlocks: dict[str, int] = {}
    timeouts: dict[str, int] = {}
    waits = 0
    cur.execute("SELECT size FROM pg_stat_file(%s, true)", (path,))
    end = int((cur.fetchone() or [0])[0] or 0)
    carry = ""
    pos = offset
    while pos < end:
        n = min(_LOG_CHUNK, end - pos)
        cur.execute("SELECT pg_read_binary_file(%s, %s, %s)", (path, pos, n))
        text = carry + bytes(cur.fetchone()[0]).decode("utf-8", "replace")
        pos += n
        text, _, carry = text.rpartition("\n") if pos < end else (text, "", "")
        for m in _DEADLOCK_REPORT.finditer(text):
            deadlocks[m.group(1)] = deadlocks.get(m.group(1), 0) + 1
        for m in _LOCK_TIMEOUT_REPORT.finditer(text):
            timeouts[m.group(1)] = timeouts.get(m.group(1), 0) + 1
        waits += text.count("still waiting for")
    return {"path": path, "bytes": end - offset, "deadlock_reports": sum(deadlocks.values()),
            "deadlock_victim_pids": deadlocks, "lock_timeout_reports": sum(timeouts.values()),
            "lock_timeout_pids": timeouts, "lock_wait_lines": waits}


class _Opts:
    def __init__(self, priority_timeouts_ms: str) -> None:
        self.priority_timeouts_ms = priority_timeouts_ms


def snapshot(conn: Any, backend: Any = None) -> dict[str, Any]:
    """Resources, writes, rounds, the deadlock counter's delta and the scenario's open transactions."""
    out: dict[str, Any] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT id, counter FROM toolclash.deadlock_resources ORDER BY id")
        out["resources"] = [{"id": r[0], "counter": int(r[1])} for r in cur.fetchall()]
        cur.execute("SELECT op_id, resource FROM toolclash.deadlock_writes ORDER BY op_id, resource")
        out["writes"] = [{"op_id": r[0], "resource": r[1]} for r in cur.fetchall()]
        cur.execute("SELECT op_id, agent, cycle, first_res, second_res FROM toolclash.deadlock_rounds ORDER BY op_id")
        out["rounds"] = [dict(zip(("op_id", "agent", "cycle", "first", "second"), r, strict=True))
                         for r in cur.fetchall()]
        cur.execute("SELECT key, value FROM toolclash.deadlock_meta")
        meta = dict(cur.fetchall())
        conn.rollback()
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        now = int(cur.fetchone()[0])
        start = int(meta.get("deadlocks_at_start", now))
        out["server"] = {"deadlocks_at_start": start, "deadlocks_at_end": now, "deadlocks_delta": now - start,
                         "deadlock_timeout_ms": _server_deadlock_timeout_ms(cur)}
        prefix = application_name(getattr(backend, "run_id", "") or "", "")
        cur.execute("SELECT pid, usename, application_name, state, EXTRACT(EPOCH FROM now() - xact_start)::float8 "
                    "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND xact_start IS NOT NULL "
                    "AND application_name LIKE %s", (prefix.replace("_", r"\_") + "%",))
        # fetched before the log is read on the same cursor (read afterwards, they were the log query's rows)
        out["open_transactions"] = [dict(zip(("pid", "user", "application_name", "state", "xact_age_s"), r,
                                             strict=True)) for r in cur.fetchall()]
        out["server_log"] = (read_server_log(cur, meta["log_path"], int(meta["log_offset"]))
                             if "log_path" in meta else None)
    conn.rollback()
    return out


SCENARIO = Scenario(
    name=NAME,
    summary="agents take row locks in cycles that deadlock; checks prove each round is all-or-nothing, the chosen "
            "victim lost and the server's count matches",
    tools=(TOOL,),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    validate=validate,
    reset=lambda ctx, conn: reset(conn, backend=ctx.backend, **vars(ctx.opts)),
    snapshot=lambda ctx, conn: snapshot(conn, ctx.backend),
    checks="checks.deadlock",
)
