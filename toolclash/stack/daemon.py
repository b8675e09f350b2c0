"""The daemon base: one private server process of the stack, from start to stop.

:class:`Service` does what every server needs, once: find its process (pid file, liveness, command-line
check, so that a recycled pid is never signalled), start it on a free port below the ephemeral range
(retried when another process takes the port first), wait until it serves (polling a probe, with a
deadline), stop it (a signal, a wait, then SIGKILL), and the fault-injection operations
(:meth:`~Service.relaunch` on the recorded port, :meth:`~Service.kill`, :meth:`~Service.pause`,
:meth:`~Service.resume`).  A subclass supplies only what differs: where its pid file and log are, how its
command line names it, its configuration for a port (:meth:`~Service.configure`), how it is launched
(:meth:`~Service.launch`) and how one readiness probe goes (:meth:`~Service.probe`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, NoReturn

from toolclash.stack.process import (
    LOOPBACK,
    POLL_S,
    PORT_ATTEMPTS,
    RunAs,
    StackError,
    descendants,
    file_size,
    free_port,
    is_zombie,
    pid_alive,
    port_comes_free,
    proc_cmdline,
    proc_state,
    read_pid_file,
    read_text,
    same_process,
    send_signal,
    signal_tree,
    spawn,
    start_time,
    tail,
    terminate,
    wait_for,
)

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Server processes started by this process (kept so they are reaped, not warned about, when stopped)."""


