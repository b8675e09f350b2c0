"""Retry policy: exponential backoff with full jitter, a maximum of tries and an overall deadline.

Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"): before retry *n*
(1-based) sleep ``uniform(0, min(cap, base * 2**(n-1)))``. The policy never sleeps past
the call's deadline: if the next sleep would cross it, the call gives up instead.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# Causes of a retry, the vocabulary shared by tools, history, checks and metrics.
SERIALIZATION = "serialization"  # SQLSTATE 40001
DEADLOCK = "deadlock"  # SQLSTATE 40P01
LOCK_NOT_AVAILABLE = "lock_not_available"  # SQLSTATE 55P03
VERSION_CONFLICT = "version_conflict"  # compare-and-set matched zero rows
CONFLICT_CAUSES = (SERIALIZATION, DEADLOCK, LOCK_NOT_AVAILABLE, VERSION_CONFLICT)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a tool call may retry a retryable conflict."""

    max_tries: int = 10
    """Attempts in all, the first included (pgbench's ``--max-tries``)."""
    base_s: float = 0.002
    """Backoff cap before the first retry; doubles per retry."""
    cap_s: float = 0.2
    """Largest backoff cap."""
    deadline_s: float = 5.0
    """Overall budget of one call, first attempt to last, backoff included."""

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Sleep before retry number *retry* (1-based): full jitter in ``[0, min(cap, base*2**(retry-1))]``."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(retry - 1, 30)))
        return rng.uniform(0.0, ceiling)


@dataclass
class Attempts:
    """Book-keeping of one call's attempts: how many, which conflicts, how long spent backing off."""

    policy: RetryPolicy
    rng: random.Random
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = field(default=lambda seconds: time.sleep(seconds))
    """Looked up at call time, so gevent's monkey-patched sleep is used under Locust."""
    started: float = field(default=0.0)
    count: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    sqlstates: list[str] = field(default_factory=list)
    backoff_s: float = 0.0
    gave_up: str | None = None
    """Why the call stopped retrying: ``retries-exhausted`` or ``deadline``."""

    def __post_init__(self) -> None:
        self.started = self.clock()

    def next(self) -> bool:
        """Count a new attempt; False once the tries are used up."""
        if self.count >= self.policy.max_tries:
            self.gave_up = "retries-exhausted"
            return False
        self.count += 1
        return True

    def conflict(self, cause: str, sqlstate: str | None = None) -> bool:
        """Record a retryable conflict of the current attempt and back off.

        Returns True if the call may try again, False if it must give up (tries or deadline
        exhausted; :attr:`gave_up` then says which).
        """
        self.retries[cause] += 1
        if sqlstate:
            self.sqlstates.append(sqlstate)
        if self.count >= self.policy.max_tries:
            self.gave_up = "retries-exhausted"
            return False
        delay = self.policy.backoff(self.count, self.rng)
        if self.clock() + delay - self.started > self.policy.deadline_s:
            self.gave_up = "deadline"
            return False
        if delay > 0:
            self.sleep(delay)
            self.backoff_s += delay
        return True

    @property
    def conflicts(self) -> int:
        return sum(self.retries.values())
