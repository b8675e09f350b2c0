"""The fault kinds: how each is applied and healed, and how it is seen to be in effect (not only asked for).

Each fault has ``apply() -> detail`` (returns once the fault is observed in effect) and ``heal() -> detail``
(returns once it is observed healed); both raise with a one-line message when they cannot.

* server faults (crash, restart, stop, pause) through :class:`toolclash.stack.control.ServerControl`: the
  server's process is seen gone (crash, stop, restart), or stopped by SIGSTOP in ``/proc`` (pause); healing
  waits until it serves again (start) or runs again (resume);
* proxy faults (latency, bandwidth, reset) in :mod:`toolclash.stack.proxy`: the proxy confirms the setting and,
  at the end, says what it did to the traffic (chunks delayed, seconds throttled, connections reset);
* loss and partition with iptables (:mod:`.netfilter`): the rules are listed after they are added, their
  counters say how many packets they dropped, and they are listed as gone after healing;
* worker kill: the worker's process is seen gone, then the master is seen counting it missing (the glue that
  knows Locust's workers provides :class:`WorkerKiller`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from toolclash.nemesis import netfilter
from toolclash.nemesis.spec import FaultSpec
from toolclash.stack.proxy import ProxyProcess


class Fault(Protocol):
    def apply(self) -> str: ...

    def heal(self) -> str: ...

    def undo(self) -> None:
        """After an :meth:`apply` that failed: put back whatever it did (nothing when it did nothing)."""


class WorkerKiller(Protocol):
    """What the Locust glue provides for worker kills (the core does not know Locust's workers)."""

    def kill(self, target: str) -> str:
        """SIGKILL the worker *target* (``worker`` or ``workerN``); returns once it is seen gone (detail)."""
        ...

    def gone(self, target: str, timeout: float) -> str:
        """Wait until the master counts the killed worker missing (detail)."""
        ...


class ServerFault:
    """crash, restart, stop or pause of one server. Every operation holds *lock*: the servers of one stack share
    its state dir's lock (an ``flock``), which two greenlets of one process must never wait for at once."""

    def __init__(self, spec: FaultSpec, control: Any, lock: Any, note: str = "") -> None:
        self.spec, self.ctl, self.lock, self.note = spec, control, lock, note
        self.pid: int | None = None
        self.acted = False

    def apply(self) -> str:
        with self.lock:
            return self._apply()

    def heal(self) -> str:
        with self.lock:
            return self._heal()

    def undo(self) -> None:
        if self.acted:
            self.heal()

    def _apply(self) -> str:
        kind, ctl = self.spec.kind, self.ctl
        self.pid = ctl.pid()
        if self.pid is None:
            raise RuntimeError(f"{ctl.name} is not running")
        self.acted = True
        if kind == "pause":
            ctl.pause()
            if not ctl.is_paused():
                raise RuntimeError(f"{ctl.name} (pid {self.pid}) is not seen stopped after SIGSTOP")
            return self._with_note(f"SIGSTOP of {ctl.name} (pid {self.pid}) and its children: connections stay "
                                   "open, nothing answers")
        if kind == "crash":
            ctl.crash()
            what = f"SIGKILL of {ctl.name} (pid {self.pid}); it and its children are gone"
        else:
            mode = self.spec.params.get("mode", "fast")
            ctl.stop(mode)
            what = f"{ctl.name} (pid {self.pid}) stopped ({mode})"
        if ctl.is_running():
            raise RuntimeError(f"{ctl.name} still runs after the {kind}")
        return self._with_note(what)

    def _heal(self) -> str:
        ctl = self.ctl
        if self.spec.kind == "pause":
            ctl.resume()
            if ctl.is_paused():
                raise RuntimeError(f"{ctl.name} is still stopped after SIGCONT")
            return f"SIGCONT: {ctl.name} (pid {self.pid}) runs again"
        ctl.start()
        pid = ctl.pid()
        if pid is None:
            raise RuntimeError(f"{ctl.name} is not running after its start")
        return f"{ctl.name} serves again (pid {pid}) on its port"

    def _with_note(self, text: str) -> str:
        return f"{text}; {self.note}" if self.note else text


class ProxyFault:
    """latency, bandwidth or reset on one link of the proxy."""

    def __init__(self, spec: FaultSpec, proxy: ProxyProcess, link: str) -> None:
        self.spec, self.proxy, self.link = spec, proxy, link
        self.before: Mapping[str, float] = {}

    def apply(self) -> str:
        p = self.spec.params
        self.before = self.proxy.request("stats", name=self.link)["stats"]
        if self.spec.kind == "latency":
            self.proxy.request("set", name=self.link, delay_ms=p["delay_ms"], jitter_ms=p.get("jitter_ms", 0.0))
            return f"proxy delays every chunk to {self.link} by {p['delay_ms']:g} ms ± {p.get('jitter_ms', 0):g} ms"
        if self.spec.kind == "bandwidth":
            self.proxy.request("set", name=self.link, rate_bytes_s=p["rate_bytes_s"])
            return f"proxy passes at most {p['rate']} each way between the agents and {self.link}"
        answer = self.proxy.request("set", name=self.link, reset_share=p["share"])
        return (f"proxy reset {answer['reset_now']} open connection(s) to {self.link}; resets {p['share']:.0%} of "
                "new ones")

    def heal(self) -> str:
        what = {"latency": "latency", "bandwidth": "bandwidth", "reset": "reset"}[self.spec.kind]
        stats = self.proxy.request("clear", name=self.link, what=[what])["stats"]
        d = {k: stats.get(k, 0) - self.before.get(k, 0) for k in stats}
        if self.spec.kind == "latency":
            n = int(d["delayed_chunks"])
            mean = d["delay_s_total"] / n * 1000.0 if n else 0.0
            return f"cleared; {n} chunk(s) to {self.link} were delayed, {mean:.1f} ms on average"
        if self.spec.kind == "bandwidth":
            return (f"cleared; the traffic to and from {self.link} waited {d['throttled_s_total']:.2f} s for "
                    "bandwidth in all")
        return f"cleared; {int(d['resets'])} connection(s) to {self.link} were reset in all"

    def undo(self) -> None:
        self.heal()


class NetFault:
    """loss or partition: DROP rules in the namespaces of the hosts at either end."""

    def __init__(self, spec: FaultSpec, fault_id: str, rules: list[tuple[str, str]], ends: str) -> None:
        self.spec, self.fault_id, self.rules, self.ends = spec, fault_id, rules, ends

    def apply(self) -> str:
        share = self.spec.params.get("share") if self.spec.kind == "loss" else None
        for netns, peer in self.rules:
            netfilter.drop(netns, self.fault_id, peer, share)
        what = f"{share:.0%} of the packets" if share is not None else "every packet"
        return f"iptables drops {what} between {self.ends} (rules listed in {', '.join(n for n, _ in self.rules)})"

    def heal(self) -> str:
        dropped = 0
        for netns, _peer in self.rules:
            dropped += netfilter.dropped(netns, self.fault_id)
            netfilter.heal(netns, self.fault_id)
        return f"rules removed; they had dropped {dropped} packet(s)"

    def undo(self) -> None:
        for netns, _peer in self.rules:
            netfilter.heal(netns, self.fault_id)


class WorkerKill:
    """SIGKILL of a Locust worker; 'healed' once the master counts it missing (nothing brings it back)."""

    GONE_TIMEOUT_S = 30.0

    def __init__(self, spec: FaultSpec, killer: WorkerKiller) -> None:
        self.spec, self.killer = spec, killer

    def apply(self) -> str:
        return self.killer.kill(self.spec.target)

    def heal(self) -> str:
        return self.killer.gone(self.spec.target, self.GONE_TIMEOUT_S) + "; the worker does not come back: its " \
            "in-flight calls and unsent history are lost"

    def undo(self) -> None:
        """Nothing to put back."""
