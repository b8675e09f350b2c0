"""Fault injection on a running server, found from its URL: stop, start, restart, crash, pause, resume.

The process that injects faults (the Locust master, a fault scheduler) need not be the one that started
the stack: :meth:`ServerControl.of` finds the server from the URL clients use.  The URL must name this
machine (127.0.0.1, localhost, ::1); the process listening on its port is looked up in ``/proc``, and its
command line (or working dir) names the stack's state dir and service, whose ``stack.json`` record the
operations then use under the state dir's lock (they save what they change, e.g. the new pid).  A local
PostgreSQL cluster that no stack records is controlled through its data dir with ``pg_ctl``, as its owner.
Anything else is a one-line :class:`StackError` (:class:`NotLocalError` for a server of another host).

    ctl = ServerControl.of(os.environ["DATABASE_URL"])
    ctl.pause(); ...; ctl.resume()          # SIGSTOP / SIGCONT of the server and its child processes
    ctl.crash(); ctl.start()                # SIGKILL, then a start on the same port (URLs stay valid)
    ctl.stop("immediate"); ctl.start()      # PostgreSQL: pg_ctl stop -m immediate|fast|smart
    ctl.restart()                           # stop (fast) + start

Every operation waits for its effect (stopped, gone, ready) with a deadline; none sleeps blindly.  What
each does, by kind of server (``ctl.name``):

* ``postgres``, ``auth_postgres``: stop is ``pg_ctl stop -m MODE`` (fast: sessions rolled back, then a
  checkpoint; immediate: no checkpoint, crash recovery at the next start; smart: waits for the sessions);
  crash is SIGKILL of the postmaster (its backends exit when they see it gone).  Committed data survives a
  crash when the stack is durable (``--durable``); otherwise the last commits acknowledged before it may be
  lost (``synchronous_commit=off``).
* ``redis``: stop is SIGTERM (Redis's SHUTDOWN: the AOF is flushed); crash is SIGKILL (a non-durable Redis
  comes back empty, a durable one with every acknowledged write).
* ``pgbouncer``: stop is SIGTERM (its immediate shutdown: clients are cut); crash is SIGKILL.
* ``clickhouse``, ``prometheus``: stop is SIGTERM (SIGKILL after 30 s); crash is SIGKILL.

Pause is SIGSTOP of the server and its child processes (connections stay open, nothing answers), resume
is SIGCONT; a paused server is resumed before it is stopped, and its children after its crash.  A start
reuses the server's port, so clients' URLs stay valid.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit

from toolclash.option import mask_url
from toolclash.stack.core import SERVICES, Stack, load_state
from toolclash.stack.daemon import Service, ServiceContext
from toolclash.stack.postgres import LocalCluster
from toolclash.stack.process import (
    LOCAL_HOSTS,
    STATE_FILE,
    RunAs,
    StackError,
    listener_pids,
    proc_cmdline,
    proc_cwd,
)

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "clickhouse": 9000, "http": 80}
DEFAULT_TIMEOUT_S = 60.0


class NotLocalError(StackError):
    """The URL names a server of another host: fault injection needs one this machine runs."""


Opener = Callable[[bool], AbstractContextManager[Service]]
"""The service, its record read under the state dir's lock (argument True: an operation) or not (a look)."""


