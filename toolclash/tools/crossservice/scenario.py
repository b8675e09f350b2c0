"""The crossservice scenario on the scenario contract (:mod:`toolclash.scenario`): its options, hooks and
:data:`SCENARIO`.

* ``reset``: apply both schemas, resolve what earlier runs left in doubt (always), empty and seed; a
  fresh ClickHouse table.
* ``start``: the outbox relay (with mid-run 2PC recovery unless the planted fault ``no_recovery``) and,
  for ``--inject clickhouse_outage|auth_restart``, the :class:`~.inject.Outage` beside it.
* ``finish``: stop both, run full recovery (2PC and sagas; not under ``no_recovery``), drain the outbox
  to ClickHouse; returns ``{"relay": counts}``.
* ``snapshot``: main's tables, auth's grants, prepared transactions of both servers, ClickHouse's
  deduplicated events, and the relay's counts from ``finish`` (``ctx.facts``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from toolclash.backend import Backend
from toolclash.db import close_quietly
from toolclash.option import Option, SettingsError, mask_url
from toolclash.scenario import Context, Scenario
from toolclash.tools.crossservice.coordinator import INJECTED, NAME, STRATEGIES, TOOL, business_agent, ensure_schemas
from toolclash.tools.crossservice.inject import Outage
from toolclash.tools.crossservice.recovery import recover
from toolclash.tools.crossservice.relay import CH_TABLE, Relay, clickhouse_client

SERVICES = ("postgres", "auth_postgres", "clickhouse")
DEFAULT_STRATEGY = "2pc"
FAULTS = ("no_recovery", "skip_compensation", "relay_without_dedup", "double_charge")
INJECTIONS = ("none", "coordinator_crash", "participant_terminate", "clickhouse_outage", "auth_restart")
REJECTIONS = frozenset({"insufficient-funds", INJECTED})
"""Correct answers left out of the success rate: no funds, and failures an ``--inject`` option caused."""

_G = NAME

OPTIONS: tuple[Option, ...] = (
    Option("mode", str, "", "cross-service mode: 2pc (two-phase commit) or saga (compensations); empty: "
           "--strategy, else 2pc", choices=("", *STRATEGIES), group=_G),
    Option("inject", str, "none", "failure injected into cross-service calls: coordinator_crash (connections "
           "dropped between prepare and commit), participant_terminate (auth backend terminated between steps), "
           "clickhouse_outage (analytics unavailable for --outage-s from --outage-after-s), auth_restart (the "
           "embedded auth server stopped with pg_ctl -m immediate for --outage-s, then started)", choices=INJECTIONS,
           group=_G),
    Option("inject_rate", float, 0.1, "share of cross-service calls the --inject failure hits", min=0.0, max=1.0,
           group=_G),
    Option("xs_agents", int, 10, "cross-service: business agents (credit accounts) the calls charge", min=1, group=_G),
    Option("xs_initial_credits", int, 1_000_000, "cross-service: starting credits of every account", min=0,
           group=_G),
    Option("xs_cost_max", int, 10, "cross-service: largest cost of one call (credits; the smallest is 1)", min=1,
           group=_G),
    Option("outage_after_s", float, 1.0, "cross-service: --inject clickhouse_outage or auth_restart starts this "
           "many seconds after the run started", min=0.0, group=_G),
    Option("outage_s", float, 2.0, "cross-service: how long the ClickHouse outage or the auth server's stop lasts, "
           "seconds", min=0.0, group=_G),
    Option("relay_interval_s", float, 0.1, "cross-service: pause of the outbox relay between batches, seconds",
           min=0.0, group=_G),
    Option("relay_redeliver_rate", float, 0.1, "cross-service: share of relay batches whose acknowledgement is "
           "lost after the ClickHouse insert (a relay crash): they are delivered again", min=0.0, group=_G),
    Option("recovery_min_age_s", float, 0.5, "cross-service: mid-run recovery leaves prepared transactions "
           "younger than this to their coordinator", min=0.0, group=_G),
)


def validate(opts: Any) -> None:
    """What the options' inclusive bounds cannot say: values that must be strictly inside a bound."""
    if opts.relay_redeliver_rate >= 1.0:
        raise SettingsError("--relay-redeliver-rate must be at least 0 and below 1")
    if opts.outage_s <= 0:
        raise SettingsError("--outage-after-s must be 0 or more and --outage-s greater than 0")
    if opts.relay_interval_s <= 0:
        raise SettingsError("--relay-interval-s must be greater than 0 and --recovery-min-age-s 0 or more")


