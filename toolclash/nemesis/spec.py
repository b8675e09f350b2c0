"""The nemesis's schedule: ``--nemesis SPEC`` and ``--nemesis-file FILE`` parsed into fault windows. Pure: no I/O
but reading the file it is given.

A schedule is a list of faults separated by ``;`` or new lines (``#`` starts a comment)::

    KIND TARGET [PARAMETER…] at TIME [for TIME] [every TIME [times N]]
    KIND TARGET [PARAMETER…] from TIME to TIME [every TIME [times N]]

Times count from the start of the run: ``5s``, ``500ms``, ``1.5m``, or a bare number of seconds.

============  ============================================  ================================================
kind          target                                        parameters
============  ============================================  ================================================
crash         a service (postgres, auth_postgres,           –  (SIGKILL; started again at the window's end)
              pgbouncer, redis, clickhouse)
restart       a service                                     ``fast`` | ``immediate`` | ``smart`` (PostgreSQL's
                                                            stop mode); ``for``: downtime (default 0)
stop          a service                                     ``fast`` | ``immediate`` | ``smart``
pause         a service                                     –  (SIGSTOP of the server and its children)
latency       a service                                     ``100ms`` or ``100ms±20ms`` (also ``+-``, ``~``)
bandwidth     a service                                     ``64kbit``, ``1mbit``, ``500kB`` (per second)
reset         a service                                     ``50%``: share of new connections reset (default
                                                            100 %); open connections are reset at the start
loss          two hosts or a host and a service:            ``10%``
              ``worker2-postgres``
partition     two hosts or a host and a service:            –
              ``worker1-master``
worker_kill   ``worker`` (the last to join) or ``workerN``  –  (SIGKILL of a Locust worker; no ``for``)
============  ============================================  ================================================

Example: ``stop postgres at 5s for 3s; latency redis 100ms±20ms from 10s to 25s;
loss worker2-postgres 10% from 30s to 40s; partition worker1-master at 45s for 8s``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_KINDS = ("crash", "restart", "stop", "pause")
"""Faults of a server process (through :mod:`toolclash.stack.control`)."""
PROXY_KINDS = ("latency", "bandwidth", "reset")
"""Faults in the TCP proxy between the agents and a service (:mod:`toolclash.stack.proxy`)."""
NET_KINDS = ("loss", "partition")
"""Faults between two hosts, with iptables in their network namespaces."""
KINDS = (*SERVER_KINDS, *PROXY_KINDS, *NET_KINDS, "worker_kill")

SERVICES = ("postgres", "auth_postgres", "pgbouncer", "redis", "clickhouse")
ALIASES = {"postgresql": "postgres", "database": "postgres", "db": "postgres", "auth": "auth_postgres",
           "auth_database": "auth_postgres", "bouncer": "pgbouncer"}
SERVICE_VARS = {"postgres": "DATABASE_URL", "auth_postgres": "AUTH_DATABASE_URL", "pgbouncer": "PGBOUNCER_URL",
                "redis": "REDIS_URL", "clickhouse": "CLICKHOUSE_URL"}
STOP_MODES = ("fast", "immediate", "smart")
LOSES_WRITES = {"postgres": ("crash", "immediate"), "auth_postgres": ("crash", "immediate"),
                "redis": ("crash", "restart", "stop")}
"""Faults after which a non-durable server of the embedded stack has lost acknowledged writes by design."""

MAX_REPEATS = 10_000
HORIZON_S = 3600.0
"""Overlaps of repeated faults are checked up to this far into the run."""
MIN_PERIOD_S = 0.1

_HOST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
_WORKER_RE = re.compile(r"^worker(\d*)$")
_TIME_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_PCT_RE = re.compile(r"^(\d+(?:\.\d+)?)%$")
_LAT_RE = re.compile(r"^(\d+(?:\.\d+)?(?:ms|s)?)(?:(?:±|\+-|\+/-|~)(\d+(?:\.\d+)?(?:ms|s)?))?$")
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps|b|kb|mb|gb)(?:/s)?$", re.I)
_RATE_BYTES = {"bit": 1 / 8, "bps": 1 / 8, "kbit": 125.0, "kbps": 125.0, "mbit": 125_000.0, "mbps": 125_000.0,
               "gbit": 125_000_000.0, "gbps": 125_000_000.0, "b": 1.0, "kb": 1000.0, "mb": 1_000_000.0,
               "gb": 1_000_000_000.0}
_KEYWORDS = ("at", "for", "from", "to", "every", "times")


class NemesisError(ValueError):
    """A bad schedule, or one this run cannot apply (one line: what and how to fix)."""


@dataclass(frozen=True)
class FaultSpec:
    """One line of the schedule."""

    number: int
    """1-based position in the schedule (fault ids are ``f<number>``, ``f<number>.<k>`` when repeated)."""
    kind: str
    target: str
    """A service, ``a-b`` for loss and partition, or ``worker``/``workerN``."""
    ends: tuple[str, ...]
    """The endpoints of a loss or partition; the service or worker otherwise."""
    at_s: float
    for_s: float
    every_s: float | None
    times: int | None
    """Repetitions (None with ``every``: until the run ends)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    text: str = ""

    @property
    def service(self) -> str | None:
        return self.target if self.kind in (*SERVER_KINDS, *PROXY_KINDS) else None

    def starts(self) -> Iterator[tuple[int, float]]:
        """(repetition 1-based, start in seconds since the run's start) of every window."""
        if self.every_s is None:
            yield 1, self.at_s
            return
        k = 1
        while self.times is None or k <= self.times:
            yield k, self.at_s + (k - 1) * self.every_s
            k += 1

    def fault_id(self, repetition: int) -> str:
        return f"f{self.number}" if self.every_s is None else f"f{self.number}.{repetition}"

    def record(self, repetition: int) -> dict[str, Any]:
        """The ``spec`` of a fault record: the line as written and its parsed values."""
        out: dict[str, Any] = {"text": self.text, "at_s": self.at_s + (repetition - 1) * (self.every_s or 0.0),
                               "for_s": self.for_s, **self.params}
        if self.every_s is not None:
            out.update(every_s=self.every_s, repetition=repetition)
        return out


