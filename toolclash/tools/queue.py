"""Tool-execution queue: agents submit jobs to a bounded Redis priority queue; consumers execute them.

Three Lua scripts, one Redis round trip each (submit + claim + ack = 3 per job):

* ``submit`` — in one atomic step: refuse a job id already admitted (a retried submission cannot
  enqueue twice), check capacity (queued + in flight < ``--queue-capacity``), the submitting agent's
  and the global rate limit (sliding-window logs in sorted sets, evaluated on the Redis server's own
  clock), then enqueue and raise the in-Redis high-water mark of occupancy. A refusal is a definite
  ``fail`` with reason ``queue-full``, ``rate-limited-agent`` or ``rate-limited-global`` and a
  ``retry_after_ms`` hint.
* ``claim`` — put back jobs whose lease expired (their consumer died or stalled), then pop the most
  urgent ready job (a sorted set scored ``priority * 1e13 + sequence``: critical before normal before
  bulk, FIFO within a priority) and lease it for ``--queue-lease-ms``.
* ``ack`` — finish the job if this delivery still holds it (``lease-lost`` otherwise: a later delivery
  owns it and will ack).

Between claim and ack the consumer executes the job: it works for ``--queue-work-ms`` (sometimes
stalling past its lease, ``--queue-stall-rate``, so redeliveries happen in every run) and writes the
job's effect to PostgreSQL keyed by the job id (``INSERT … ON CONFLICT DO NOTHING``): a redelivered
job finds its effect there and cannot apply twice. Exactly-once *effect* over at-least-once delivery.

Every job's life (agent, priority, admitted, first claimed, done, deliveries, state) is kept in one
Redis hash for the run, so the checks can account for every job from the final state alone.

Planted faults (each caught by a check, README):

* ``check_then_push`` — capacity and rate limits checked in one round trip, the push in another:
  concurrent submitters pass the check together and overfill the queue (``queue.capacity``).
* ``non_idempotent_consumer`` — the effect is keyed by job id *and delivery number*: a redelivered
  job applies twice (``queue.duplicates``).
* ``ignore_priority`` — jobs are scored by sequence only: plain FIFO (``queue.priority``).
* ``fixed_window`` — per-window counters instead of a sliding window: up to twice the limit within
  one window across a boundary (``queue.rate_limit``).
* ``no_lease`` — a claim pops the job without a lease: a consumer that dies loses it
  (``queue.accounting`` names the lost jobs).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolclash import schema
from toolclash.history import FAIL, OK, UNKNOWN
from toolclash.option import Option, SettingsError, mask_url
from toolclash.retry import RetryPolicy
from toolclash.scenario import Context, Scenario
from toolclash.tools import STATEMENT, Call, think, transact

NAME = "queue"
STRATEGIES = ("lua",)
"""One correct strategy: every queue operation is one Lua script. The known-bad variants are FAULTS."""
DEFAULT_STRATEGY = "lua"
FAULTS = ("check_then_push", "non_idempotent_consumer", "ignore_priority", "fixed_window", "no_lease")
PRIORITIES = ("critical", "normal", "bulk")
"""Index = priority number stored in Redis; a lower number is more urgent."""
REJECTIONS = ("queue-full", "rate-limited-agent", "rate-limited-global")
PREFIX = "toolclash:{queue}:"
"""Every key of the scenario starts with this (one hash slot); reset deletes exactly these."""
SCORE_STRIDE = 10**13
"""Score = priority * SCORE_STRIDE + sequence: exact in a double while sequence < 1e13."""

OPTIONS: tuple[Option, ...] = (
    Option("queue_capacity", int, 50, "most jobs queued + in flight at once"),
    Option("queue_rate_per_agent", int, 4, "most admissions of one agent in any --queue-rate-window-s"),
    Option("queue_rate_global", int, 400, "most admissions of all agents together in any --queue-rate-window-s"),
    Option("queue_rate_window_s", float, 1.0, "length of the sliding rate-limit window, in seconds"),
    Option("queue_lease_ms", float, 1000.0, "a claimed job goes back to the queue if not acked within this"),
    Option("queue_work_ms", float, 40.0, "time a consumer spends executing one job"),
    Option("queue_stall_rate", float, 0.02, "share of jobs whose consumer stalls past its lease (redelivered)"),
    Option("queue_consumers", int, 10, "consumer agents (Locust users of their own; the rest submit)"),
    Option("queue_priority_mix", str, "10,60,30", "percent of critical,normal,bulk submissions"),
    Option("queue_burst_max", int, 4, "jobs an agent submits back to back per task (1..N)"),
    Option("queue_submit_tries", int, 3, "attempts per job before the agent gives up on a rejection"),
    Option("queue_retry_cap_ms", float, 500.0, "longest an agent honours a retry-after hint"),
    Option("queue_full_retry_ms", int, 100, "retry-after hint of a queue-full rejection, in ms"),
    Option("queue_drain_timeout_s", float, 20.0, "after the load stops, longest wait for the queue to drain"),
    Option("queue_drain_consumers", int, 8, "consumers that drain the queue after the load stops"),
    Option("queue_inversion_tolerance_ms", float, 100.0, "a lower-priority job may start while a more urgent "
           "one has waited at most this long"),
    Option("gate_critical_wait_p95_ms", float, 1000.0, "SLA gate: most P95 queue wait of critical jobs, in ms"),
)


def validate(opts: Any) -> None:
    """Raise :class:`SettingsError` (one line, naming the flag) if an option is out of range."""
    positive = ("queue_capacity", "queue_rate_per_agent", "queue_rate_global", "queue_rate_window_s",
                "queue_lease_ms", "queue_consumers", "queue_burst_max", "queue_submit_tries",
                "queue_drain_timeout_s", "queue_drain_consumers", "gate_critical_wait_p95_ms")
    for name in positive:
        if getattr(opts, name) <= 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be greater than 0")
    if opts.queue_work_ms < 0 or opts.queue_retry_cap_ms < 0 or opts.queue_full_retry_ms < 0 \
            or opts.queue_inversion_tolerance_ms < 0:
        raise SettingsError("--queue-work-ms, --queue-retry-cap-ms, --queue-full-retry-ms and "
                            "--queue-inversion-tolerance-ms must be 0 or more")
    if not 0.0 <= opts.queue_stall_rate <= 1.0:
        raise SettingsError("--queue-stall-rate must be between 0 and 1")
    priority_mix(opts.queue_priority_mix)


def priority_mix(text: str) -> tuple[float, float, float]:
    """``"10,60,30"`` → weights of critical, normal, bulk (raises :class:`SettingsError`)."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise SettingsError(f"--queue-priority-mix {text!r} must be three weights critical,normal,bulk, e.g. 10,60,30")
    return parts[0], parts[1], parts[2]