class ServiceContext:
    """What a service needs from its stack: the state dir, the OS user to run as, durability, save()."""

    def __init__(self, root: Path, run_as: RunAs | None, durable: bool, save: Callable[[], None],
                 listen: Sequence[str] = ()) -> None:
        self.root = root
        self.run_as = run_as
        self.durable = durable
        self.save = save
        self.listen = tuple(listen)
        """Addresses to listen on besides 127.0.0.1 (multi-host runs: workers on other hosts connect there)."""

    def own(self, path: Path) -> None:
        """chown path to the run-as user (no-op when not root)."""
        if self.run_as is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)

    def makedir(self, path: Path) -> Path:
        """Create a private (0700) dir owned by the run-as user; return it."""
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        self.own(path)
        return path

    def write_file(self, path: Path, text: str, mode: int = 0o600) -> None:
        """Write a file atomically, with mode, owned by the run-as user."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        self.own(tmp)
        os.replace(tmp, path)

    def child_env(self) -> dict[str, str]:
        """Environment for server processes: no PG* variables, C messages, the run-as user's HOME."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.run_as is not None:
            env.update(HOME=self.run_as.home, USER=self.run_as.name, LOGNAME=self.run_as.name)
        return env

    def run(
        self, cmd: Sequence[str | os.PathLike[str]], *, timeout: float, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd as the run-as user (user=/group=, no shell), capturing output, with a timeout."""
        argv = [os.fspath(part) for part in cmd]
        extra = self.run_as.popen_kwargs() if self.run_as is not None else {}
        try:
            return subprocess.run(
                argv,
                check=False,
                cwd=cwd,
                env=self.child_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(timeout, 1.0),
                **extra,
            )
        except FileNotFoundError as exc:
            raise StackError(f"{argv[0]} not found; install it (apt-get install -y postgresql)") from exc
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"{Path(argv[0]).name} did not finish within {max(timeout, 1.0):.0f}s; "
                "retry with a longer --timeout"
            ) from exc

    def spawn(self, argv: Sequence[str], *, cwd: Path, output: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start a server that stays in the foreground: a child of this process (reaped when stopped)."""
        proc = spawn(argv, env=self.child_env(), run_as=self.run_as, cwd=cwd, output=output)
        _CHILDREN[proc.pid] = proc
        return proc


@dataclass(frozen=True)
class Launched:
    """What launching a server said: whether it went (a daemonizing server's exit 0), its output, a label."""

    ok: bool
    output: str = ""
    what: str = ""


class Service(ABC):
    """One private server of the stack.  ``state`` is its record in stack.json (mutable, persisted)."""

    name: ClassVar[str]
    env_var: ClassVar[str]
    title: ClassVar[str]
    """The server's name in messages."""
    STOP_SIGNAL: ClassVar[int] = signal.SIGTERM
    STOP_WAIT_S: ClassVar[float] = 30.0
    """How long :meth:`stop` waits after STOP_SIGNAL before SIGKILL."""
    KILL_WAIT_S: ClassVar[float] = 10.0
    EXIT_GRACE_S: ClassVar[float] = 1.0
    """How long after launch a missing process is not yet taken for an exit (a daemon writes its pid late)."""
    PID_FROM_STATE: ClassVar[bool] = False
    """Whether the pid recorded in the state stands in for a missing pid file."""
    PORT_CLASH: ClassVar[tuple[str, ...]] = ("address already in use", "could not bind",
                                             "could not create server tcp listening socket")
    """Log phrases (lower case) of a server that lost its port to another process: retried on another."""

    def __init__(self, ctx: ServiceContext, state: dict[str, Any]) -> None:
        self.ctx = ctx
        self.state = state
        self.last_probe_error = ""

    @property
    def dir(self) -> Path:
        """The service's own dir inside the state dir."""
        return self.ctx.root / self.name

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path | None:
        """Where the server writes its pid (None: the pid recorded in the state is all there is)."""
        return None

    # -- what a subclass supplies ---------------------------------------------------------------------

    @abstractmethod
    def owns(self, pid: int, cmdline: bytes) -> bool:
        """Whether *cmdline* (argv joined by NUL) is this service's server (not another that reused the pid)."""

    @abstractmethod
    def url(self, *, masked: bool = False) -> str | None:
        """Connection URL (None before the first start); ``masked`` hides the password."""

    @abstractmethod
    def configure(self, port: int) -> None:
        """Write the server's configuration for *port* (and record the port(s) in the state)."""

    @abstractmethod
    def launch(self, deadline: float) -> Launched:
        """Start the server process with the configuration on disk; do not wait for readiness."""

    @abstractmethod
    def probe(self) -> bool:
        """One readiness check: True once it serves requests.  Sets ``last_probe_error``; raises StackError
        when waiting cannot help (e.g. a rejected password)."""

    def prepare(self, deadline: float) -> None:  # noqa: B027 - a hook: most services need nothing
        """Once per :meth:`start`, before the first port: binaries, dirs, password, initdb."""

    def choose_port(self, attempt: int) -> int:
        """The port of start attempt *attempt* (0-based): a free one."""
        return self.pick_port()

    def ports(self) -> list[int]:
        """The ports a running server holds (restarts need them free)."""
        port = self.state.get("port")
        return [int(port)] if port else []

    def abort(self) -> None:
        """Stop a server whose start failed, whatever it left (errors ignored: the start's error is the news)."""
        with contextlib.suppress(StackError, OSError):
            self.stop()

    # -- process --------------------------------------------------------------------------------------

    @staticmethod
    def pick_port() -> int:
        """A free port of 127.0.0.1 below the ephemeral range (see :func:`.process.free_port`)."""
        return free_port()

    def _candidate_pid(self) -> int | None:
        pid = read_pid_file(self.pid_file) if self.pid_file is not None else None
        if pid is None and (self.pid_file is None or self.PID_FROM_STATE):
            pid = int(self.state.get("pid") or 0)
        return pid if pid and pid > 0 else None

    def is_ours(self, pid: int) -> bool:
        """Whether pid is alive (not a zombie) and its command line is this service's server."""
        if not pid_alive(pid) or is_zombie(pid):
            return False
        cmdline = proc_cmdline(pid)
        return cmdline is None or self.owns(pid, cmdline)

    def pid(self) -> int | None:
        """pid of the server serving *this* service, checked against its command line."""
        pid = self._candidate_pid()
        return pid if pid is not None and self.is_ours(pid) else None

    def is_running(self) -> bool:
        """Whether this service's server process is alive."""
        return self.pid() is not None

    def is_paused(self) -> bool:
        """Whether the server's process is stopped by SIGSTOP (:meth:`pause`)."""
        pid = self.pid()
        return pid is not None and proc_state(pid) in ("T", "t")

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self, deadline: float) -> None:
        """Start the server on a free port and wait until it serves requests, before ``deadline``
        (time.monotonic); another port when one is taken meanwhile, PORT_ATTEMPTS times."""
        self.prepare(deadline)
        last_port = 0
        for attempt in range(PORT_ATTEMPTS):
            if time.monotonic() >= deadline:
                self.raise_deadline()
            last_port = self.choose_port(attempt)
            self.configure(last_port)
            failed = self._launch_and_wait(deadline)
            if failed is None:
                break
            log, launched = failed
            if self.port_clash(log):
                continue  # another process took the port between our probe and the server's bind
            if time.monotonic() >= deadline:
                self.raise_deadline(log)
            raise StackError(f"{self.title} failed to start ({launched.what}): {tail(log)}; see {self.log_file}")
        else:
            raise StackError(
                f"{self.title} could not bind a free port on {LOOPBACK} after {PORT_ATTEMPTS} attempts "
                f"(last {last_port}): ports are being taken by other processes; retry"
            )
        self.state["pid"] = self.pid()
        self.ctx.save()

    def relaunch(self, deadline: float) -> None:
        """Start the server again as it was (recorded port, configuration on disk), after :meth:`stop` or
        :meth:`kill`, and wait until it serves; clients' URLs stay valid.  Nothing when it runs."""
        if self.is_running():
            return
        if not self.state.get("port"):
            raise StackError(f"{self.title} in {self.ctx.root} was never started; start it: "
                             f"python -m toolclash.stack up --dir {self.ctx.root}")
        for port in self.ports():
            if not port_comes_free(port, max(0.0, min(5.0, deadline - time.monotonic()))):
                raise StackError(f"{self.title} cannot restart on its port {port}: another process holds it "
                                 f"(clients' URLs name that port); free it or restart the whole stack")
        failed = self._launch_and_wait(deadline)
        if failed is not None:
            log, launched = failed
            if time.monotonic() >= deadline:
                self.raise_deadline(log)
            raise StackError(f"{self.title} failed to restart ({launched.what}): {tail(log)}; see {self.log_file}")
        self.state["pid"] = self.pid()
        self.ctx.save()

    def _launch_and_wait(self, deadline: float) -> tuple[str, Launched] | None:
        """Launch and wait until ready: None, or (the log since launch and the launcher's output, launched)
        after stopping whatever the failed launch left behind."""
        offset = file_size(self.log_file)
        try:
            launched = self.launch(deadline)
            if launched.ok and self.wait_ready(deadline, offset):
                return None
        except BaseException:
            self.abort()  # leave no half-started server behind
            raise
        log = read_text(self.log_file, offset) + launched.output
        self.abort()
        return log, launched

    def wait_ready(self, deadline: float, log_offset: int) -> bool:
        """Poll :meth:`probe` until it succeeds (True); False once the server has exited or its log (from
        *log_offset*) says its port was taken; StackError at the deadline."""
        launched_at = time.monotonic()
        self.last_probe_error = ""
        while True:
            if self.probe():
                return True
            if self.port_clash(read_text(self.log_file, log_offset)):
                return False
            if time.monotonic() - launched_at >= self.EXIT_GRACE_S and not self.is_running():
                return False  # it exited (its log says why)
            if time.monotonic() >= deadline:
                log = read_text(self.log_file, log_offset)
                self.raise_deadline(f"{log}\nlast error: {self.last_probe_error}" if self.last_probe_error else log)
            time.sleep(POLL_S)

    def port_clash(self, log: str) -> bool:
        text = log.lower()
        return any(phrase in text for phrase in self.PORT_CLASH)

    def raise_deadline(self, log: str | None = None) -> NoReturn:
        text = log if log is not None else read_text(self.log_file)
        raise StackError(
            f"{self.title} did not become ready before the deadline (see {self.log_file}): "
            f"{tail(text)}; retry with a longer --timeout"
        )

    def check_mode(self, mode: str) -> None:
        if mode != "fast":
            raise StackError(f"{self.title} has no stop mode {mode!r} (only PostgreSQL has smart/fast/immediate); "
                             "use stop() for a graceful stop or kill() for a crash")

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server if it runs (STOP_SIGNAL, then SIGKILL after STOP_WAIT_S); return whether it was
        running.  Must not fail when it is gone."""
        self.check_mode(mode)
        pid = self.pid()
        self.state["pid"] = None
        if pid is None:
            return False
        self._continue(pid)  # a paused server would not act on the signal
        if not terminate(pid, lambda: self.is_ours(pid),
                         ((self.STOP_SIGNAL, self.STOP_WAIT_S), (signal.SIGKILL, self.KILL_WAIT_S))):
            raise StackError(f"could not stop {self.title} (pid {pid}); stop it by hand: kill -9 {pid}")
        self._reap(pid)
        return True

    def kill(self) -> bool:
        """SIGKILL the server (a crash, for fault tests): no shutdown, no final flush.  Waits until it is
        gone, and its child processes too (they exit when they see their parent die; SIGKILL after
        KILL_WAIT_S), so a restart finds nothing of it.  Returns whether it was running."""
        pid = self.pid()
        self.state["pid"] = None
        if pid is None:
            return False
        children = descendants(pid)
        started = start_time(pid)
        send_signal(pid, signal.SIGKILL)
        self._reap(pid)
        # gone from the process table, not just dead: a zombie's pid still answers kill(pid, 0), and PostgreSQL
        # refuses to start while the pid in its lock file does
        wait_for(lambda: start_time(pid) != started, self.KILL_WAIT_S)
        for child, started in children:  # a paused child would never see its parent go
            if same_process(child, started):
                send_signal(child, signal.SIGCONT)
        if not wait_for(lambda: not any(same_process(*c) for c in children), self.KILL_WAIT_S):
            for child, started in children:
                if same_process(child, started):
                    send_signal(child, signal.SIGKILL)
            wait_for(lambda: not any(same_process(*c) for c in children), self.KILL_WAIT_S)
        return True

    def pause(self) -> None:
        """SIGSTOP the server and its child processes: it keeps its connections and answers nothing (a hung
        server, or a long GC pause) until :meth:`resume`."""
        pid = self.pid()
        if pid is None:
            raise StackError(f"{self.title} is not running in {self.ctx.root}; nothing to pause")
        signal_tree(pid, signal.SIGSTOP)
        if not wait_for(lambda: proc_state(pid) in ("T", "t", None), self.KILL_WAIT_S):
            raise StackError(f"{self.title} (pid {pid}) did not stop on SIGSTOP")

    def resume(self) -> None:
        """SIGCONT the server and its child processes (after :meth:`pause`); nothing when it is not paused."""
        pid = self.pid()
        if pid is not None:
            self._continue(pid)

    def _continue(self, pid: int) -> None:
        for child, started in reversed(descendants(pid)):
            if same_process(child, started):
                send_signal(child, signal.SIGCONT)
        send_signal(pid, signal.SIGCONT)

    @staticmethod
    def _reap(pid: int) -> None:
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)

    # -- clients --------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables that point clients at this service."""
        url = self.url()
        if url is None or not self.is_running():
            raise StackError(
                f"{self.name} is not running in {self.ctx.root}; start it: "
                f"python -m toolclash.stack up --dir {self.ctx.root}"
            )
        return {self.env_var: url}

    def notes(self) -> list[str]:
        """Plain-language remarks for status and ``up`` output (e.g. non-durable settings)."""
        return []

    def status(self) -> dict[str, Any]:
        """running, pid, port, masked url, log, settings and notes."""
        running = self.is_running()
        return {
            "running": running,
            "pid": self.state.get("pid") if running else None,
            "port": self.state.get("port") if running else None,
            "url": self.url(masked=True) if running else None,
            "dir": str(self.dir),
            "log": self.state.get("log"),
            "durable": self.state.get("durable") if running else None,
            "settings": dict(self.state.get("settings", {})) if running else {},
            "notes": self.notes() if running else [],
        }
