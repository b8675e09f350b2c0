"""The nemesis: applies a schedule of faults while a run goes on, heals them, records every window.

    nemesis = Nemesis.prepare(plan, urls, role="local", hosts="")   # checks, proxy, URLs through it
    urls = nemesis.urls                                             # what the run's clients must use
    nemesis.start(run_dir)                                          # faults from now on, t = 0 is now
    …
    nemesis.stop()                                                  # heal every active fault, write the rest
    nemesis.close()                                                 # and the proxy and iptables are gone

Locust-free: one thread per fault of the schedule (a greenlet under gevent's monkey patching), each waiting
for its windows with deadlines; :meth:`Nemesis.stop` wakes them to heal at once. Every window goes to
``faults.jsonl`` (:mod:`.record`) when it opens and when it closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from toolclash.nemesis import netfilter
from toolclash.nemesis.faults import Fault, NetFault, ProxyFault, ServerFault, WorkerKill, WorkerKiller
from toolclash.nemesis.record import FaultLog
from toolclash.nemesis.spec import (
    NET_KINDS,
    PROXY_KINDS,
    SERVER_KINDS,
    SERVICE_VARS,
    SERVICES,
    FaultSpec,
    NemesisError,
    Plan,
)
from toolclash.option import mask_url
from toolclash.stack.proxy import ProxyError, ProxyProcess

log = logging.getLogger("toolclash")

HEAL_RETRY_S = 0.5
HEAL_DEADLINE_S = 90.0
"""How long a fault's healing is retried before it is recorded as not healed."""
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "clickhouse": 9000}


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def with_address(url: str, host: str, port: int) -> str:
    """*url* pointing at *host*:*port* instead (user, password, path and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + (f"[{host}]" if ":" in host else host) + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class _Window:
    def __init__(self, fault_id: str, spec: FaultSpec, fault: Fault, start: float) -> None:
        self.fault_id, self.spec, self.fault, self.start = fault_id, spec, fault, start
        self.lock = threading.Lock()
        self.closed = False


class Nemesis:
    """The faults of one schedule (see the module's documentation)."""

    def __init__(self, plan: Plan, real_urls: Mapping[str, str]) -> None:
        self.plan = plan
        self.real_urls = dict(real_urls)
        """The services' own URLs (fault injection needs them)."""
        self.urls = dict(real_urls)
        """The URLs the run's clients use: through the proxy for the services it stands in front of."""
        self.controls: dict[str, Any] = {}
        self.notes: dict[str, str] = {}
        self.proxy: ProxyProcess | None = None
        self.links: dict[str, str] = {}
        self.net_rules: dict[int, list[tuple[str, str]]] = {}
        self.net_ends: dict[int, str] = {}
        self.namespaces: set[str] = set()
        self.killer: WorkerKiller | None = None
        self.log = FaultLog(None)
        self.t0 = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active: dict[str, _Window] = {}
        self._opened: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._servers = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}
        """Held by every server operation (see :class:`ServerFault`)."""
        self._stopping = threading.Lock()
        self.started = False

    # -- preparing ----------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, plan: Plan, urls: Mapping[str, str], *, role: str = "local", hosts: str = "",
                killer: WorkerKiller | None = None) -> Nemesis:
        """Check that this run can apply *plan* and get ready (the proxy is started, URLs rewritten);
        :class:`NemesisError` (one line) when it cannot. *role* is the Locust process's (worker kills need
        ``master``)."""
        nemesis = cls(plan, urls)
        try:
            nemesis._prepare(role, hosts, killer)
        except BaseException:
            nemesis.close()
            raise
        return nemesis

    def _url(self, spec: FaultSpec, service: str) -> str:
        url = self.real_urls.get(SERVICE_VARS[service])
        if not url:
            used = ", ".join(s for s in SERVICES if SERVICE_VARS[s] in self.real_urls) or "none"
            raise NemesisError(f"--nemesis: {spec.text!r}: this run does not use {service} (its services: {used})")
        return url

    def _prepare(self, role: str, hosts_text: str, killer: WorkerKiller | None) -> None:
        from toolclash.stack.control import ServerControl
        from toolclash.stack.core import load_state
        from toolclash.stack.process import StackError

        for spec in self.plan.of_kinds(SERVER_KINDS):
            url = self._url(spec, spec.target)
            if spec.target not in self.controls:
                try:
                    ctl = ServerControl.of(url)
                except StackError as exc:
                    raise NemesisError(f"--nemesis: {spec.text!r}: {first_line(exc)}") from None
                self.controls[spec.target] = ctl
                durable = None
                try:
                    durable = (load_state(ctl.where)["services"].get(ctl.name) or {}).get("durable")
                except (StackError, OSError):
                    pass
                if spec.target in self.plan.losing_writes() and durable is False:
                    self.notes[spec.target] = ("the server is not durable: acknowledged writes may be lost, "
                                               "and the checks will say so")
                    log.warning("nemesis: %s at %s is not durable; %r may lose acknowledged writes (an anomaly the "
                                "checks will report)", spec.target, mask_url(url), spec.text)
        if self.plan.of_kinds(PROXY_KINDS):
            self._start_proxy()
        net = self.plan.of_kinds(NET_KINDS)
        if net:
            why = netfilter.requirements()
            if why:
                raise NemesisError(f"--nemesis: {net[0].text!r}: {why}")
            try:
                hosts = netfilter.parse_hosts(hosts_text)
            except netfilter.NetfilterError as exc:
                raise NemesisError(str(exc)) from None
            for spec in net:
                self._net_rules(spec, hosts)
        kills = self.plan.of_kinds(("worker_kill",))
        if kills:
            if role != "master" or killer is None:
                raise NemesisError(f"--nemesis: {kills[0].text!r}: worker kills need a distributed run (--processes "
                                   "N, or --master with workers)")
            self.killer = killer

    def _start_proxy(self) -> None:
        self.proxy = ProxyProcess().start()
        for service in self.plan.proxied():
            spec = next(f for f in self.plan.of_kinds(PROXY_KINDS) if f.target == service)
            url = self._url(spec, service)
            parts = urlsplit(url)
            host, port = parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
            try:
                bind, local_port = self.proxy.listen(service, host, port)
            except ProxyError as exc:
                raise NemesisError(f"--nemesis: cannot put the proxy in front of {service}: {exc}") from None
            self.links[service] = service
            self.urls[SERVICE_VARS[service]] = with_address(url, bind, local_port)
            log.info("nemesis: %s reached through the proxy at %s:%d", service, bind, local_port)

    def _address(self, end: str, hosts: Mapping[str, netfilter.Host], spec: FaultSpec) -> str:
        if end in SERVICES:
            url = self._url(spec, end)
            host = urlsplit(url).hostname or ""
            try:
                return netfilter.address_of(host)
            except OSError:
                raise NemesisError(f"--nemesis: {spec.text!r}: cannot resolve {host!r} of {end}") from None
        if end not in hosts:
            raise NemesisError(f"--nemesis: {spec.text!r}: no host {end!r} in --nemesis-hosts (name=NETNS,…; "
                               f"known: {', '.join(hosts) or 'none'})")
        return hosts[end].address

    def _net_rules(self, spec: FaultSpec, hosts: Mapping[str, netfilter.Host]) -> None:
        a, b = spec.ends
        rules = []
        for here, there in ((a, b), (b, a)):
            if here in hosts:
                rules.append((hosts[here].netns, self._address(there, hosts, spec)))
                self.namespaces.add(hosts[here].netns)
        if not rules:
            raise NemesisError(f"--nemesis: {spec.text!r}: neither {a} nor {b} is a host of --nemesis-hosts "
                               "(name=NETNS,…): its rules go in a host's network namespace")
        addresses = {end: self._address(end, hosts, spec) for end in spec.ends}
        self.net_rules[spec.number] = rules
        self.net_ends[spec.number] = f"{a} ({addresses[a]}) and {b} ({addresses[b]})"

    # -- running ------------------------------------------------------------------------------------

    def start(self, run_dir: Any, t0: float | None = None) -> Nemesis:
        """Apply the schedule from now (or from *t0*, unix seconds) on; windows are written to *run_dir*."""
        self.stop()
        self._stop = threading.Event()
        self.log = FaultLog(run_dir)
        self.t0 = time.time() if t0 is None else t0
        self._opened = {}
        self.started = True
        self._threads = [threading.Thread(target=self._run, args=(spec,), name=f"nemesis-f{spec.number}",
                                          daemon=True) for spec in self.plan.faults]
        for thread in self._threads:
            thread.start()
        return self

    def _make(self, spec: FaultSpec, fault_id: str) -> Fault:
        if spec.kind in SERVER_KINDS:
            return ServerFault(spec, self.controls[spec.target], self._servers, self.notes.get(spec.target, ""))
        if spec.kind in PROXY_KINDS:
            assert self.proxy is not None
            return ProxyFault(spec, self.proxy, self.links[spec.target])
        if spec.kind in NET_KINDS:
            return NetFault(spec, fault_id, self.net_rules[spec.number], self.net_ends[spec.number])
        assert self.killer is not None
        return WorkerKill(spec, self.killer)

    def _run(self, spec: FaultSpec) -> None:
        # one fault of a server at a time: a window that starts while the last one on the same server is not
        # healed yet waits for it (the record's ``lag_s`` says how late it came)
        busy = self._busy.setdefault(spec.target, threading.Lock()) if spec.kind in SERVER_KINDS else None
        for k, at_s in spec.starts():
            asked = self.t0 + at_s
            if self._stop.wait(max(0.0, asked - time.time())):
                return
            if busy is not None:
                while not busy.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return
            try:
                self._window(spec, k, asked)
            finally:
                if busy is not None:
                    busy.release()
            if self._stop.is_set():
                return

    def _window(self, spec: FaultSpec, k: int, asked: float) -> None:
        fault_id = spec.fault_id(k)
        record = spec.record(k)
        fault = self._make(spec, fault_id)
        try:
            detail = fault.apply()
        except Exception as exc:  # noqa: BLE001 - recorded; whatever it did is undone
            log.warning("nemesis: %s %r could not be applied: %s", fault_id, spec.text, first_line(exc))
            self.log.not_applied(fault_id, spec.kind, spec.target, time.time(), record, first_line(exc))
            self._undo(fault)
            return
        window = _Window(fault_id, spec, fault, time.time())
        with self._lock:
            self._active[fault_id] = window
            key = (spec.kind, spec.target)
            self._opened[key] = self._opened.get(key, 0) + 1
        record["lag_s"] = round(window.start - asked, 3)
        self.log.opened(fault_id, spec.kind, spec.target, window.start, record, detail)
        log.info("nemesis: %s %s %s in effect (%.2f s after it was due): %s", fault_id, spec.kind, spec.target,
                 window.start - asked, detail)
        self._stop.wait(spec.for_s)
        self._heal(window)

    def _undo(self, fault: Fault) -> None:
        try:
            fault.undo()
        except Exception as exc:  # noqa: BLE001 - logged; the end of the run cleans up what it can
            log.error("nemesis: could not undo a fault that failed half-way: %s", first_line(exc))

    def _heal(self, window: _Window, deadline_s: float = HEAL_DEADLINE_S) -> None:
        """Heal *window*'s fault (once, whichever thread comes first), retried until *deadline_s*; recorded."""
        with window.lock:
            if window.closed:
                return
            deadline = time.monotonic() + deadline_s
            while True:
                try:
                    detail = window.fault.heal()
                except Exception as exc:  # noqa: BLE001 - retried until the deadline, then recorded
                    if time.monotonic() + HEAL_RETRY_S < deadline:
                        time.sleep(HEAL_RETRY_S)
                        continue
                    self.log.closed(window.fault_id, None, False, self._detail(window, f"could not heal: "
                                                                                       f"{first_line(exc)}"))
                    log.error("nemesis: %s %s %s could not be healed: %s", window.fault_id, window.spec.kind,
                              window.spec.target, first_line(exc))
                    break
                end = time.time()
                self.log.closed(window.fault_id, end, True, self._detail(window, detail))
                log.info("nemesis: %s %s %s healed after %.2f s: %s", window.fault_id, window.spec.kind,
                         window.spec.target, end - window.start, detail)
                break
            window.closed = True
            with self._lock:
                self._active.pop(window.fault_id, None)

    def _detail(self, window: _Window, end_detail: str) -> str:
        rec = self.log.records.get(window.fault_id) or {}
        return f"{rec.get('detail', '')}; end: {end_detail}"

    def stop(self, timeout: float = HEAL_DEADLINE_S + 10.0) -> None:
        """Heal every active fault now and apply no more; returns once all are healed (or recorded as not)."""
        with self._stopping:  # a second caller returns once the first has healed everything
            if not self.started:
                return
            self._stop.set()
            self._join_and_heal(time.monotonic() + timeout)

    def _join_and_heal(self, deadline: float) -> None:
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._active.values())
        for window in left:  # a thread that did not finish in time: heal from here
            self._heal(window, max(1.0, deadline - time.monotonic()))
        self._threads = []
        self.started = False

    def close(self) -> None:
        """:meth:`stop`, then the proxy process ends and every toolclash rule leaves the namespaces."""
        try:
            self.stop()
        finally:
            if self.proxy is not None:
                self.proxy.close()
                self.proxy = None
            for netns in self.namespaces:
                netfilter.cleanup(netns)

    # -- what is going on ---------------------------------------------------------------------------

    def active(self) -> list[tuple[str, str, str]]:
        """(fault id, kind, target) of every fault in effect now."""
        with self._lock:
            return [(w.fault_id, w.spec.kind, w.spec.target) for w in self._active.values()]

    def gauges(self) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        """Prometheus series: ``toolclash_fault_active`` (1 while a fault of that kind and target is in effect)
        and ``toolclash_fault_windows_total`` (windows opened so far), one series per kind and target of the
        schedule (bounded labels)."""
        active = {(kind, target) for _fid, kind, target in self.active()}
        out: list[tuple[str, tuple[tuple[str, str], ...], float]] = []
        for kind, target in dict.fromkeys((f.kind, f.target) for f in self.plan.faults):
            labels = (("kind", kind), ("target", target))
            out.append(("toolclash_fault_active", labels, 1.0 if (kind, target) in active else 0.0))
            out.append(("toolclash_fault_windows_total", labels, float(self._opened.get((kind, target), 0))))
        return out