# ------------------------------------------------------------------------------------------- keys


class K:
    """The scenario's Redis keys."""

    ready = PREFIX + "ready"  # ZSET job -> priority * 1e13 + seq
    inflight = PREFIX + "inflight"  # ZSET job -> lease deadline (µs)
    jobs = PREFIX + "jobs"  # HASH job -> agent|prio|admitted|score|claimed|done|deliveries|state
    seq = PREFIX + "seq"
    hwm = PREFIX + "hwm"  # highest occupancy seen by an admission
    rl_global = PREFIX + "rl:global"
    marker = PREFIX + "marker"  # the run id, set at reset: gone after a restart means the data was lost
    drain = PREFIX + "drain"  # JSON summary of the drain

    @staticmethod
    def rl_agent(agent: str) -> str:
        return PREFIX + "rl:agent:" + agent


_LUA_COMMON = """
local function fmt(n) return string.format('%.0f', n) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function split(s)
  local out, start = {}, 1
  while true do
    local i = string.find(s, '|', start, true)
    if not i then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end
"""

SUBMIT_LUA = _LUA_COMMON + """
-- KEYS: ready, inflight, jobs, seq, hwm, rl_agent, rl_global
-- ARGV: id, agent, prio, capacity, agent_limit, global_limit, window_us, mode (full|check|push),
--       window (sliding|fixed), by_priority (1|0), full_retry_ms
local now = now_us()
local id = ARGV[1]
local mode, win = ARGV[8], tonumber(ARGV[7])
if redis.call('HEXISTS', KEYS[3], id) == 1 then return {'dup', 0, fmt(now), 0} end
local fixed = ARGV[9] == 'fixed'
local wstart = now - (now % win)
local ak, gk = KEYS[6], KEYS[7]
if fixed then ak = ak .. ':' .. fmt(wstart); gk = gk .. ':' .. fmt(wstart) end
local occ = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
if mode ~= 'push' then
  if occ >= tonumber(ARGV[4]) then return {'queue-full', tonumber(ARGV[11]), fmt(now), occ} end
  if fixed then
    local retry = math.ceil((wstart + win - now) / 1000)
    if tonumber(redis.call('GET', ak) or '0') >= tonumber(ARGV[5]) then
      return {'rate-limited-agent', retry, fmt(now), occ} end
    if tonumber(redis.call('GET', gk) or '0') >= tonumber(ARGV[6]) then
      return {'rate-limited-global', retry, fmt(now), occ} end
  else
    local floor = fmt(now - win)
    redis.call('ZREMRANGEBYSCORE', ak, '-inf', floor)
    if redis.call('ZCARD', ak) >= tonumber(ARGV[5]) then
      local oldest = redis.call('ZRANGE', ak, 0, 0, 'WITHSCORES')
      return {'rate-limited-agent', math.max(1, math.ceil((tonumber(oldest[2]) + win - now) / 1000)), fmt(now), occ}
    end
    redis.call('ZREMRANGEBYSCORE', gk, '-inf', floor)
    if redis.call('ZCARD', gk) >= tonumber(ARGV[6]) then
      local oldest = redis.call('ZRANGE', gk, 0, 0, 'WITHSCORES')
      return {'rate-limited-global', math.max(1, math.ceil((tonumber(oldest[2]) + win - now) / 1000)), fmt(now), occ}
    end
  end
  if mode == 'check' then return {'checked', 0, fmt(now), occ} end
end
local ttl = math.ceil(2 * win / 1000) + 1000
if fixed then
  redis.call('INCR', ak); redis.call('PEXPIRE', ak, ttl)
  redis.call('INCR', gk); redis.call('PEXPIRE', gk, ttl)
else
  redis.call('ZADD', ak, fmt(now), id); redis.call('PEXPIRE', ak, ttl)
  redis.call('ZADD', gk, fmt(now), id); redis.call('PEXPIRE', gk, ttl)
end
local seq = redis.call('INCR', KEYS[4])
local score = seq
if ARGV[10] == '1' then score = tonumber(ARGV[3]) * 10000000000000 + seq end
redis.call('ZADD', KEYS[1], fmt(score), id)
redis.call('HSET', KEYS[3], id, table.concat({ARGV[2], ARGV[3], fmt(now), fmt(score), '0', '0', '0', 'q'}, '|'))
occ = occ + 1
if occ > tonumber(redis.call('GET', KEYS[5]) or '0') then redis.call('SET', KEYS[5], occ) end
return {'ok', seq, fmt(now), occ}
"""

