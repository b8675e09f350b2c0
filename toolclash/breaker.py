"""A circuit breaker per agent: after ``failures`` connection failures in a row the agent stops calling (open),
after ``open_s`` it lets one call through (half-open), and that call's outcome closes it (success) or opens it
again (another connection failure). So a crashed service is not hammered by every agent at full speed, and
calls resume at most ``open_s`` after it is back. Locust-free; :mod:`users.agent` wires it to every agent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class Breaker:
    """One agent's breaker. :meth:`allow` before a task, :meth:`failure` / :meth:`success` after it.

    Each method returns the transition it made (``opened``, ``half_open``, ``closed``) or ``""``.
    """

    def __init__(self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1:
            raise ValueError("a breaker opens after at least 1 failure")
        self.threshold = failures
        self.open_s = open_s
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.until = 0.0

    def allow(self) -> tuple[bool, str]:
        """(whether the agent may call now, the transition made): an open breaker half-opens once its time is up."""
        if self.state != OPEN:
            return True, ""
        if self.clock() >= self.until:
            self.state = HALF_OPEN
            return True, "half_open"
        return False, ""

    def wait_s(self) -> float:
        """Seconds until an open breaker half-opens (0 when it is not open)."""
        return max(0.0, self.until - self.clock()) if self.state == OPEN else 0.0

    def failure(self) -> str:
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self.state, self.until = OPEN, self.clock() + self.open_s
            return "opened"
        return ""

    def success(self) -> str:
        self.failures = 0
        if self.state != CLOSED:
            self.state = CLOSED
            return "closed"
        return ""
