"""Processes, ports and files on this machine: what the stack's daemon base (:mod:`.daemon`) is built on.

Every helper here is a plain function of the OS (``/proc``, signals, sockets); none remembers anything.
A process is identified by pid *and* something only the right process has (its command line, its start
time), so a pid recycled by another program is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
LOOPBACK = "127.0.0.1"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 8
POLL_S = 0.05
"""Interval between two looks at a condition that has a deadline (readiness, a process's exit)."""
RUN_AS_FALLBACK_USER = "toolclash"


class StackError(Exception):
    """One-line message: what is wrong and how to fix it."""


# ------------------------------------------------------------------------------------------- OS user


@dataclass(frozen=True)
class RunAs:
    """The unprivileged OS user the servers run as when this process is root."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def of_uid(cls, uid: int, gid: int | None = None) -> RunAs:
        """The user with *uid* (its name and home from the password database when it has an entry)."""
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            return cls(str(uid), uid, uid if gid is None else gid, "/")
        return cls(pw.pw_name, uid, pw.pw_gid if gid is None else gid, pw.pw_dir)

    def popen_kwargs(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a child as this user (its primary group only)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def resolve_run_as() -> RunAs | None:
    """None when not root; else the ``postgres`` user, or a system user ``toolclash`` (created)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", RUN_AS_FALLBACK_USER):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS_FALLBACK_USER]
    try:
        result = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(
            f"running as root and no 'postgres' user exists; creating system user "
            f"'{RUN_AS_FALLBACK_USER}' failed ({exc}); create it: useradd --system {RUN_AS_FALLBACK_USER}"
        ) from exc
    try:  # a concurrent stack may have created it first: look it up whatever useradd said
        pw = pwd.getpwnam(RUN_AS_FALLBACK_USER)
    except KeyError:
        why = (result.stderr or result.stdout).strip().splitlines()
        raise StackError(
            f"running as root and no 'postgres' user exists; `useradd --system {RUN_AS_FALLBACK_USER}` "
            f"failed ({why[-1] if why else f'exit {result.returncode}'}); create the user by hand"
        ) from None
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def recorded_run_as(user: str | None) -> RunAs | None:
    """The user a state dir records its servers running as (None when not root); else :func:`resolve_run_as`."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(user) if user else None
    except KeyError:
        pw = None
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir) if pw else resolve_run_as()


def check_traversable(path: Path, run_as: RunAs) -> None:
    """Raise StackError unless ``run_as`` (its primary group only) can search every ancestor of path."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == run_as.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == run_as.gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise StackError(
                f"state dir {path} is not reachable by OS user '{run_as.name}' the servers run as: "
                f"{parent} is not traversable (mode {stat.filemode(st.st_mode)}); use a dir under /tmp "
                f"(--dir /tmp/NAME) or run: chmod o+x {parent}"
            )


# ---------------------------------------------------------------------------------------------- ports


def ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections (ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, below the kernel's ephemeral range where one is free.

    A server's port inside the ephemeral range can be taken, while the server is down for a restart, by
    any outgoing connection's local port, even by a client of that very server retrying its connect (TCP
    self-connect); below the range only listeners compete for it. Another process may still take it later.
    """
    low = ephemeral_low()
    if low > 20000:
        rng = random.SystemRandom()
        for _ in range(50):
            port = rng.randrange(15000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        found: int = sock.getsockname()[1]
        return found


def port_free(port: int) -> bool:
    """Whether a server could listen on *port* of 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def port_comes_free(port: int, wait_s: float = 5.0) -> bool:
    """Whether *port* is free now or within *wait_s*: a server killed a moment ago may still hold it while the
    kernel tears its sockets down, and a restart on the same port keeps clients' URLs valid."""
    return wait_for(lambda: port_free(port), wait_s, interval=0.1)