CLAIM_LUA = _LUA_COMMON + """
-- KEYS: ready, inflight, jobs   ARGV: lease_us, lease (1|0)
local now = now_us()
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now), 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  local f = split(redis.call('HGET', KEYS[3], id))
  f[8] = 'q'
  redis.call('ZADD', KEYS[1], f[4], id)
  redis.call('HSET', KEYS[3], id, table.concat(f, '|'))
end
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then return {'empty', fmt(now), #expired} end
local id = popped[1]
local f = split(redis.call('HGET', KEYS[3], id))
local n = tonumber(f[7]) + 1
f[7] = fmt(n)
if f[5] == '0' then f[5] = fmt(now) end
f[8] = 'f'
if ARGV[2] == '1' then redis.call('ZADD', KEYS[2], fmt(now + tonumber(ARGV[1])), id) end
redis.call('HSET', KEYS[3], id, table.concat(f, '|'))
return {'ok', fmt(now), #expired, id, n, tonumber(f[2]), f[3], f[1]}
"""

ACK_LUA = _LUA_COMMON + """
-- KEYS: ready, inflight, jobs   ARGV: id, delivery
local now = now_us()
local id = ARGV[1]
local raw = redis.call('HGET', KEYS[3], id)
if not raw then return {'no-such-job', fmt(now)} end
local f = split(raw)
if f[8] == 'd' then return {'already-done', fmt(now)} end
if tonumber(f[7]) ~= tonumber(ARGV[2]) then return {'lease-lost', fmt(now)} end
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[1], id)
f[6] = fmt(now)
f[8] = 'd'
redis.call('HSET', KEYS[3], id, table.concat(f, '|'))
return {'ok', fmt(now)}
"""


