"""``python -m bench``: toolclash's speed figures, as ratios against references measured in the same run.

Every phase has one shape (:class:`bench.phase.Phase`): its flag, its options, ``run(args, ctx)`` that
returns its figures, and ``rows(figures)`` for the final table. ``bench/__main__.py`` loops over them:

* ``throughput`` — pgbench, the psycopg2 + gevent floor and the credits locustfile (1 and 2 processes), the
  same ``pessimistic`` transaction on the same private server; ratios to pgbench (``bench.throughput``,
  the runs in ``bench.runners``);
* ``distributed`` — one process vs master + 2 and + 4 workers; ``checker`` — the verdict's speed on a
  synthetic 1M-operation run directory; ``config``, ``deadlock``, ``crossservice``, ``queue``, ``pool``,
  ``workspace`` — each scenario's own figures; ``http`` — toolclash's HTTP agents (``--target``) against a plain
  Locust ``FastHttpUser`` on the example platform; ``observability`` (opt-in) — the exporter's cost.

Results: a table on stdout and ``reports/bench-<ts>.json``. Nothing happens at import.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Progress lines on stdout: ``[bench +12.3s] message``, flushed at once."""

    def __init__(self, phases: int = 0) -> None:
        self.started = time.monotonic()
        self.phases = phases
        self.done = 0

    def __call__(self, message: str) -> None:
        print(f"[bench +{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stdout, flush=True)

    def phase(self, title: str) -> None:
        """Announce the next phase: ``phase k/N: title``."""
        self.done += 1
        self(f"phase {self.done}/{self.phases}: {title}")
