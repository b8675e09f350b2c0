"""What an agent sees of its process: the run's settings and services, its history writer, its connections,
live counters, the barrier and the ramp's stages. One :class:`Runtime` per Locust process, filled in by the
plugin (``users/plugin.py``) as the run starts and stops; agents reach it through :func:`runtime`.
"""

from __future__ import annotations

import itertools
import logging
import random
import weakref
from pathlib import Path
from typing import Any

from toolclash import db
from toolclash.backend import Backend, application_name
from toolclash.breaker import STATES
from toolclash.history import HistoryWriter
from toolclash.retry import RetryPolicy
from toolclash.settings import Settings
from toolclash.tools import Call
from users.barrier import Barrier
from users.counters import Counters

log = logging.getLogger("toolclash")


class Runtime:
    """Per-process toolclash state (one instance per Locust process)."""

    def __init__(self, scenarios: list[str]) -> None:
        self.scenarios = scenarios
        self.environment: Any = None
        self.role = ""
        """``local`` (one process), ``master`` or ``worker``: chosen once, at Locust's init."""
        self.settings: Settings | None = None
        self.stack: Any = None
        self.urls: dict[str, str] = {}
        """Every service of the run by environment variable (DATABASE_URL, REDIS_URL, …)."""
        self.run_id = ""
        self.run_dir: Path | None = None
        self.history: HistoryWriter | None = None
        self.process = ""
        self.verdict: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self.run_active = False
        self.counters = Counters()
        self.barriers: Barrier | None = None
        self._agents = itertools.count(1)
        self._stages: list[dict[str, Any]] = []
        self._connections: set[Any] = set()
        """Every connection this process opened for the run; closed at stop (see close_connections)."""
        self.agents: weakref.WeakSet[Any] = weakref.WeakSet()
        """This process's agents (for their circuit breakers' states)."""

    # --- the run's settings and services

    @property
    def is_worker(self) -> bool:
        return self.role == "worker"

    @property
    def database_url(self) -> str:
        return self.urls.get("DATABASE_URL", "")

    def require_settings(self) -> Settings:
        if self.settings is None:
            raise RuntimeError("toolclash settings are not loaded yet (test not started)")
        return self.settings

    def backend(self) -> Backend:
        """The run's services (URLs) and run id, for hooks and agents' extra clients."""
        timeout = self.settings.connect_timeout_s if self.settings else 10.0
        return Backend(self.urls, self.run_id, timeout)

    def next_agent(self) -> str:
        return f"{self.process}-a{next(self._agents)}"

    def policy(self) -> RetryPolicy:
        s = self.require_settings()
        return RetryPolicy(max_tries=s.max_tries, base_s=s.retry_base_ms / 1000.0, cap_s=s.retry_cap_ms / 1000.0,
                           deadline_s=s.retry_deadline_s)

    def rng(self) -> random.Random:
        return random.Random()

    # --- connections: whatever an agent opens is closed at stop, however the agent ended

    def connect(self, who: str, env_var: str = "DATABASE_URL") -> Any:
        """An agent's PostgreSQL connection to *env_var*'s server, registered so that stop closes it."""
        s = self.require_settings()
        conn = db.connect(self.urls[env_var], timeout=s.connect_timeout_s,
                          application_name=application_name(self.run_id, who))
        self._connections.add(conn)
        return conn

    def track(self, client: Any) -> Any:
        """Register any other client with a ``close()`` (Redis, ClickHouse…) so that stop closes it."""
        self._connections.add(client)
        return client

    def forget(self, conn: Any) -> None:
        self._connections.discard(conn)

    def close_connections(self) -> None:
        """Close every agent connection still open. Agents close their own in on_stop, but Ctrl-C raises
        KeyboardInterrupt in whichever greenlet runs at that instant, and Locust's User.run() lets that
        through without on_stop: the session would then stay open until the process exits."""
        left = [c for c in self._connections if not getattr(c, "closed", False)]
        for conn in left:
            if hasattr(conn, "closed"):
                db.close_quietly(conn)
            else:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing at stop must not fail the stop
                    pass
        self._connections.clear()
        if left:
            log.info("closed %d agent connection(s) left open at stop", len(left))

    def breaker_states(self) -> dict[str, int]:
        """Running agents of this process by circuit-breaker state (closed, open, half_open)."""
        counts = dict.fromkeys(STATES, 0)
        for agent in list(self.agents):
            breaker, greenlet = getattr(agent, "breaker", None), getattr(agent, "_greenlet", None)
            if breaker is not None and greenlet is not None and not greenlet.dead:
                counts[breaker.state] += 1
        return counts

    # --- live counters and the barrier

    def count(self, call: Call) -> None:
        """Count one finished call (see :meth:`Counters.count`)."""
        self.counters.count(call)

    def bump(self, key: str, n: int = 1) -> None:
        """Add to a live counter (summed on the master)."""
        self.counters.bump(key, n)

    def barrier(self, name: str, timeout: float) -> bool:
        """Wait until every party (on every process) has arrived at barrier *name*; False on timeout."""
        if self.barriers is None:
            raise RuntimeError("the barrier is not ready (test not started)")
        released = self.barriers.wait(name, timeout)
        self.bump("barrier_waits" if released else "barrier_timeouts")
        return released

    # --- ramp stages (the shape runs on the master or the single process)

    def mark_stage(self, index: int | None, users: int, at: float) -> None:
        """Record that ramp stage *index* (0-based; None: the ramp ended) began at *at* with *users* agents."""
        if self._stages and self._stages[-1]["end"] is None:
            self._stages[-1]["end"] = at
        if index is not None:
            self._stages.append({"stage": index + 1, "users": users, "start": at, "end": None})
            log.info("ramp stage %d: %d agents", index + 1, users)

    def current_stage(self) -> dict[str, Any] | None:
        """The ramp stage under way (``{"stage", "users", "start", "end"}``), None outside a ramp."""
        return self._stages[-1] if self._stages and self._stages[-1]["end"] is None else None

    def stages(self) -> list[dict[str, Any]]:
        return self._stages

    def clear_stages(self) -> None:
        self._stages = []


_runtime: Runtime | None = None


def install(scenarios: list[str]) -> tuple[Runtime, bool]:
    """This process's runtime, made on first call (``(runtime, created)``); later calls add scenarios."""
    global _runtime
    if _runtime is not None:
        for name in scenarios:
            if name not in _runtime.scenarios:
                _runtime.scenarios.append(name)
        return _runtime, False
    _runtime = Runtime(list(scenarios))
    return _runtime, True


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the locustfile did not call users.plugin.setup()")
    return _runtime