class ServerControl:
    """One local server, for fault injection (see the module's documentation).  Get it with :meth:`of`."""

    def __init__(self, url: str, name: str, opener: Opener, where: Path) -> None:
        self.url = url
        self.name = name
        """The service: postgres, auth_postgres, pgbouncer, redis, clickhouse or prometheus."""
        self.where = where
        """The stack's state dir (or a foreign PostgreSQL cluster's data dir)."""
        self._opener = opener

    # -- finding it -----------------------------------------------------------------------------------

    @classmethod
    def of(cls, url: str, *, state_dir: str | os.PathLike[str] | None = None) -> ServerControl:
        """The server *url* points at: the process listening on its port, or, with *state_dir*, the service
        that state dir records on that port (found even while the server is down).  StackError when it is
        not a server of this machine that a stack (or, for PostgreSQL, ``pg_ctl``) can control."""
        parts = urlsplit(url)
        try:
            host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            host, port = None, None
        if host not in LOCAL_HOSTS or port is None:
            raise NotLocalError(f"{mask_url(url)}: controlling a server (stop, start, crash, pause) needs a local "
                                f"server this machine runs, at 127.0.0.1, localhost or ::1, not {host or '?'}")
        if state_dir is not None:
            root = Path(state_dir).absolute()
            return cls(url, *cls._recorded(root, port), root)
        pids = listener_pids(port)
        if not pids:
            raise StackError(f"{mask_url(url)}: no process (that this user may see) listens on port {port}; "
                             "start the server (python -m toolclash.stack up), or pass the stack's state dir")
        for pid in pids:
            found = cls._stack_service(pid, port)
            if found is not None:
                root, name = found
                return cls(url, name, _stack_opener(root, name), root)
        if parts.scheme in ("postgresql", "postgres"):
            for pid in pids:
                data_dir = proc_cwd(pid)
                if data_dir is not None and (data_dir / "PG_VERSION").is_file():
                    return cls(url, "postgres", _cluster_opener(data_dir, port), data_dir)
        raise StackError(f"{mask_url(url)}: the server on port {port} (pid {pids[0]}) is not one of a toolclash "
                         "stack's, nor a PostgreSQL cluster; only those can be controlled")

    @staticmethod
    def _recorded(root: Path, port: int) -> tuple[str, Opener]:
        services = load_state(root)["services"] if (root / STATE_FILE).is_file() else {}
        for name, record in services.items():
            if name in SERVICES and record.get("port") == port:
                return name, _stack_opener(root, name)
        raise StackError(f"the stack in {root} records no server on port {port}")

    @staticmethod
    def _stack_service(pid: int, port: int) -> tuple[Path, str] | None:
        """(state dir, service) of the stack server *pid* when its command line or working dir names it:
        a file or dir directly in the service's dir (``-D <root>/postgres/data``, ``--config-file=…``)."""
        args = [arg.decode(errors="replace") for arg in (proc_cmdline(pid) or b"").split(b"\0") if arg]
        paths = [Path(arg.split("=", 1)[-1]) for arg in args]
        cwd = proc_cwd(pid)
        for path in [*paths, *([cwd] if cwd is not None else [])]:
            if not path.is_absolute():
                continue
            root, name = path.parent.parent, path.parent.name
            if name not in SERVICES or not (root / STATE_FILE).is_file():
                continue
            with contextlib.suppress(StackError):
                record = load_state(root)["services"].get(name) or {}
                if record.get("port") == port:
                    return root, name
        return None

    # -- state ----------------------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The server's main process (PostgreSQL's postmaster), None when it is not running."""
        with self._opener(False) as service:
            return service.pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def is_paused(self) -> bool:
        """Whether the server is stopped by :meth:`pause`."""
        with self._opener(False) as service:
            return service.is_paused()

    # -- operations -----------------------------------------------------------------------------------

    def stop(self, mode: str = "fast") -> bool:
        """A graceful stop (a paused server is resumed first); *mode* is PostgreSQL's ``pg_ctl stop -m``
        (smart, fast, immediate), the others have only fast.  Returns whether it was running."""
        with self._opener(True) as service:
            return service.stop(mode)

    def start(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Start the server again on its port with its configuration, and wait (up to *timeout* s) until
        it serves; nothing when it runs (a paused server stays paused: :meth:`resume` it)."""
        with self._opener(True) as service:
            service.relaunch(time.monotonic() + timeout)

    def restart(self, mode: str = "fast", timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """:meth:`stop` (*mode*) then :meth:`start`."""
        deadline = time.monotonic() + timeout
        with self._opener(True) as service:
            service.stop(mode)
            service.relaunch(deadline)

    def crash(self) -> bool:
        """SIGKILL the server's main process (no shutdown, no final flush); wait until it and its child
        processes are gone.  Returns whether it was running."""
        with self._opener(True) as service:
            return service.kill()

    def pause(self) -> None:
        """SIGSTOP the server and its child processes: connections stay open, nothing is answered."""
        with self._opener(True) as service:
            service.pause()

    def resume(self) -> None:
        """SIGCONT what :meth:`pause` stopped."""
        with self._opener(True) as service:
            service.resume()

    def __repr__(self) -> str:
        return f"ServerControl({self.name} at {mask_url(self.url)}, {self.where})"


def _stack_opener(root: Path, name: str) -> Opener:
    return lambda locked: Stack(root).service(name, locked=locked)


def _cluster_opener(data_dir: Path, port: int) -> Opener:
    """A cluster no stack records: ``pg_ctl`` as the data dir's owner (when root), nothing saved."""
    st = data_dir.stat()
    run_as = RunAs.of_uid(st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 else None

    @contextlib.contextmanager
    def opener(_locked: bool) -> Iterator[Service]:
        def save() -> None:
            pass

        ctx = ServiceContext(data_dir.parent, run_as, durable=False, save=save)
        yield LocalCluster(ctx, data_dir, port)

    return opener