# ------------------------------------------------------------------------------------------ clients


def redis_client(url: str, *, timeout: float = 10.0) -> Any:
    """A Redis client holding one connection, no hidden retries (a retry would be an unseen round trip)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), single_connection_client=True,
                                health_check_interval=0)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redis_outcome(exc: BaseException) -> tuple[str, str, str]:
    """(outcome, reason, error_class) of a Redis error: the script may have run unless Redis said it didn't."""
    import redis

    name = type(exc).__name__
    if isinstance(exc, redis.BusyLoadingError):  # the server refused before running anything
        return FAIL, "redis-loading", name
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return UNKNOWN, "redis-connection-lost", name
    if isinstance(exc, redis.ResponseError):
        return FAIL, "redis-error: " + str(exc)[:120], name
    return UNKNOWN, "redis-error: " + str(exc)[:120], name


@dataclass
class Claimed:
    """A job a consumer holds (one delivery of it)."""

    job: str
    delivery: int
    priority: int
    admitted_us: int
    claimed_us: int
    agent: str


class QueueTool:
    """The queue's tools bound to one agent's Redis client (and PostgreSQL connection, for consumers)."""

    def __init__(self, redis: Any, conn: Any = None, *, agent: str, opts: Any, fault: str = "none",
                 rng: random.Random | None = None) -> None:
        self.redis = redis
        self.conn = conn
        self.agent = agent
        self.opts = opts
        self.fault = fault
        self.rng = rng or random.Random()
        self._submit = redis.register_script(SUBMIT_LUA)
        self._claim = redis.register_script(CLAIM_LUA)
        self._ack = redis.register_script(ACK_LUA)
        self.window_us = round(opts.queue_rate_window_s * 1_000_000)
        self.requeued = 0
        """Expired leases this tool's claims put back (redeliveries to come)."""

    # --- submit ---

    def _submit_args(self, job: str, priority: int, mode: str) -> list[Any]:
        o = self.opts
        return [job, self.agent, priority, o.queue_capacity, o.queue_rate_per_agent, o.queue_rate_global,
                self.window_us, mode, "fixed" if self.fault == "fixed_window" else "sliding",
                "0" if self.fault == "ignore_priority" else "1", o.queue_full_retry_ms]

    def submit(self, call: Call, priority: int) -> Call:
        """Submit job ``call.op_id`` at *priority* (0 critical, 1 normal, 2 bulk): ok, or fail with a reason."""
        keys = [K.ready, K.inflight, K.jobs, K.seq, K.hwm, K.rl_agent(self.agent), K.rl_global]
        job = call.op_id
        call.attempts.next()
        try:
            call.phase = STATEMENT
            if self.fault == "check_then_push":
                status, retry, now, occ = self._submit(keys, self._submit_args(job, priority, "check"))
                if _s(status) != "checked":
                    return call.finish(FAIL, _s(status), retry_after_ms=int(retry), at_us=int(now),
                                       occupancy=int(occ))
                think(max(1.0, self.opts.queue_work_ms / 10))  # the agent "prepares" the job between check and push
                status, seq, now, occ = self._submit(keys, self._submit_args(job, priority, "push"))
            else:
                status, seq, now, occ = self._submit(keys, self._submit_args(job, priority, "full"))
        except Exception as exc:  # noqa: BLE001 - classified: fail or unknown, never a crash of the agent
            outcome, reason, error_class = _redis_outcome(exc)
            return call.finish(outcome, reason, error_class)
        status = _s(status)
        if status in ("ok", "dup"):
            return call.finish(OK, job=job, seq=int(seq), admitted_us=int(now), occupancy=int(occ),
                               duplicate=status == "dup")
        return call.finish(FAIL, status, retry_after_ms=int(seq), at_us=int(now), occupancy=int(occ))

    # --- claim / execute / ack ---

    def claim(self) -> Claimed | None:
        """Lease the most urgent ready job (putting expired leases back first); None if there is none."""
        lease_us = round(self.opts.queue_lease_ms * 1000)
        reply = self._claim([K.ready, K.inflight, K.jobs], [lease_us, "0" if self.fault == "no_lease" else "1"])
        self.requeued += int(reply[2])
        if _s(reply[0]) != "ok":
            return None
        return Claimed(job=_s(reply[3]), delivery=int(reply[4]), priority=int(reply[5]),
                       admitted_us=int(_s(reply[6])), claimed_us=int(_s(reply[1])), agent=_s(reply[7]))

    def execute(self, call: Call, job: Claimed, *, stall: bool | None = None) -> Call:
        """Execute a claimed job: work, write its effect under the job id (idempotent), ack the delivery."""
        if stall is None:
            stall = self.rng.random() < self.opts.queue_stall_rate
        think(self.opts.queue_lease_ms * 1.5 if stall else self.opts.queue_work_ms)
        key = f"{job.job}:{job.delivery}" if self.fault == "non_idempotent_consumer" else job.job

        def effect(cur: Any) -> dict[str, Any]:
            cur.execute("INSERT INTO toolclash.queue_effects (effect_key, job_id, delivery, priority, consumer) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (effect_key) DO NOTHING RETURNING seq",
                        (key, job.job, job.delivery, job.priority, self.agent))
            row = cur.fetchone()
            return {"applied": row is not None}

        transact(self.conn, call, effect)
        call.result.update(job=job.job, delivery=job.delivery, priority=job.priority, stalled=stall,
                           wait_ms=round((job.claimed_us - job.admitted_us) / 1000.0, 3))
        if call.outcome != OK:
            return call  # the lease expires and the job is redelivered
        try:
            status, _now = self._ack([K.ready, K.inflight, K.jobs], [job.job, job.delivery])
            call.result["ack"] = _s(status)
        except Exception as exc:  # noqa: BLE001 - the effect is committed; only the ack is in doubt
            call.result["ack"] = "unknown: " + type(exc).__name__
        return call


