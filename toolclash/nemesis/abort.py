"""Emergency stop: the ``--abort-on`` conditions and the monitor that watches them while a run goes on.

``--abort-on`` is a list of conditions separated by ``;`` (or ``,``); the first that holds stops the run:

* ``error-rate>0.5 for 5s`` (or ``>50%``): for the last 5 s, more than half of the calls failed or ended in
  doubt (connect failures included, correct business answers such as insufficient funds left out): in every
  second of those 5 that saw calls, and at least half of them did, with at least 5 calls in all (a worker's
  counters reach the master every 3 s: a short window may see none, and then it does not hold);
* ``unreachable postgres for 10s`` (or ``unreachable for 10s``: any service of the run): the service has not
  answered a probe (a connect and a trivial query, 1 s timeout, every 0.5 s) for that long;
* ``invariant``: a scenario's live invariant is broken (e.g. a negative credit balance), polled every second
  on a connection of its own; a probe that cannot run (a fault) is not a broken invariant.

:class:`AbortMonitor` is Locust-free: it gets the counters, probes and invariants as callables and calls
``trigger(reason)`` once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from toolclash.nemesis.spec import SERVICE_VARS, SERVICES, NemesisError, seconds, service_name

log = logging.getLogger("toolclash")

TICK_S = 0.5
PROBE_TIMEOUT_S = 1.0
MIN_CALLS = 5
INVARIANT_EVERY_S = 1.0

_RATE_RE = re.compile(r"^error[-_]?rate\s*>\s*(\d+(?:\.\d+)?)(%?)\s+for\s+(\S+)$", re.I)
_UNREACHABLE_RE = re.compile(r"^unreachable(?:\s+(\S+))?\s+for\s+(\S+)$", re.I)


@dataclass(frozen=True)
class Condition:
    kind: str
    """``error_rate``, ``unreachable`` or ``invariant``."""
    threshold: float = 0.0
    for_s: float = 0.0
    service: str = ""
    """For ``unreachable``: the service (empty: any service of the run)."""
    text: str = ""


def parse_abort(text: str) -> tuple[Condition, ...]:
    """The conditions of ``--abort-on`` *text*; :class:`NemesisError` (one line) when one is not understood."""
    out = []
    for part in (p.strip() for p in re.split(r"[;,]", text or "")):
        if not part:
            continue
        words = " ".join(part.split())
        try:
            out.append(_condition(words))
        except NemesisError as exc:
            raise NemesisError(f"--abort-on {words!r}: {exc}") from None
    return tuple(out)


def _condition(text: str) -> Condition:
    if text.lower() == "invariant":
        return Condition("invariant", text=text)
    m = _RATE_RE.match(text)
    if m:
        value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
        if not 0.0 <= value < 1.0:
            raise NemesisError("the error rate must be at least 0 and below 1 (or 100%)")
        for_s = seconds(m.group(3), "duration")
        if for_s < 1.0:
            raise NemesisError("the error rate needs a window of at least 1 s")
        return Condition("error_rate", value, for_s, text=text)
    m = _UNREACHABLE_RE.match(text)
    if m:
        service = ""
        if m.group(1):
            found = service_name(m.group(1))
            if found is None:
                raise NemesisError(f"unknown service {m.group(1)!r} (one of {', '.join(SERVICES)})")
            service = found
        for_s = seconds(m.group(2), "duration")
        if for_s < 1.0:
            raise NemesisError("unreachable needs at least 1 s (a probe takes up to 1 s)")
        return Condition("unreachable", 0.0, for_s, service, text)
    raise NemesisError("expected 'error-rate>0.5 for 5s', 'unreachable postgres for 10s' or 'invariant'")


# ------------------------------------------------------------------------------------------ probes


def probe(var: str, url: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One answer from the service at *url* (*var*: its environment variable); raises when there is none."""
    if var == "REDIS_URL":
        from toolclash.tools.queue import redis_client

        client = redis_client(url, timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    elif var == "CLICKHOUSE_URL":
        from toolclash.tools.crossservice.relay import clickhouse_client

        ch = clickhouse_client(url, timeout)
        ch.connection.send_receive_timeout = ch.connection.sync_request_timeout = timeout
        try:
            ch.execute("SELECT 1")
        finally:
            ch.disconnect()
    else:
        from toolclash import db

        conn = db.connect(url, timeout=timeout, application_name="toolclash:probe")
        try:
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (int(timeout * 1000),))
                cur.execute("SELECT 1")
        finally:
            db.close_quietly(conn)


# ------------------------------------------------------------------------------------------ monitor