def preflight(backend: Backend) -> None:
    """Both PostgreSQL servers accept prepared transactions and ClickHouse answers (else one line)."""
    for var in ("DATABASE_URL", "AUTH_DATABASE_URL"):
        conn = backend.pg("preflight", var)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW max_prepared_transactions")
                if int(cur.fetchone()[0]) <= 0:
                    raise SettingsError(f"the server of {var} has max_prepared_transactions = 0; two-phase commit "
                                        "needs it above 0: set it in postgresql.conf and restart")
        finally:
            close_quietly(conn)
    url = backend.url("CLICKHOUSE_URL")
    client = clickhouse_client(url, backend.connect_timeout_s)
    try:
        client.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - one line: what and how to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SettingsError(f"ClickHouse at {mask_url(url)} does not answer ({first[:160]}); check CLICKHOUSE_URL "
                            "(or unset it to use the embedded server)") from None
    finally:
        client.disconnect()


def reset(ctx: Context, conn: Any) -> None:
    """Apply both schemas, resolve what earlier runs left in doubt (always), then empty and seed."""
    backend = ctx.backend
    auth = backend.pg("admin", "AUTH_DATABASE_URL")
    try:
        ensure_schemas(conn, auth)
        recover(conn, auth, who="recovery-start")
        conn.autocommit = False
        auth.autocommit = False
        with auth.cursor() as cur:
            cur.execute("TRUNCATE toolclash.xs_grants")
        auth.commit()
    finally:
        close_quietly(auth)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE toolclash.xs_debits, toolclash.xs_refunds, toolclash.xs_sagas, toolclash.xs_decisions, "
                    "toolclash.xs_outbox, toolclash.xs_local_grants, toolclash.xs_accounts RESTART IDENTITY")
        cur.execute("INSERT INTO toolclash.xs_accounts (agent, balance, initial_balance) "
                    "SELECT 'agent-' || g, %s, %s FROM generate_series(1, %s) AS g",
                    (ctx.opts.xs_initial_credits, ctx.opts.xs_initial_credits, ctx.opts.xs_agents))
    conn.commit()
    ch = clickhouse_client(backend.url("CLICKHOUSE_URL"), backend.connect_timeout_s)
    try:
        with contextlib.suppress(Exception):  # a run that died during --inject clickhouse_outage left it detached
            ch.execute("ATTACH TABLE xs_usage")
        ch.execute("DROP TABLE IF EXISTS xs_usage")
        ch.execute(CH_TABLE)
    finally:
        ch.disconnect()


@dataclass
class Helpers:
    """What :func:`start` started beside the agents, for :func:`finish`."""

    relay: Relay
    outage: Outage | None = None


def start(ctx: Context) -> Helpers:
    """Start the outbox relay (with mid-run 2PC recovery unless the planted fault ``no_recovery``) and the
    ``--inject`` outage, if one is asked for."""
    opts, fault = ctx.opts, ctx.fault
    outage = Outage.of(ctx.backend, opts)  # before anything runs: auth_restart refuses a server it cannot stop
    relay = Relay(ctx.backend, dedup=fault != "relay_without_dedup", redeliver_rate=opts.relay_redeliver_rate,
                  interval_s=opts.relay_interval_s, recover_2pc=fault != "no_recovery",
                  min_age_s=opts.recovery_min_age_s)
    relay.start()
    if outage is not None:
        outage.start()
    return Helpers(relay, outage)


def finish(ctx: Context, handle: Helpers | None, deadline_s: float) -> dict[str, Any]:
    """After the load: stop the relay and the outage, run full recovery (2PC and sagas), drain the outbox to
    ClickHouse. Returns ``{"relay": what the relay did}`` (with the outage's counts)."""
    if handle is None:
        return {}
    relay, outage = handle.relay, handle.outage
    after: dict[str, int] = {}
    try:
        relay.stop()
        if outage is not None:
            outage.stop()
        if ctx.fault != "no_recovery":
            main = ctx.backend.pg("recovery")
            auth = ctx.backend.pg("recovery", "AUTH_DATABASE_URL")
            try:
                after["recovered_at_finish"] = sum(
                    v for k, v in recover(main, auth, who="recovery-finish").items() if k != "in_doubt_seen")
            finally:
                close_quietly(main)
                close_quietly(auth)
        after["drained"] = int(relay.drain(deadline_s))
    finally:
        relay.close()
    counts = dict(relay.counts)
    if outage is not None:
        counts["errors"] += outage.errors
        counts.update(outage.counts)
    return {"relay": {**counts, **after}}