@dataclass(frozen=True)
class Plan:
    """A parsed schedule."""

    faults: tuple[FaultSpec, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.faults)

    def of_kinds(self, kinds: tuple[str, ...]) -> list[FaultSpec]:
        return [f for f in self.faults if f.kind in kinds]

    def proxied(self) -> list[str]:
        """Services the agents must reach through the proxy (a latency, bandwidth or reset fault on them)."""
        return list(dict.fromkeys(f.target for f in self.of_kinds(PROXY_KINDS)))

    def losing_writes(self) -> list[str]:
        """Services a non-durable embedded server of which would lose acknowledged writes under this plan."""
        out = []
        for f in self.of_kinds(SERVER_KINDS):
            danger = LOSES_WRITES.get(f.target, ())
            if f.kind in danger or f.params.get("mode") in danger:
                out.append(f.target)
        return list(dict.fromkeys(out))

    def hosts(self) -> list[str]:
        """Names of hosts (not services) that loss and partition faults name."""
        return list(dict.fromkeys(e for f in self.of_kinds(NET_KINDS) for e in f.ends if e not in SERVICES))


# ------------------------------------------------------------------------------------------ parsing


def seconds(text: str, what: str = "time") -> float:
    m = _TIME_RE.match(text)
    if not m:
        raise NemesisError(f"{what} {text!r} is not a time such as 5s, 500ms or 1.5m")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def service_name(word: str) -> str | None:
    name = ALIASES.get(word.lower(), word.lower())
    return name if name in SERVICES else None


def _fault(number: int, text: str) -> FaultSpec:
    words = re.sub(r"\s*(±|\+-|\+/-|~)\s*", r"\1", text.strip()).split()
    if len(words) < 2:
        raise NemesisError("a fault needs a kind, a target and a time, e.g. 'stop postgres at 5s for 3s'")
    kind = words[0].lower().replace("-", "_")
    if kind in ("kill", "workerkill", "kill_worker"):
        kind = "worker_kill"
    if kind not in KINDS:
        raise NemesisError(f"unknown fault kind {words[0]!r} (one of {', '.join(KINDS)})")
    target, ends = _target(kind, words[1])
    params, when = _params(kind, words[2:])
    at_s, for_s, every_s, times = _when(kind, when)
    return FaultSpec(number, kind, target, ends, at_s, for_s, every_s, times, params, " ".join(words))


