"""Cross-service tool execution: ``grant_tool_access(agent, tool, cost)`` across three stores.

One business operation (keyed by its op id) must, all or nothing:

* deduct *cost* credits from *agent*'s account in the **main** PostgreSQL (``xs_accounts`` and a
  ``xs_debits`` row), writing the usage event to the ``xs_outbox`` table in the same local transaction;
* grant the permission in the **auth** PostgreSQL (``xs_grants``, a second cluster);
* record the usage event in **ClickHouse** (``xs_usage``): the :class:`Relay` moves outbox rows there
  with the event id as idempotency key (ReplacingMergeTree on ``event_id``; readers use ``FINAL``).

Modes (``--mode``, or ``--strategy``):

* ``2pc`` — a coordinator on PREPARE TRANSACTION / COMMIT PREPARED. Both branches are prepared, then
  the decision ``commit`` is written durably to ``xs_decisions`` in main (the commit point), then each
  branch is committed on the server where it was prepared. Any failure before the decision aborts;
  :mod:`.recovery` (also ``python -m toolclash.recover``) resolves what a dead coordinator left prepared
  (presumed abort: no decision means abort; recovery writes ``abort`` into the same log, and the log's
  primary key makes the first decision win, so recovery may run while coordinators are alive).
* ``saga`` — local commits in order (debit+outbox+saga state in main, then the grant in auth); if the
  grant fails, the persisted saga turns ``compensating`` and the compensations run — revoke (a
  tombstone upsert, so a late grant changes nothing) and refund (keyed by op id, with a refund event in
  the outbox) — each idempotent and retried until done. Recovery finishes any saga left half-way.

Injections (``--inject``): ``coordinator_crash`` drops both connections at a random point between the
first PREPARE and the last COMMIT PREPARED (the call is ``unknown``; recovery resolves it);
``participant_terminate`` has the auth backend terminated (``pg_terminate_backend``) between steps;
``clickhouse_outage`` and ``auth_restart`` take a service away for a while (:mod:`.inject`).

Planted faults: ``no_recovery`` (recovery never runs during or after the run: in-doubt transactions
stay), ``skip_compensation`` (a failed saga marks itself failed and refunds nothing),
``relay_without_dedup`` (the relay gives every delivery a fresh key: redeliveries count twice).

Modules: :mod:`.coordinator` (the tool and its SQL), :mod:`.relay` (outbox → ClickHouse, mid-run 2PC
recovery), :mod:`.inject` (outages beside the relay), :mod:`.recovery`, :mod:`.scenario` (options, hooks,
:data:`SCENARIO`). Dependencies point one way: coordinator ← recovery ← relay ← inject ← scenario.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from toolclash import option as _option
from toolclash import settings as _legacy_settings
from toolclash.scenario import Context
from toolclash.tools.crossservice import scenario as _scenario
from toolclash.tools.crossservice.coordinator import (
    CRASH_POINTS,
    GID_PREFIX,
    INJECTED,
    NAME,
    STRATEGIES,
    TOOL,
    TOOL_NAMES,
    CrossServiceTool,
    business_agent,
    compensate,
    decide,
    ensure_schemas,
    finish_prepared,
    gid,
    op_of_gid,
)
from toolclash.tools.crossservice.inject import AuthServerControl, Outage
from toolclash.tools.crossservice.recovery import prepared, recover, resolve_prepared, resolve_sagas
from toolclash.tools.crossservice.relay import Relay, clickhouse_client
from toolclash.tools.crossservice.scenario import (
    DEFAULT_STRATEGY,
    FAULTS,
    INJECTIONS,
    OPTIONS,
    SCENARIO,
    SERVICES,
    preflight,
)

__all__ = [
    "CRASH_POINTS", "DEFAULT_STRATEGY", "FAULTS", "GID_PREFIX", "INJECTED", "INJECTIONS", "NAME", "OPTIONS",
    "SCENARIO", "SERVICES", "STRATEGIES", "TOOL", "TOOL_NAMES", "AuthServerControl", "CrossServiceTool", "Outage",
    "Relay", "business_agent", "clickhouse_client", "compensate", "decide", "ensure_schemas", "finish",
    "finish_prepared", "gid", "op_of_gid", "preflight", "prepared", "recover", "reset", "resolve_prepared",
    "resolve_sagas", "snapshot", "start", "validate",
]


# ---------------------------------------------------------------------------------------------------------------
# LEGACY PATH — delete when the runtime calls SCENARIO's hooks (the scenario contract, toolclash/scenario.py).
#
# users/runtime.py, toolclash/run.py and toolclash/settings.py still treat a scenario as a module with
# STRATEGIES, DEFAULT_STRATEGY, FAULTS, SERVICES, OPTIONS, validate(ns), preflight(backend) (all above) and
# the old hook signatures below. These adapters map the old calls onto SCENARIO's hooks. Facts that finish()
# returns reach snapshot() through _LEGACY_FACTS, keyed by run id: the one global left, and only here.
# ---------------------------------------------------------------------------------------------------------------


def validate(opts: Any) -> None:
    """LEGACY: the old Settings checks neither choices nor bounds and catches its own SettingsError: check every
    option's choices and bounds, then :func:`.scenario.validate`, and raise the old SettingsError."""
    try:
        for opt in OPTIONS:
            opt.check(getattr(opts, opt.name))
        _scenario.validate(opts)
    except _option.SettingsError as exc:
        raise _legacy_settings.SettingsError(str(exc)) from None


