"""Every agent kind at once, through the ramp 5 → 10 → 25 → 50 → 100 with per-stage SLA gates.

    locust -f locustfiles/mixed.py --headless                      # the whole ramp, one process
    locust -f locustfiles/mixed.py --headless --processes 4        # a master and 4 workers
    locust -f locustfiles/mixed.py                                 # web UI: start the ramp from the form

Stages are options (--stages, --stage-seconds, --stage-spawn-rate). Scenarios: credits, config, deadlock,
crossservice, queue, pool, workspace. Here the deadlock agents are 3 (one lock cycle) and the queue consumers
2 by default (--queue-consumers), with a 500 ms lease (--queue-lease-ms); the other agents share the rest.
Each scenario's own options apply to its agents; --strategy and --fault apply to the scenarios that know the value.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for toolclash/users/checks

from locust import events

from checks.judge import judge
from users.plugin import setup

setup(scenarios=["credits", "config", "deadlock", "crossservice", "queue", "pool", "workspace"], judge=judge)

from users.config import ConfigAgent  # noqa: E402, F401
from users.credits import CreditAgent  # noqa: E402, F401
from users.crossservice import CrossServiceAgent  # noqa: E402, F401
from users.deadlock import DeadlockAgent  # noqa: E402
from users.pool import PoolAgent  # noqa: E402, F401
from users.queue import QueueConsumer, QueueSubmitter  # noqa: E402, F401
from users.shape import RampShape  # noqa: E402, F401
from users.workspace import WorkspaceAgent  # noqa: E402, F401

DeadlockAgent.fixed_count = 3  # one whole lock cycle (A→B→C) from the first stage on; Locust spawns these first


@events.init.add_listener
def _one_cycle_per_worker(environment, **_kwargs):  # type: ignore[no-untyped-def]
    # A cycle's three agents meet at a barrier inside their own process, and Locust deals fixed-count users
    # round-robin over the workers: three per worker keeps every group whole in distributed runs.
    opts = environment.parsed_options
    if (opts is not None and getattr(opts, "master", False)) or getattr(opts, "processes", None):
        DeadlockAgent.fixed_count = 3 * max(1, int(getattr(opts, "expect_workers", 1) or 1))


@events.init_command_line_parser.add_listener
def _mixed_defaults(parser, **_kwargs):  # type: ignore[no-untyped-def]
    # The ramp's first stage has 5 agents: two consumers leave room for every other kind; analytical queries
    # are smaller than the pool scenario's own (which has the machine to itself) so they don't starve the rest.
    # A stalled consumer (--queue-stall-rate) holds its job for 1.5 leases: with two consumers, both are stalled
    # at once for a few seconds of a run, and with the 1 s lease no critical job could start for up to 1.5 s,
    # which failed the critical-wait gate (P95 < 1 s) on a correct queue now and then. A 500 ms lease bounds that
    # wait at 750 ms and keeps the redeliveries.
    parser.set_defaults(queue_consumers=2, queue_lease_ms=500.0, facts_rows=200_000, scan_rows=50_000)
