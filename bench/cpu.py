"""Where the CPU goes during a load phase: the load generator's process tree vs the server's (Linux /proc).

A :class:`CpuSampler` thread reads, every ``interval`` seconds, the CPU time (utime + stime) of

* the *client* tree: the child the bench started (pgbench, or Locust with its forked workers)
  and every live descendant;
* the *server* tree: the postmaster, its live children (the backends serving the load, the
  checkpointer, …) and its reaped children (cutime + cstime);
* the whole machine (``/proc/stat``): irq + softirq time (loopback TCP, charged to no process) and
  what else is busy ("other": any other load on the machine, which skews the figures).

:meth:`CpuSampler.window` turns the samples into CPU cores used by each side over a wall-clock
window, and microseconds of CPU per transaction at a given rate. On a machine with few cores
this says whether the load generator starves the server.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return text[text.rindex(")") + 2:].split()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def tree_ticks(root: int, *, reaped: bool, pids: set[int] | None = None) -> int:
    """utime + stime of *root* and its live descendants (+ root's reaped children if *reaped*).

    The pids visited are added to *pids* when given."""
    total = 0
    stack = [root]
    first = True
    while stack:
        pid = stack.pop()
        fields = _stat_fields(pid)
        if fields is None:
            continue
        if pids is not None:
            pids.add(pid)
        # after the ')': state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        total += int(fields[11]) + int(fields[12])
        if first and reaped:
            total += int(fields[13]) + int(fields[14])
        first = False
        stack += _children(pid)
    return total


def all_processes() -> dict[int, tuple[str, int]]:
    """Every process: pid -> (command line, utime + stime ticks)."""
    out: dict[int, tuple[str, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        fields = _stat_fields(pid)
        if fields is None:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = ""
        out[pid] = (cmd[:100] or f"[{pid}]", int(fields[11]) + int(fields[12]))
    return out


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds since boot of the whole machine (all CPUs, /proc/stat): (busy incl. steal, irq + softirq)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS, (irq + softirq) / _TICKS


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all CPUs; /proc/stat, steal included)."""
    return machine_cpu_s()[0]


class CpuSampler:
    """Samples client and server CPU seconds every *interval* s in a thread, between start() and stop()."""

    SNAPSHOT_EVERY = 4
    """Every how many samples all processes are read (to name other load on the machine)."""

    def __init__(self, postmaster: int | None, interval: float = 0.5) -> None:
        self.postmaster = postmaster
        self.interval = interval
        self.snapshots: list[tuple[float, dict[int, tuple[str, int]]]] = []
        self._ours: set[int] = {os.getpid()}
        self.samples: list[tuple[float, float, float, float, float, float]] = []
        """(unix time, client cpu s, server cpu s, machine busy cpu s, machine irq + softirq cpu s, cpu s of the
        client's root process alone: Locust's master when it forked workers)"""
        self._client: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        if self._client is None or _stat_fields(self._client) is None:
            return  # the client has exited: its tree can no longer be summed
        # reaped: a child that exits before the window's end sample (a floor process) still counts
        client = tree_ticks(self._client, reaped=True, pids=self._ours) / _TICKS
        fields = _stat_fields(self._client)
        root = (int(fields[11]) + int(fields[12])) / _TICKS if fields else 0.0
        server = tree_ticks(self.postmaster, reaped=True, pids=self._ours) / _TICKS if self.postmaster else 0.0
        now = time.time()
        self.samples.append((now, client, server, *machine_cpu_s(), root))
        if len(self.samples) % self.SNAPSHOT_EVERY == 1:
            self.snapshots.append((now, all_processes()))

    def other_processes(self, start: float, end: float, top: int = 3) -> list[dict[str, Any]]:
        """The busiest processes outside client, server and the bench between the snapshots nearest
        inside [start, end]: what else loaded the machine."""
        inside = [snap for snap in self.snapshots if start - 1.0 <= snap[0] <= end + 1.0]
        if len(inside) < 2:
            return []
        (t1, a), (t2, b) = inside[0], inside[-1]
        used: list[tuple[float, int, str]] = []
        for pid, (cmd, ticks) in b.items():
            if pid in self._ours or pid not in a:
                continue
            cores = (ticks - a[pid][1]) / _TICKS / (t2 - t1)
            if cores >= 0.02:
                used.append((cores, pid, cmd))
        used.sort(reverse=True)
        return [{"pid": pid, "cmd": cmd, "cores": round(cores, 2)} for cores, pid, cmd in used[:top]]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self, client_pid: int) -> None:
        self._client = client_pid
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _at(self, ts: float) -> tuple[float, ...] | None:
        """Client, server and machine CPU seconds at *ts*, linearly interpolated between samples."""
        times = [s[0] for s in self.samples]
        k = max(1, bisect.bisect_left(times, ts))
        if k >= len(times):
            return None
        before, after = self.samples[k - 1], self.samples[k]
        f = (ts - before[0]) / (after[0] - before[0]) if after[0] > before[0] else 0.0
        return tuple(x1 + f * (x2 - x1) for x1, x2 in zip(before[1:], after[1:], strict=True))

    def window(self, start: float, end: float, *, tps: float | None, cores: int) -> dict[str, Any] | None:
        """CPU cores used by client and server over [start, end] (unix time) and µs of CPU per transaction."""
        if len(self.samples) < 2:
            return None
        start, end = max(start, self.samples[0][0]), min(end, self.samples[-1][0])  # clamp to the samples
        a, b = self._at(start), self._at(end)
        if a is None or b is None or end <= start:
            return None
        span = end - start
        client, server, busy, irq, root = ((y - x) / span for x, y in zip(a, b, strict=True))

        def per(cores_used: float) -> float | None:
            return round(cores_used / tps * 1e6, 1) if tps else None

        return {"client_cores": round(client, 3), "server_cores": round(server, 3),
                "machine_busy_cores": round(busy, 3), "idle_cores": round(max(0.0, cores - busy), 3),
                "irq_cores": round(irq, 3), "other_cores": round(max(0.0, busy - client - server - irq), 3),
                "client_us_per_tx": per(client), "server_us_per_tx": per(server),
                "client_root_us_per_tx": per(root),
                "window_s": round(span, 3), "samples": len(self.samples),
                "other_processes": self.other_processes(start, end)}