# ------------------------------------------------------------------------------------- scenario hooks


def preflight(backend: Any) -> None:
    """Redis answers an authenticated PING (else one line saying what to fix)."""
    url = backend.url("REDIS_URL")
    client = None
    try:
        client = redis_client(url, timeout=backend.connect_timeout_s)  # connects at once
        client.ping()
    except Exception as exc:  # noqa: BLE001 - one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(f"cannot reach Redis at {mask_url(url)}: {first}. Check REDIS_URL (or unset it to "
                           "use the embedded server)") from None
    finally:
        if client is not None:
            client.close()


def clear_keys(client: Any) -> int:
    """Delete every key of the scenario (and nothing else); return how many."""
    n = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=PREFIX.replace("{", "\\{").replace("}", "\\}") + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            n += client.delete(*batch)
            batch = []
    if batch:
        n += client.delete(*batch)
    return n


def occupancy(client: Any) -> dict[str, int]:
    """Ready jobs per priority name (:data:`PRIORITIES`), and ``all``: ready + in flight, the occupancy that
    admission compares with ``--queue-capacity`` (one round trip; for the live gauges)."""
    pipe = client.pipeline(transaction=False)
    for i in range(len(PRIORITIES)):
        pipe.zcount(K.ready, i * SCORE_STRIDE, f"({(i + 1) * SCORE_STRIDE}")
    pipe.zcard(K.ready)
    pipe.zcard(K.inflight)
    *ready, total, inflight = pipe.execute()
    out = {name: int(n) for name, n in zip(PRIORITIES, ready, strict=True)}
    out["all"] = int(total) + int(inflight)
    return out


