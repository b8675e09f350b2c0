"""``python -m bench``: toolclash's speed figures, as ratios against references measured in the same run.

Two phases (each can be skipped):

1. **Throughput** — one private PostgreSQL (``toolclash.stack``) on 127.0.0.1; pgbench runs the
   ``pessimistic`` credit deduction (``SELECT … FOR UPDATE``, ``UPDATE``, ledger ``INSERT``) as a
   custom script; the *floor* (``bench.floor``) runs it through psycopg2 + gevent alone; then the
   credits locustfile runs it through the whole agent path (tool client, history, checks) with
   one Locust process and with ``--processes 2``. The figures are ok operations per second, their
   ratios to pgbench's tps, and the CPU each side (load generator, server) spent per transaction
   (``bench.cpu``). ``--rounds N`` alternates the four runs N times and keeps medians.
2. **Checker speed** — a synthetic, valid credits run directory of ``--ops`` operations; the
   figures are operations per second of ``checks.verdict.evaluate`` (read + check) and of
   ``checks.credits.check_all`` alone on data in memory.

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