def _target(kind: str, word: str) -> tuple[str, tuple[str, ...]]:
    if kind == "worker_kill":
        m = _WORKER_RE.match(word.lower())
        if not m or m.group(1) == "0":
            raise NemesisError(f"worker_kill targets 'worker' (the last worker to join) or workerN (N from 1), "
                               f"not {word!r}")
        return word.lower(), (word.lower(),)
    if kind in NET_KINDS:
        parts = word.split("<->") if "<->" in word else word.split("-")
        if len(parts) != 2 or not all(parts):
            raise NemesisError(f"{kind} needs two ends, host-host or host-service (e.g. worker2-postgres), "
                               f"not {word!r}")
        ends = tuple(service_name(p) or p for p in parts)
        for end in ends:
            if end not in SERVICES and not _HOST_RE.match(end):
                raise NemesisError(f"{kind}: {end!r} is neither a service ({', '.join(SERVICES)}) nor a host name "
                                   "(letters, digits, '_' and '.')")
        if ends[0] == ends[1]:
            raise NemesisError(f"{kind} needs two different ends, not {word!r}")
        if all(e in SERVICES for e in ends):
            raise NemesisError(f"{kind} {word}: at least one end must be a host of --nemesis-hosts (the rules go "
                               "in its network namespace)")
        return "-".join(ends), ends
    name = service_name(word)
    if name is None:
        raise NemesisError(f"{kind}: unknown service {word!r} (one of {', '.join(SERVICES)})")
    return name, (name,)


def _params(kind: str, words: list[str]) -> tuple[dict[str, Any], list[str]]:
    params: dict[str, Any] = {}
    i = 0
    while i < len(words) and words[i].lower() not in _KEYWORDS:
        word = words[i]
        low = word.lower()
        if kind in ("stop", "restart") and low in STOP_MODES and "mode" not in params:
            params["mode"] = low
        elif kind == "latency" and "delay_ms" not in params and (m := _LAT_RE.match(low)):
            params["delay_ms"] = round(seconds(m.group(1), "latency") * 1000.0, 3)
            params["jitter_ms"] = round(seconds(m.group(2), "jitter") * 1000.0, 3) if m.group(2) else 0.0
        elif kind in ("loss", "reset") and "share" not in params and (m := _PCT_RE.match(word)):
            share = float(m.group(1)) / 100.0
            if not 0.0 < share <= 1.0:
                raise NemesisError(f"{kind}: {word} must be more than 0% and at most 100%")
            params["share"] = share
        elif kind == "bandwidth" and "rate_bytes_s" not in params and (m := _RATE_RE.match(word)):
            params["rate_bytes_s"] = float(m.group(1)) * _RATE_BYTES[m.group(2).lower()]
            params["rate"] = word
            if params["rate_bytes_s"] < 100:
                raise NemesisError(f"bandwidth {word} is below 100 bytes per second; nothing would pass")
        else:
            raise NemesisError(f"{kind}: unexpected {word!r} ({_param_help(kind)})")
        i += 1
    if kind == "latency" and "delay_ms" not in params:
        raise NemesisError("latency needs a delay, e.g. 'latency redis 100ms±20ms at 10s for 15s'")
    if kind == "latency" and params["jitter_ms"] > params["delay_ms"]:
        raise NemesisError("latency: the jitter must not exceed the delay (a packet cannot arrive before it is sent)")
    if kind == "loss" and "share" not in params:
        raise NemesisError("loss needs a share of packets, e.g. 'loss worker2-postgres 10% at 30s for 10s'")
    if kind == "bandwidth" and "rate_bytes_s" not in params:
        raise NemesisError("bandwidth needs a rate, e.g. 'bandwidth clickhouse 64kbit at 5s for 10s'")
    if kind == "reset":
        params.setdefault("share", 1.0)
    if kind in ("stop", "restart"):
        params.setdefault("mode", "fast")
    return params, words[i:]


def _param_help(kind: str) -> str:
    return {"latency": "expected a delay such as 100ms or 100ms±20ms", "loss": "expected a share such as 10%",
            "reset": "expected a share of connections such as 50%", "bandwidth": "expected a rate such as 64kbit, "
            "1mbit or 500kB", "stop": "expected fast, immediate or smart", "restart": "expected fast, immediate or "
            "smart"}.get(kind, "it takes no parameter")