CONFIG_KEYS = ("queue_capacity", "queue_rate_per_agent", "queue_rate_global", "queue_rate_window_s",
               "queue_lease_ms", "queue_inversion_tolerance_ms", "gate_critical_wait_p95_ms")


def reset(conn: Any, *, backend: Any, **opts: Any) -> None:
    """Create/empty the PostgreSQL tables and the scenario's Redis keys; note the run and the Redis server."""
    schema.apply(conn, NAME)
    client = redis_client(backend.url("REDIS_URL"), timeout=backend.connect_timeout_s)
    try:
        clear_keys(client)
        for script in (SUBMIT_LUA, CLAIM_LUA, ACK_LUA):  # into the server's script cache: EVALSHA hits at once
            client.script_load(script)
        marker = backend.run_id or f"run-{time.time():.6f}"
        client.set(K.marker, marker)
        server_run_id = _s(client.info("server")["run_id"])
    finally:
        client.close()
    config = {k: opts[k] for k in CONFIG_KEYS if k in opts}
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.queue_effects RESTART IDENTITY")
        cur.execute("DELETE FROM toolclash.queue_meta")
        cur.execute("INSERT INTO toolclash.queue_meta (id, marker, redis_run_id, config) VALUES (1, %s, %s, %s)",
                    (marker, server_run_id, json.dumps(config)))
    conn.commit()


def parse_job(raw: str) -> list[Any]:
    """A job record ``agent|prio|admitted|score|claimed|done|deliveries|state`` →
    ``[agent, prio, admitted_us, claimed_us, done_us, deliveries, state]`` (0: not yet)."""
    agent, prio, admitted, _score, claimed, done, deliveries, state = raw.split("|")
    return [agent, int(prio), int(admitted), int(claimed), int(done), int(deliveries), state]