def listener_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP *port* (any address, IPv4 or IPv6), from the kernel's tables."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listener_pids(port: int) -> list[int]:
    """Processes holding a socket that listens on TCP *port*, lowest pid first (those this process may see)."""
    wanted = {f"socket:[{inode}]" for inode in listener_inodes(port)}
    found: list[int] = []
    if not wanted:
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in wanted for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
    return sorted(found)


# ------------------------------------------------------------------------------------------ processes


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state(0) ppid(1) ... starttime(19)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def proc_state(pid: int) -> str | None:
    """The kernel's one-letter state of pid (R, S, D, T stopped, Z zombie...), None when it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def is_zombie(pid: int) -> bool:
    return proc_state(pid) == "Z"


def start_time(pid: int) -> int | None:
    """When pid started (clock ticks since boot): with the pid, names one process for its whole life."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def proc_cmdline(pid: int) -> bytes | None:
    """argv of pid joined by NUL, or None where /proc is not available."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None if not Path("/proc/self").exists() else b""
    except OSError:
        return None


def proc_cwd(pid: int) -> Path | None:
    """The working directory of pid (None when gone or not ours to see)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of pid, parents before their children."""
    parent_of: dict[int, int] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z":
                parent_of[int(entry.name)] = int(fields[1])
                started[int(entry.name)] = int(fields[19])
    out: list[tuple[int, int]] = []
    frontier = [pid]
    while frontier:
        kids = [child for child, parent in parent_of.items() if parent in frontier]
        out += [(child, started[child]) for child in sorted(kids)]
        frontier = kids
    return out


def same_process(pid: int, started: int) -> bool:
    """Whether pid is still the process that started at *started* (and is not a zombie)."""
    return start_time(pid) == started and not is_zombie(pid)


def send_signal(pid: int, sig: int) -> bool:
    """Signal pid; False when it is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_for(condition: Callable[[], bool], timeout: float, *, interval: float = POLL_S) -> bool:
    """Poll *condition* until it holds (True) or *timeout* seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def terminate(pid: int, alive: Callable[[], bool], signals: Iterable[tuple[int, float]]) -> bool:
    """Send each (signal, wait) in turn while *alive()* holds, waiting up to *wait* s after each for it to go.

    *alive* must say whether pid is still the process meant (e.g. its command line): a pid recycled by
    another program is never signalled. True once it is gone, False if it outlived every signal.
    """
    for sig, wait in signals:
        if not alive():
            return True
        send_signal(pid, sig)
        if wait_for(lambda: not alive(), wait):
            return True
    return not alive()


def signal_tree(pid: int, sig: int, started: int | None = None) -> None:
    """Signal pid and then its descendants (listed again until no new one appears: a stopped parent forks
    no more). With *started*, nothing is sent unless pid is still the process that started then."""
    if started is not None and not same_process(pid, started):
        return
    send_signal(pid, sig)
    done: set[tuple[int, int]] = set()
    while True:
        todo = [child for child in descendants(pid) if child not in done]
        if not todo:
            return
        for child, child_started in todo:
            if same_process(child, child_started):
                send_signal(child, sig)
            done.add((child, child_started))


# ----------------------------------------------------------------------------------- files and children


def read_pid_file(path: Path) -> int | None:
    """The pid on the first line of path (None when missing or not a number)."""
    try:
        first = path.read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, UnicodeDecodeError, IndexError, ValueError):
        return None


def read_text(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last non-empty lines of text, joined on one line with ' | '."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "(log empty)"


def spawn(argv: Sequence[str], *, env: dict[str, str], run_as: RunAs | None, cwd: Path | None = None,
          output: IO[bytes] | int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a server process in its own session, as *run_as* (when root), stdin closed, output to *output*."""
    extra = run_as.popen_kwargs() if run_as is not None else {}
    return subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                            start_new_session=True, **extra)


def stop_child(proc: subprocess.Popen[bytes], signals: Iterable[tuple[int, float]] = (
        (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))) -> None:
    """Stop a child of this process: each signal in turn, waiting (and reaping) up to its time for it to exit."""
    for sig, wait in signals:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