class AbortMonitor:
    """Watches the conditions while the run goes on; calls *trigger* (once) with the reason of the first that
    holds. *counters* returns the run's live counters; *invariants* the first broken invariant (or None)."""

    def __init__(self, conditions: tuple[Condition, ...], *, urls: Mapping[str, str],
                 counters: Callable[[], Mapping[str, int]], trigger: Callable[[str], None],
                 invariants: Callable[[], str | None] | None = None) -> None:
        self.conditions = conditions
        self.counters = counters
        self.trigger = trigger
        self.invariants = invariants
        self.probes = {name: (SERVICE_VARS[name], urls[SERVICE_VARS[name]]) for name in SERVICES
                       if SERVICE_VARS[name] in urls
                       and any(c.kind == "unreachable" and c.service in ("", name) for c in conditions)}
        self.last_ok: dict[str, float] = {}
        self.last_error: dict[str, str] = {}
        self.samples: deque[tuple[float, int, int]] = deque()
        self.started = 0.0
        self.fired: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_invariant = 0.0

    def start(self) -> AbortMonitor:
        self.started = time.monotonic()
        self.last_ok = dict.fromkeys(self.probes, self.started)
        targets: list[tuple[Callable[..., None], tuple[Any, ...]]] = [(self._watch, ())]
        targets += [(self._probe_loop, (name,)) for name in self.probes]
        self._threads = [threading.Thread(target=fn, args=args, name="toolclash-abort", daemon=True)
                         for fn, args in targets]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(2 * PROBE_TIMEOUT_S + 1.0)
        self._threads = []

    def _probe_loop(self, name: str) -> None:
        var, url = self.probes[name]
        while not self._stop.is_set():
            try:
                probe(var, url)
                self.last_ok[name] = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - no answer is what is watched
                self.last_error[name] = (" ".join(str(exc).split()) or type(exc).__name__)[:160]
            self._stop.wait(TICK_S)

    def _watch(self) -> None:
        while not self._stop.wait(TICK_S):
            reason = self.step(time.monotonic())
            if reason is not None:
                self.fired = reason
                log.error("toolclash: emergency stop: %s", reason)
                self.trigger(reason)
                return

    def step(self, now: float) -> str | None:
        """The reason to stop now, or None."""
        totals = self.counters()
        errors = (totals.get("calls_fail", 0) - totals.get("calls_rejected", 0) + totals.get("calls_unknown", 0)
                  + totals.get("connect_failures", 0))
        calls = (totals.get("calls_ok", 0) + totals.get("calls_fail", 0) - totals.get("calls_rejected", 0)
                 + totals.get("calls_unknown", 0) + totals.get("connect_failures", 0))
        self.samples.append((now, errors, calls))
        longest = max((c.for_s for c in self.conditions), default=0.0)
        while len(self.samples) > 2 and self.samples[1][0] <= now - longest - TICK_S:
            self.samples.popleft()
        for cond in self.conditions:
            reason = self._holds(cond, now)
            if reason:
                return reason
        return None

    def _at(self, t: float) -> tuple[float, int, int]:
        """The last sample taken at or before *t* (the first one if none was)."""
        return next((s for s in reversed(self.samples) if s[0] <= t), self.samples[0])

    def _error_rate(self, cond: Condition, now: float) -> str | None:
        if now - self.started < cond.for_s:
            return None
        parts = max(1, int(cond.for_s))
        step = cond.for_s / parts
        seen = errors = calls = 0
        for i in range(parts):
            a, b = self._at(now - cond.for_s + i * step), self._at(now - cond.for_s + (i + 1) * step)
            d_err, d_calls = b[1] - a[1], b[2] - a[2]
            if d_calls <= 0:
                continue
            if d_err / d_calls <= cond.threshold:
                return None
            seen, errors, calls = seen + 1, errors + d_err, calls + d_calls
        if calls < MIN_CALLS or 2 * seen < parts:
            return None
        return (f"--abort-on {cond.text}: {errors} of {calls} calls failed or ended in doubt in the last "
                f"{cond.for_s:g} s ({errors / calls:.0%})")

    def _holds(self, cond: Condition, now: float) -> str | None:
        if cond.kind == "error_rate":
            return self._error_rate(cond, now)
        if cond.kind == "unreachable":
            for name in self.probes:
                if cond.service in ("", name) and now - self.last_ok[name] >= cond.for_s:
                    return (f"--abort-on {cond.text}: {name} has not answered for {now - self.last_ok[name]:.1f} s "
                            f"({self.last_error.get(name, 'no answer')})")
            return None
        if self.invariants is not None and now - self._last_invariant >= INVARIANT_EVERY_S:
            self._last_invariant = now
            broken = self.invariants()
            if broken:
                return f"--abort-on invariant: {broken}"
        return None
