"""Child processes of the bench (pgbench, Locust): own process group, log file, ticks, clean stop.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the bench, which
then sends SIGTERM to the child's process group (Locust stops gracefully and writes its verdict;
pgbench ends), waits, and kills the group if it does not end. SIGTERM rather than SIGINT: a
child started from a non-interactive shell's background job inherits SIGINT ignored. Only process
groups the bench started are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 30.0
"""How long a child may take to stop after SIGTERM before its process group is killed."""


@dataclass
class ChildResult:
    argv: list[str]
    returncode: int
    seconds: float
    log: Path
    timed_out: bool

    def output(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The bench's environment without anything that could point a child elsewhere, plus *extra*."""
    drop = ("PG", "LOCUST_", "TOOLCLASH_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "DATABASE_URL"}
    env.update(extra)
    return env


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's group, wait up to GRACE_S, then SIGKILL the group."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _signal_group(proc.pid, signal.SIGKILL)  # stragglers of the group (e.g. Locust workers); none normally


def run_child(argv: Sequence[str], *, env: Mapping[str, str], log: Path, timeout: float, cwd: Path | None = None,
              tick: Callable[[float, Path], None] | None = None, tick_every: float = 5.0,
              on_start: Callable[[int], None] | None = None) -> ChildResult:
    """Run *argv* with stdout+stderr into *log*; call ``tick(elapsed, log)`` every *tick_every* s.

    ``on_start(pid)`` is called right after the child is started.
    On *timeout* or KeyboardInterrupt the child is stopped (SIGTERM, grace, SIGKILL); an
    interrupt is re-raised after that.
    """
    argv = [str(a) for a in argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timed_out = False
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env), cwd=cwd, start_new_session=True)
        try:
            if on_start is not None:
                on_start(proc.pid)
            next_tick = started + tick_every
            while proc.poll() is None:
                now = time.monotonic()
                if now - started > timeout:
                    timed_out = True
                    _stop(proc)
                    break
                if tick is not None and now >= next_tick:
                    next_tick += tick_every
                    tick(now - started, log)
                time.sleep(0.2)
        except BaseException:
            _stop(proc)
            raise
        _signal_group(proc.pid, signal.SIGKILL)  # nothing of ours may outlive the phase
    rc = proc.returncode if proc.returncode is not None else -1
    return ChildResult(argv, rc, time.monotonic() - started, log, timed_out)


class LogTail:
    """New complete lines of a growing log file, since the last call."""

    def __init__(self) -> None:
        self._offset = 0
        self._rest = b""

    def new_lines(self, path: Path) -> list[str]:
        try:
            with open(path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        self._offset += len(data)
        data = self._rest + data
        *lines, self._rest = data.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


class LineCounter:
    """Counts newline characters in a set of growing files (e.g. history/*.jsonl) incrementally."""

    def __init__(self) -> None:
        self._offsets: dict[Path, int] = {}
        self.lines = 0

    def update(self, paths: Sequence[Path]) -> int:
        for path in paths:
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            self._offsets[path] = offset + len(data)
            self.lines += data.count(b"\n")
        return self.lines
