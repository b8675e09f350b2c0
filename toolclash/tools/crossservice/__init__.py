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
``relay_without_dedup`` (the relay gives every delivery a fresh key: redeliveries count twice), ``double_charge``
(a debit updates the balance twice, one debit row).

Modules: :mod:`.coordinator` (the tool and its SQL), :mod:`.relay` (outbox → ClickHouse, mid-run 2PC
recovery), :mod:`.inject` (outages beside the relay), :mod:`.recovery`, :mod:`.scenario` (options, hooks,
:data:`SCENARIO`). Dependencies point one way: coordinator ← recovery ← relay ← inject ← scenario.
"""

from __future__ import annotations

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
from toolclash.tools.crossservice.inject import Outage, auth_server_control
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
    "CRASH_POINTS",
    "DEFAULT_STRATEGY",
    "FAULTS",
    "GID_PREFIX",
    "INJECTED",
    "INJECTIONS",
    "NAME",
    "OPTIONS",
    "SCENARIO",
    "SERVICES",
    "STRATEGIES",
    "TOOL",
    "TOOL_NAMES",
    "CrossServiceTool",
    "Outage",
    "Relay",
    "auth_server_control",
    "business_agent",
    "clickhouse_client",
    "compensate",
    "decide",
    "ensure_schemas",
    "finish_prepared",
    "gid",
    "op_of_gid",
    "preflight",
    "prepared",
    "recover",
    "resolve_prepared",
    "resolve_sagas",
]