def _legacy_context(backend: Any, opts: Any = None, *, run_dir: Path | None = None, fault: str = "none") -> Context:
    values = {o.name: o.default for o in OPTIONS}
    values.update({k: v for k, v in vars(opts or SimpleNamespace()).items() if k in values})
    return SCENARIO.context(backend, SimpleNamespace(**values), fault=fault, run_dir=run_dir)


def reset(conn: Any, *, backend: Any, xs_agents: int, xs_initial_credits: int, **opts: Any) -> None:
    """LEGACY adapter onto :func:`.scenario.reset`."""
    ns = SimpleNamespace(**opts, xs_agents=xs_agents, xs_initial_credits=xs_initial_credits)
    _scenario.reset(_legacy_context(backend, ns), conn)


@dataclass
class _LegacyRun:
    ctx: Context
    helpers: _scenario.Helpers


def _legacy_fault_of(run_dir: Path | None) -> str:
    """LEGACY: the old runtime does not pass the planted fault to start(); it is in the run's options.json."""
    path = Path(run_dir) / "options.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return "none"
    settings = json.loads(path.read_text()).get("settings", {})
    return str((settings.get("faults") or {}).get(NAME, "none"))


def start(backend: Any, opts: Any, run_dir: Path | None, fault: str | None = None) -> _LegacyRun:
    """LEGACY adapter onto :func:`.scenario.start`."""
    ctx = _legacy_context(backend, opts, run_dir=run_dir,
                          fault=fault if fault is not None else _legacy_fault_of(run_dir))
    return _LegacyRun(ctx, _scenario.start(ctx))


_LEGACY_FACTS: dict[str, dict[str, Any]] = {}
"""LEGACY: what finish() returned, by run id, for snapshot() (master process)."""


def finish(backend: Any, opts: Any, handle: _LegacyRun | None, deadline_s: float) -> None:
    """LEGACY adapter onto :func:`.scenario.finish`."""
    if handle is None:
        return
    _LEGACY_FACTS[backend.run_id] = _scenario.finish(handle.ctx, handle.helpers, deadline_s)


def snapshot(conn: Any, backend: Any = None) -> dict[str, Any]:
    """LEGACY adapter onto :func:`.scenario.snapshot` (main's tables only without *backend*)."""
    if backend is None:
        return _scenario.snapshot_main(conn)
    ctx = _legacy_context(backend)
    ctx.facts = _LEGACY_FACTS.pop(backend.run_id, {})
    return _scenario.snapshot(ctx, conn)