def _when(kind: str, words: list[str]) -> tuple[float, float, float | None, int | None]:
    values: dict[str, str] = {}
    i = 0
    while i < len(words):
        key = words[i].lower()
        if key not in _KEYWORDS:
            raise NemesisError(f"unexpected {words[i]!r} (expected at, for, from, to, every or times)")
        if key in values:
            raise NemesisError(f"{key!r} given twice")
        if i + 1 >= len(words):
            raise NemesisError(f"{key!r} needs a value")
        values[key] = words[i + 1]
        i += 2
    if ("at" in values) == ("from" in values):
        raise NemesisError("say when: 'at 5s for 3s' or 'from 5s to 8s'")
    if "from" in values:
        if "to" not in values or "for" in values:
            raise NemesisError("'from' needs 'to' (and no 'for'): 'from 10s to 25s'")
        at_s, end_s = seconds(values["from"]), seconds(values["to"])
        if end_s <= at_s:
            raise NemesisError(f"'to {values['to']}' must come after 'from {values['from']}'")
        for_s = end_s - at_s
    else:
        if "to" in values:
            raise NemesisError("'to' goes with 'from': 'from 10s to 25s'")
        at_s = seconds(values["at"])
        for_s = seconds(values["for"], "duration") if "for" in values else math.nan
    if kind == "worker_kill":
        if not math.isnan(for_s):
            raise NemesisError("worker_kill takes no duration: the worker does not come back ('at 10s')")
        for_s = 0.0
    elif kind == "restart":
        for_s = 0.0 if math.isnan(for_s) else for_s
    elif math.isnan(for_s) or for_s <= 0:
        raise NemesisError(f"{kind} needs a duration above 0: 'at 5s for 3s' or 'from 5s to 8s'")
    every_s, times = None, None
    if "every" in values:
        every_s = seconds(values["every"], "period")
        if every_s < MIN_PERIOD_S:
            raise NemesisError(f"'every {values['every']}' is shorter than {MIN_PERIOD_S:g} s")
        if every_s <= for_s:
            raise NemesisError(f"'every {values['every']}' must be longer than the fault's duration ({for_s:g} s)")
    if "times" in values:
        if every_s is None:
            raise NemesisError("'times' goes with 'every': 'every 10s times 3'")
        if not values["times"].isdigit() or not 1 <= int(values["times"]) <= MAX_REPEATS:
            raise NemesisError(f"'times {values['times']}' must be a whole number from 1 to {MAX_REPEATS}")
        times = int(values["times"])
    return at_s, for_s, every_s, times


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for part in line.split(";"):
            if part.strip():
                yield part.strip()


def parse(spec: str = "", file_text: str = "", *, source: str = "--nemesis") -> Plan:
    """The plan of *spec* (``--nemesis``) and *file_text* (``--nemesis-file``'s content); :class:`NemesisError`
    with one line naming the bad fault."""
    faults: list[FaultSpec] = []
    for origin, text in ((source, spec), ("--nemesis-file", file_text)):
        for line in _lines(text or ""):
            try:
                faults.append(_fault(len(faults) + 1, line))
            except NemesisError as exc:
                raise NemesisError(f"{origin}: {line!r}: {exc}") from None
    _check_overlaps(faults)
    return Plan(tuple(faults))


def load(spec: str, path: str) -> Plan:
    """The plan of ``--nemesis`` *spec* and ``--nemesis-file`` *path* (read here); :class:`NemesisError`."""
    text = ""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise NemesisError(f"--nemesis-file {path}: cannot read it ({reason}); give a readable text file, one "
                               "fault per line") from None
    return parse(spec, text)


def _spans(f: FaultSpec) -> Iterator[tuple[float, float]]:
    for _k, start in f.starts():
        if start > HORIZON_S:
            return
        yield start, start + max(f.for_s, 0.001)


def _clash(a: FaultSpec, b: FaultSpec) -> bool:
    if a.kind in SERVER_KINDS and b.kind in SERVER_KINDS:
        return a.target == b.target
    if a.kind in PROXY_KINDS or a.kind in NET_KINDS or a.kind == "worker_kill":
        return a.kind == b.kind and set(a.ends) == set(b.ends)
    return False


def _check_overlaps(faults: list[FaultSpec]) -> None:
    for i, a in enumerate(faults):
        for b in faults[i + 1:]:
            if not _clash(a, b):
                continue
            spans_a, spans_b = list(_spans(a)), list(_spans(b))
            j = 0
            for s1, e1 in spans_a:  # both lists are sorted by start: one sweep
                while j < len(spans_b) and spans_b[j][1] <= s1:
                    j += 1
                if j < len(spans_b) and spans_b[j][0] < e1:
                    raise NemesisError(f"--nemesis: {a.text!r} and {b.text!r} overlap on {a.target}; one fault "
                                       "of a server (or of one kind on one link) at a time")
