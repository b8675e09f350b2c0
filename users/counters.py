"""Live counters that Locust's request statistics do not hold (commits, rollbacks, retries by cause, SQLSTATEs,
scenario events). Each process counts; a worker sends its deltas with Locust's report message, the master sums."""

from __future__ import annotations

from collections import Counter
from typing import Any

from toolclash.history import OK
from toolclash.tools import Call


class Counters:
    """This process's counters, and the delta it still owes the master."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self._unsent: Counter[str] = Counter()

    def bump(self, key: str, n: int = 1) -> None:
        self.totals[key] += n
        self._unsent[key] += n

    def count(self, call: Call) -> None:
        """Count one finished call: outcome, commits, rollbacks, retries by cause, SQLSTATEs, backoff."""
        attempts = call.attempts
        bump = self.bump
        bump(f"calls_{call.outcome}")
        bump("attempts", attempts.count)
        if call.outcome == OK:
            bump("commits")
        rollbacks = attempts.conflicts + (1 if call.outcome == "fail" else 0)
        if rollbacks:
            bump("rollbacks", rollbacks)
        for cause, n in attempts.retries.items():
            bump(f"retries_{cause}", n)
            bump("conflicts", n)
        for state in attempts.sqlstates:
            bump(f"sqlstate_{state}")
        if call.reason in ("timeout", "deadline"):
            bump("timeouts")
        if attempts.backoff_s:
            bump("backoff_ms", round(attempts.backoff_s * 1000.0))

    def take_delta(self) -> dict[str, int]:
        """What changed since the last call (a worker ships it in its report)."""
        delta = dict(self._unsent)
        self._unsent.clear()
        return delta

    def merge(self, delta: dict[str, Any] | None) -> None:
        """Add a worker's delta (master)."""
        self.totals.update(delta or {})

    def clear(self) -> None:
        self.totals.clear()
        self._unsent.clear()

    def __iter__(self) -> Any:
        return iter(self.totals)

    def items(self) -> Any:
        return self.totals.items()

    def __getitem__(self, key: str) -> int:
        return self.totals[key]