def snapshot(conn: Any, backend: Any = None) -> dict[str, Any]:
    """Effects and meta from PostgreSQL; every job record, occupancy, high-water mark and server facts from Redis."""
    out: dict[str, Any] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT marker, redis_run_id, config FROM toolclash.queue_meta WHERE id = 1")
        row = cur.fetchone()
        out["meta"] = None if row is None else {"marker": row[0], "redis_run_id": row[1], "config": row[2]}
        cur.execute("SELECT seq, effect_key, job_id, delivery, priority, consumer "
                    "FROM toolclash.queue_effects ORDER BY seq")
        out["effects"] = [list(r) for r in cur.fetchall()]
    conn.rollback()
    out["redis"] = None
    if backend is None:
        out["redis_error"] = "no backend given to the snapshot"
        return out
    try:
        client = redis_client(backend.url("REDIS_URL"), timeout=backend.connect_timeout_s)
        try:
            jobs = {_s(k): parse_job(_s(v)) for k, v in client.hscan_iter(K.jobs, count=5000)}
            info = client.info("server")
            persistence = client.info("persistence")
            drain = client.get(K.drain)
            marker = client.get(K.marker)
            out["redis"] = {
                "marker": None if marker is None else _s(marker), "server_run_id": _s(info["run_id"]),
                "uptime_s": int(info["uptime_in_seconds"]), "aof_enabled": int(persistence.get("aof_enabled", 0)),
                "hwm": int(client.get(K.hwm) or 0), "ready": int(client.zcard(K.ready)),
                "inflight": int(client.zcard(K.inflight)), "jobs": jobs,
                "ready_jobs": [_s(j) for j in client.zrange(K.ready, 0, -1)],
                "inflight_jobs": [_s(j) for j in client.zrange(K.inflight, 0, -1)],
                "drain": json.loads(drain) if drain else None,
            }
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - the checks say unknown where Redis's side is missing
        out["redis_error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return out


# ------------------------------------------------------------------------------------------- drain


def _drain_policy() -> RetryPolicy:
    return RetryPolicy(max_tries=5, base_s=0.005, cap_s=0.1, deadline_s=5.0)


def consume(tool: QueueTool, *, empty: Callable[[], bool], deadline: float, poll_s: float, name: str) -> int:
    """Claim and execute jobs with *tool* until *empty()* (asked whenever a claim finds nothing: no job queued
    or leased) or the *deadline* (``time.monotonic()``) passes; return how many were executed. Used by the drain;
    Locust consumers run the same steps, one per task."""
    done = 0
    rng = random.Random()
    while time.monotonic() < deadline:
        job = tool.claim()
        if job is None:
            if empty():
                return done
            time.sleep(poll_s)  # jobs are leased by consumers that stopped: wait for their leases to expire
            continue
        call = Call(op_id=f"{name}-{done + 1}", policy=_drain_policy(), rng=rng)
        tool.execute(call, job, stall=False)
        done += 1
        if call.outcome != OK and tool.conn is not None and tool.conn.closed:
            return done
    return done


def finish(ctx: Context, handle: Any, deadline_s: float) -> dict[str, Any]:
    """After the submitters stopped: drain the queue with ``--queue-drain-consumers`` consumers until it is empty
    (jobs of consumers cut off at stop come back when their lease expires) or ``--queue-drain-timeout-s``."""
    return {"drain": drain(ctx.backend, ctx.opts, timeout_s=ctx.opts.queue_drain_timeout_s)}


def drain(backend: Any, opts: Any, *, timeout_s: float, fault: str = "none") -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + timeout_s
    url = backend.url("REDIS_URL")
    probe = redis_client(url, timeout=backend.connect_timeout_s)
    executed = [0] * opts.queue_drain_consumers
    errors: list[str] = []

    lock = threading.Lock()

    def empty() -> bool:
        with lock:  # one probe connection shared by the drain's consumers
            return int(probe.zcard(K.ready)) + int(probe.zcard(K.inflight)) == 0

    def worker(i: int) -> None:
        conn = client = None
        try:
            conn = backend.pg(f"drain-{i}")
            client = redis_client(url, timeout=backend.connect_timeout_s)
            tool = QueueTool(client, conn, agent=f"drain-{i}", opts=opts, fault=fault)
            executed[i] = consume(tool, empty=empty, deadline=deadline, poll_s=0.02, name=f"drain-{i}")
        except Exception as exc:  # noqa: BLE001 - reported in the drain summary; the checks judge the state
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            if client is not None:
                client.close()
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker, args=(i,), name=f"queue-drain-{i}", daemon=True)
               for i in range(opts.queue_drain_consumers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 10.0)
        left = int(probe.zcard(K.ready)) + int(probe.zcard(K.inflight))
        summary = {"executed": sum(executed), "seconds": round(time.monotonic() - started, 3), "left": left,
                   "timed_out": left > 0, "errors": errors[:5]}
        probe.set(K.drain, json.dumps(summary))
        return summary
    finally:
        probe.close()


SCENARIO = Scenario(
    name=NAME,
    summary="agents submit jobs to a bounded Redis queue with priorities and rate limits; checks prove no job was "
            "lost or run twice and every limit held",
    tools=("submit", "execute"),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    services=("postgres", "redis"),
    rejections=frozenset(REJECTIONS),
    validate=validate,
    preflight=preflight,
    reset=lambda ctx, conn: reset(conn, backend=ctx.backend, **vars(ctx.opts)),
    finish=finish,
    snapshot=lambda ctx, conn: snapshot(conn, ctx.backend),
    checks="checks.queue",
)