def snapshot_main(conn: Any) -> dict[str, Any]:
    """Main's tables and prepared transactions (what :func:`snapshot` reads from the main server)."""
    out: dict[str, Any] = {}
    out["accounts"] = _rows(conn, "SELECT agent, balance, initial_balance FROM toolclash.xs_accounts ORDER BY agent",
                            ("agent", "balance", "initial_balance"))
    out["debits"] = _rows(conn, "SELECT op_id, agent, tool, cost, mode FROM toolclash.xs_debits ORDER BY op_id",
                          ("op_id", "agent", "tool", "cost", "mode"))
    out["refunds"] = _rows(conn, "SELECT op_id, agent, cost FROM toolclash.xs_refunds ORDER BY op_id",
                           ("op_id", "agent", "cost"))
    out["sagas"] = _rows(conn, "SELECT op_id, state, updated_by FROM toolclash.xs_sagas ORDER BY op_id",
                         ("op_id", "state", "updated_by"))
    out["decisions"] = _rows(conn, "SELECT op_id, decision, decided_by FROM toolclash.xs_decisions ORDER BY op_id",
                             ("op_id", "decision", "decided_by"))
    out["outbox"] = _rows(conn, "SELECT event_id, op_id, kind, agent, cost, EXTRACT(EPOCH FROM created_at)::float8, "
                          "EXTRACT(EPOCH FROM relayed_at)::float8, deliveries FROM toolclash.xs_outbox ORDER BY seq",
                          ("event_id", "op_id", "kind", "agent", "cost", "created_at", "relayed_at", "deliveries"))
    out["prepared_main"] = _rows(conn, _PREPARED, ("gid", "prepared"))
    conn.rollback()
    return out


def snapshot(ctx: Context, conn: Any) -> dict[str, Any]:
    """Main tables, the relay's counts, auth grants, prepared transactions of both servers, and ClickHouse's
    deduplicated events."""
    out = snapshot_main(conn)
    out["accounts_seeded"] = [business_agent(i) for i in range(1, ctx.opts.xs_agents + 1)]
    out["relay"] = ctx.facts.get("relay")
    auth = ctx.backend.pg("capture", "AUTH_DATABASE_URL")
    try:
        out["grants"] = _rows(auth, "SELECT op_id, agent, tool, granted, revoked_at IS NOT NULL "
                              "FROM toolclash.xs_grants ORDER BY op_id",
                              ("op_id", "agent", "tool", "granted", "revoked"))
        out["prepared_auth"] = _rows(auth, _PREPARED, ("gid", "prepared"))
        auth.rollback()
    finally:
        close_quietly(auth)
    try:
        ch = clickhouse_client(ctx.backend.url("CLICKHOUSE_URL"), ctx.backend.connect_timeout_s)
        try:
            out["clickhouse_events"] = [
                dict(zip(("event_id", "op_id", "kind", "agent", "cost"), r, strict=True)) for r in
                ch.execute("SELECT event_id, op_id, kind, agent, cost FROM xs_usage FINAL ORDER BY event_id")]
            out["clickhouse_raw_rows"] = int(ch.execute("SELECT count() FROM xs_usage")[0][0])
        finally:
            ch.disconnect()
    except Exception as exc:  # noqa: BLE001 - the analytics check says unknown
        out["clickhouse_error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return out


_PREPARED = ("SELECT gid, EXTRACT(EPOCH FROM prepared)::float8 FROM pg_prepared_xacts "
             "WHERE database = current_database() ORDER BY gid")


def _rows(conn: Any, sql: str, cols: tuple[str, ...]) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


SCENARIO = Scenario(
    name=NAME,
    summary="grant_tool_access across main PostgreSQL, auth PostgreSQL and ClickHouse (2PC or saga, outbox relay): "
            "every operation is committed everywhere, nowhere, or compensated; nothing left prepared; credits "
            "balance; analytics count each event once",
    tools=(TOOL,),
    strategies=STRATEGIES,
    default_strategy=DEFAULT_STRATEGY,
    faults=FAULTS,
    options=OPTIONS,
    services=SERVICES,
    rejections=REJECTIONS,
    checks="checks.crossservice",
    validate=validate,
    preflight=preflight,
    reset=reset,
    start=start,
    finish=finish,
    snapshot=snapshot,
)
