"""Embedded local stack: private real servers on free ports.

``Stack`` owns a list of :class:`Service` objects (for now only PostgreSQL) that live in one
*state dir*: data, logs and ``stack.json`` (the record of what this stack started, including the
generated password; mode 0600).  Reopening ``Stack(state_dir=same_dir)`` in another process sees
the running services, so the CLI works across invocations::

    python -m toolclash.stack up      [--dir DIR] [--durable]
    eval "$(python -m toolclash.stack env)"
    python -m toolclash.stack status
    python -m toolclash.stack down

The servers listen on 127.0.0.1 only, on ports picked free at start.  When run as root the
servers run as an unprivileged OS user (``postgres`` if it exists, else a system user
``toolclash`` created on demand).  Unless ``durable=True`` PostgreSQL runs with ``fsync=off,
synchronous_commit=off, full_page_writes=off``: fast, but a crash of the machine may lose data.

Nothing happens at import time: no subprocess, no file reads, no connections.

To add a service (Redis, PgBouncer, ClickHouse, Prometheus...): subclass :class:`Service`, set
``name`` and ``env_var``, implement ``start/stop/is_running/url`` and add it to ``SERVICES``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Self

from toolclash.settings import mask_url

__all__ = [
    "SERVICES",
    "ClickHouseService",
    "PostgresService",
    "RedisService",
    "Service",
    "ServiceContext",
    "Stack",
    "StackError",
    "main",
    "mask_url",
]

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
LOOPBACK = "127.0.0.1"
DEFAULT_CLI_DIR = ".stack"
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 8
_STATE_VERSION = 1
_RUN_AS_FALLBACK_USER = "toolclash"


class StackError(Exception):
    """One-line message: what is wrong and how to fix it."""


# --------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class RunAs:
    """The unprivileged OS user the servers run as when this process is root."""

    name: str
    uid: int
    gid: int
    home: str


def _resolve_run_as() -> RunAs | None:
    """None when not root; else the ``postgres`` user, or a system user ``toolclash`` (created)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _RUN_AS_FALLBACK_USER):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _RUN_AS_FALLBACK_USER]
    try:
        result = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(
            f"running as root and no 'postgres' user exists; creating system user "
            f"'{_RUN_AS_FALLBACK_USER}' failed ({exc}); create it: useradd --system {_RUN_AS_FALLBACK_USER}"
        ) from exc
    try:  # a concurrent stack may have created it first: look it up whatever useradd said
        pw = pwd.getpwnam(_RUN_AS_FALLBACK_USER)
    except KeyError:
        why = (result.stderr or result.stdout).strip().splitlines()
        raise StackError(
            f"running as root and no 'postgres' user exists; `useradd --system {_RUN_AS_FALLBACK_USER}` "
            f"failed ({why[-1] if why else f'exit {result.returncode}'}); create the user by hand"
        ) from None
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def _check_traversable(path: Path, run_as: RunAs) -> None:
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


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections (ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, below the kernel's ephemeral range where one is free.

    A server's port inside the ephemeral range can be taken, while the server is down for a restart, by
    any outgoing connection's local port, even by a client of that very server retrying its connect (TCP
    self-connect); below the range only listeners compete for it. Another process may still take it later.
    """
    import random

    low = _ephemeral_low()
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


def _read_text(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last non-empty lines of text, joined on one line with ' | '."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "(log empty)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_cmdline(pid: int) -> bytes | None:
    """argv of pid joined by NUL, or None where /proc is not available."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None if not Path("/proc/self").exists() else b""
    except OSError:
        return None


def _version_key(bindir: str) -> tuple[int, ...]:
    name = Path(bindir).parent.name
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def _shell_safe_path(path: Path) -> None:
    # pg_ctl passes -D and -l through /bin/sh inside double quotes
    bad = set('"$`\\\n') & set(str(path))
    if bad:
        raise StackError(
            f"path {path} contains characters pg_ctl cannot quote ({''.join(sorted(bad))}); "
            "use a plain directory name for --dir"
        )


# ------------------------------------------------------------------------------------------- services


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
        extra: dict[str, Any] = {}
        if self.run_as is not None:
            extra = {"user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []}
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


class Service(ABC):
    """One private server of the stack.  ``state`` is its record in stack.json (mutable, persisted)."""

    name: ClassVar[str]
    env_var: ClassVar[str]

    def __init__(self, ctx: ServiceContext, state: dict[str, Any]) -> None:
        self.ctx = ctx
        self.state = state

    @property
    def dir(self) -> Path:
        """The service's own dir inside the state dir."""
        return self.ctx.root / self.name

    @abstractmethod
    def start(self, deadline: float) -> None:
        """Start the server and wait until it serves requests, before ``deadline`` (time.monotonic)."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop the server if it runs; return whether it was running.  Must not fail when it is gone."""

    @abstractmethod
    def is_running(self) -> bool:
        """Whether this service's server process is alive."""

    @abstractmethod
    def url(self, *, masked: bool = False) -> str | None:
        """Connection URL (None before the first start); ``masked`` hides the password."""

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


def find_pg_bindir() -> Path:
    """Dir holding initdb, pg_ctl and postgres: ``pg_config --bindir``, else newest /usr/lib/postgresql/*/bin."""
    required = ("initdb", "pg_ctl", "postgres")
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
                stdin=subprocess.DEVNULL,
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for cand in candidates:
        if all(os.access(Path(cand, exe), os.X_OK) for exe in required):
            return Path(cand)
    missing = next((exe for exe in required if not any(Path(c, exe).exists() for c in candidates)), "initdb")
    raise StackError(
        f"PostgreSQL server binaries not found ({missing}); install them: "
        "apt-get install -y postgresql  (or run `make setup`)"
    )


class PostgresService(Service):
    """A private PostgreSQL cluster: superuser and database ``toolclash``, scram password, 127.0.0.1 only."""

    name = "postgres"
    env_var = "DATABASE_URL"
    user = "toolclash"
    database = "toolclash"

    FAST_SETTINGS: ClassVar[dict[str, str]] = {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    DURABLE_SETTINGS: ClassVar[dict[str, str]] = {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
    }

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "postgres.log"

    # -- state --------------------------------------------------------------------------------------

    def _pidfile_pid(self) -> int | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            return int(lines[0])
        except (IndexError, ValueError):
            return None

    def _our_postmaster(self) -> int | None:
        """pid of the postmaster serving *our* data dir, checked against its command line."""
        pid = self._pidfile_pid()
        if pid is None or pid <= 0 or not _pid_alive(pid):
            return None
        cmdline = _proc_cmdline(pid)
        if cmdline is not None and os.fsencode(self.data_dir) not in cmdline.split(b"\0"):
            return None  # stale postmaster.pid whose pid now belongs to another process
        return pid

    def is_running(self) -> bool:
        return self._our_postmaster() is not None

    def url(self, *, masked: bool = False) -> str | None:
        port, password = self.state.get("port"), self.state.get("password")
        if port is None or password is None:
            return None
        return f"postgresql://{self.user}:{'***' if masked else password}@{LOOPBACK}:{port}/{self.database}"

    def remote_urls(self) -> list[str]:
        """The URLs other hosts use (one per --listen address); password masked in notes."""
        port, password = self.state.get("port"), self.state.get("password")
        return [f"postgresql://{self.user}:{password}@{host}:{port}/{self.database}"
                for host in self.state.get("listen") or []]

    def notes(self) -> list[str]:
        out = [f"other hosts connect to {mask_url(url)}" for url in self.remote_urls()]
        if self.state.get("durable") is False:
            note = (
                "non-durable: fsync=off, synchronous_commit=off, full_page_writes=off "
                "(fast; a machine crash may lose data; for durability use your own DATABASE_URL "
                "or `python -m toolclash.stack up --durable`)"
            )
            out.append(note)
        return out

    def _bindir(self) -> Path:
        recorded = self.state.get("bindir")
        if recorded and all(
            os.access(Path(recorded, exe), os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")
        ):
            return Path(recorded)
        return find_pg_bindir()

    def _settings(self, port: int) -> dict[str, str]:
        settings = {
            "listen_addresses": "'" + ",".join((LOOPBACK, *self.ctx.listen)) + "'",
            "port": str(port),
            "unix_socket_directories": "''",
            "max_connections": "400",
            "max_prepared_transactions": "100",
            "deadlock_timeout": "'100ms'",
            "log_lock_waits": "on",
            "logging_collector": "off",
            "shared_buffers": "'128MB'",
            "log_line_prefix": "'%m [%p] '",
        }
        settings.update(self.DURABLE_SETTINGS if self.ctx.durable else self.FAST_SETTINGS)
        return settings

    # -- lifecycle ----------------------------------------------------------------------------------

    def _initdb(self, bindir: Path, deadline: float) -> None:
        data = self.data_dir
        if self.state.get("initialized") and (data / "PG_VERSION").exists():
            return
        if data.exists():
            if self.state.get("phase") == "initdb" or not any(data.iterdir()):
                shutil.rmtree(data)  # our own half-done initdb
            else:
                raise StackError(
                    f"{data} exists but {self.ctx.root / STATE_FILE} does not record it; "
                    f"remove {self.ctx.root} or use another --dir"
                )
        self.ctx.makedir(self.dir)
        password = secrets.token_urlsafe(24)
        self.state.update(password=password, phase="initdb", bindir=str(bindir), log=str(self.log_file))
        self.ctx.save()
        pwfile = self.dir / "pwfile"
        self.ctx.write_file(pwfile, password + "\n")
        cmd: list[str | os.PathLike[str]] = [
            bindir / "initdb",
            "-D",
            data,
            "-U",
            self.user,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        if not self.ctx.durable:
            cmd.append("--no-sync")
        try:
            result = self.ctx.run(cmd, timeout=deadline - time.monotonic(), cwd=self.dir)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise StackError(
                f"initdb failed (exit {result.returncode}): {_tail(result.stderr + result.stdout, 3)}; "
                f"fix the cause above, then retry `up` (data dir {data})"
            )
        with (data / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write(
                "\n# settings of the toolclash stack, rewritten on every start\ninclude 'toolclash.conf'\n"
            )
        self.state.update(initialized=True, phase="initialized")
        self.ctx.save()

    HBA_MARK = "# toolclash.stack: clients of other hosts (rewritten on every start)"

    def _write_conf(self, settings: dict[str, str]) -> None:
        lines = ["# written by toolclash.stack on every start; edits are lost"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        self.ctx.write_file(self.data_dir / "toolclash.conf", "\n".join(lines) + "\n")
        # With --listen, hosts on the listen addresses' own subnets (samenet) may log in, with the password.
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8").split("\n" + self.HBA_MARK)[0].rstrip("\n") + "\n"
        if self.ctx.listen:
            text += f"\n{self.HBA_MARK}\nhost all all samenet scram-sha-256\n"
        self.ctx.write_file(hba, text)

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def start(self, deadline: float) -> None:
        bindir = self._bindir()
        _shell_safe_path(self.data_dir)
        self._initdb(bindir, deadline)
        last_port = 0
        for _attempt in range(PORT_ATTEMPTS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._raise_deadline()
            last_port = _free_port()
            settings = self._settings(last_port)
            self._write_conf(settings)
            offset = self._log_size()
            wait = max(1, int(remaining))
            result = self.ctx.run(
                [
                    bindir / "pg_ctl",
                    "start",
                    "-D",
                    self.data_dir,
                    "-l",
                    self.log_file,
                    "-w",
                    "-t",
                    str(wait),
                    "-s",
                ],
                timeout=wait + 15,
                cwd=self.dir,
            )
            if result.returncode == 0:
                break
            log = _read_text(self.log_file, offset)
            if self.is_running():  # pg_ctl gave up waiting: do not leave a half-started server behind
                self._stop(bindir, mode="immediate")
            if "Address already in use" in log or "could not bind" in log:
                continue  # another process took the port between our probe and the server's bind
            if time.monotonic() >= deadline:
                self._raise_deadline(log)
            raise StackError(
                f"PostgreSQL failed to start (pg_ctl exit {result.returncode}): "
                f"{_tail(log or result.stderr + result.stdout)}; see {self.log_file}"
            )
        else:
            raise StackError(
                f"PostgreSQL could not bind a free port on {LOOPBACK} after {PORT_ATTEMPTS} "
                f"attempts (last {last_port}): ports are being taken by other processes; retry"
            )
        self.state.update(
            port=last_port,
            listen=list(self.ctx.listen),
            pid=self._pidfile_pid(),
            durable=self.ctx.durable,
            settings={k: v.strip("'") for k, v in settings.items()},
        )
        self.ctx.save()
        try:
            self._wait_ready_and_create_db(deadline)
        except BaseException:
            self._stop(bindir, mode="immediate")
            raise

    def _raise_deadline(self, log: str | None = None) -> NoReturn:
        text = log if log is not None else _read_text(self.log_file)
        raise StackError(
            f"PostgreSQL did not become ready before the deadline (see {self.log_file}): "
            f"{_tail(text)}; retry with a longer --timeout"
        )

    def _wait_ready_and_create_db(self, deadline: float) -> None:
        import psycopg2  # local import: nothing at import time, and only this service needs it

        last_error = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._raise_deadline(f"{_read_text(self.log_file)}\nlast connect error: {last_error}")
            try:
                conn = psycopg2.connect(
                    host=LOOPBACK,
                    port=self.state["port"],
                    user=self.user,
                    password=self.state["password"],
                    dbname="postgres",
                    connect_timeout=max(1, min(2, int(remaining))),
                )
            except psycopg2.OperationalError as exc:
                last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if "password authentication failed" in last_error:
                    raise StackError(
                        f"PostgreSQL rejected the password recorded in {self.ctx.root / STATE_FILE}; "
                        f"remove {self.ctx.root} to start afresh"
                    ) from exc
                if not self.is_running():
                    raise StackError(
                        f"PostgreSQL exited during startup: {_tail(_read_text(self.log_file))}; "
                        f"see {self.log_file}"
                    ) from exc
                time.sleep(0.05)
                continue
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{self.database}"')
            finally:
                conn.close()
            return

    def _stop(self, bindir: Path | None, *, mode: str = "fast") -> bool:
        pid = self._our_postmaster()
        if pid is None:
            return False
        pg_ctl = bindir / "pg_ctl" if bindir is not None else None
        if pg_ctl is not None and os.access(pg_ctl, os.X_OK):
            result = self.ctx.run(
                [pg_ctl, "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "60", "-s"],
                timeout=75,
                cwd=self.dir,
            )
            if result.returncode == 0 or not _pid_alive(pid):
                return True
            why = _tail(result.stderr + result.stdout, 2)
        else:  # binaries gone: fast shutdown is SIGINT to the postmaster
            os.kill(pid, signal.SIGINT if mode == "fast" else signal.SIGQUIT)
            limit = time.monotonic() + 60
            while time.monotonic() < limit:
                if not _pid_alive(pid):
                    return True
                time.sleep(0.05)
            why = "still running 60s after SIGINT"
        raise StackError(
            f"could not stop PostgreSQL (pid {pid}, data {self.data_dir}): {why}; "
            f"stop it by hand: kill -INT {pid}"
        )

    def stop(self) -> bool:
        bindir: Path | None
        try:
            bindir = self._bindir()
        except StackError:
            bindir = None
        was_running = self._stop(bindir, mode="fast")
        self.state["pid"] = None
        return was_running


class AuthPostgresService(PostgresService):
    """A second private PostgreSQL cluster: the auth service's database (cross-service scenario)."""

    name = "auth_postgres"
    env_var = "AUTH_DATABASE_URL"


def find_clickhouse_server() -> Path:
    """The ``clickhouse-server`` binary (Debian's package puts it in /usr/sbin)."""
    for cand in (shutil.which("clickhouse-server"), "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"):
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    raise StackError("clickhouse-server not found; install it: apt-get install -y clickhouse-server "
                     "(or set CLICKHOUSE_URL to your own server)")


class ClickHouseService(Service):
    """A private ClickHouse server (Debian's 18.16): its own config.xml/users.xml, 127.0.0.1 only.

    Native (tcp) and HTTP ports are picked free at start, interserver replication is off, data, tmp and
    logs live in the service's dir, one user ``toolclash`` with a generated password, database
    ``toolclash``. Clients speak the native protocol (``clickhouse-driver``); the URL is
    ``clickhouse://toolclash:PASSWORD@127.0.0.1:PORT/toolclash``.
    """

    name = "clickhouse"
    env_var = "CLICKHOUSE_URL"
    user = "toolclash"
    database = "toolclash"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.xml"

    @property
    def pid_file(self) -> Path:
        return self.dir / "clickhouse.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "clickhouse-server.log"

    @property
    def err_file(self) -> Path:
        return self.dir / "clickhouse-server.err.log"

    def _pid(self) -> int | None:
        """pid of the server serving *our* config, checked against its command line."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = self.state.get("pid") or 0
        if pid <= 0 or not _pid_alive(pid):
            return None
        cmdline = _proc_cmdline(pid)
        if cmdline is not None and f"--config-file={self.config_file}".encode() not in cmdline.split(b"\0"):
            return None  # a stale pid now used by another process (or a zombie)
        return int(pid)

    def is_running(self) -> bool:
        return self._pid() is not None

    def url(self, *, masked: bool = False) -> str | None:
        port, password = self.state.get("port"), self.state.get("password")
        if port is None or password is None:
            return None
        return f"clickhouse://{self.user}:{'***' if masked else password}@{LOOPBACK}:{port}/{self.database}"

    def _write_config(self, tcp_port: int, http_port: int) -> None:
        from xml.sax.saxutils import escape

        d = self.dir
        config = f"""<?xml version="1.0"?>
<!-- written by toolclash.stack on every start; edits are lost -->
<yandex>
    <logger>
        <level>warning</level>
        <log>{escape(str(self.log_file))}</log>
        <errorlog>{escape(str(self.err_file))}</errorlog>
        <size>10M</size>
        <count>2</count>
    </logger>
    <listen_host>{LOOPBACK}</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <max_connections>1024</max_connections>
    <max_concurrent_queries>200</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <path>{escape(str(d / "data"))}/</path>
    <tmp_path>{escape(str(d / "tmp"))}/</tmp_path>
    <user_files_path>{escape(str(d / "user_files"))}/</user_files_path>
    <format_schema_path>{escape(str(d / "format_schemas"))}/</format_schema_path>
    <users_config>{escape(str(d / "users.xml"))}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
"""
        users = f"""<?xml version="1.0"?>
<!-- written by toolclash.stack on every start; edits are lost -->
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <{self.user}>
            <password>{escape(self.state["password"])}</password>
            <networks><ip>{LOOPBACK}</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </{self.user}>
    </users>
    <quotas><default></default></quotas>
</yandex>
"""
        self.ctx.write_file(self.config_file, config)
        self.ctx.write_file(d / "users.xml", users)

    def start(self, deadline: float) -> None:
        binary = find_clickhouse_server()
        self.ctx.makedir(self.dir)
        if not self.state.get("password"):
            self.state.update(password=secrets.token_urlsafe(24), log=str(self.err_file))
            self.ctx.save()
        for attempt in range(PORT_ATTEMPTS):
            if time.monotonic() >= deadline:
                break
            tcp_port, http_port = _free_port(), _free_port()
            while http_port == tcp_port:
                http_port = _free_port()
            self._write_config(tcp_port, http_port)
            offset = _file_size(self.err_file)
            self.pid_file.unlink(missing_ok=True)
            result = self.ctx.run([binary, "--daemon", f"--config-file={self.config_file}",
                                   f"--pid-file={self.pid_file}"], timeout=deadline - time.monotonic(), cwd=self.dir)
            if result.returncode != 0:
                raise StackError(f"clickhouse-server failed to start (exit {result.returncode}): "
                                 f"{_tail(result.stderr + result.stdout, 3)}; see {self.err_file}")
            self.state.update(port=tcp_port, http_port=http_port, durable=True,
                              settings={"tcp_port": str(tcp_port), "http_port": str(http_port)})
            if self._wait_ready(deadline, offset):
                self.state["pid"] = self._pid()
                self.ctx.save()
                return
            log = _read_text(self.err_file, offset)
            if "Address already in use" not in log or attempt == PORT_ATTEMPTS - 1:
                self.stop()
                raise StackError(f"clickhouse-server did not become ready: {_tail(log, 3)}; see {self.err_file}")
        raise StackError(f"clickhouse-server did not become ready before the deadline; see {self.err_file}; "
                         "retry with a longer --timeout")

    def _wait_ready(self, deadline: float, offset: int) -> bool:
        """True once ``SELECT 1`` answers over the native protocol (and the database exists); False if the
        server exited (its error log says why)."""
        from clickhouse_driver import Client
        from clickhouse_driver.errors import Error as ClickHouseError

        spawned = time.monotonic()
        while time.monotonic() < deadline:
            if self._pid() is None:
                if "Address already in use" in _read_text(self.err_file, offset) or time.monotonic() - spawned > 15:
                    return False  # it exited (or never wrote its pid file)
                time.sleep(0.05)
                continue
            client = Client(host=LOOPBACK, port=self.state["port"], user=self.user, password=self.state["password"],
                            connect_timeout=2, send_receive_timeout=5)
            try:
                client.execute("SELECT 1")
                client.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")
                return True
            except (ClickHouseError, OSError, EOFError):
                time.sleep(0.05)
            finally:
                client.disconnect()
        return False

    def stop(self) -> bool:
        pid = self._pid()
        if pid is None:
            self.state["pid"] = None
            return False
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            limit = time.monotonic() + wait
            while time.monotonic() < limit:
                if self._pid() is None:
                    self.state["pid"] = None
                    return True
                time.sleep(0.05)
        raise StackError(f"could not stop clickhouse-server (pid {pid}); stop it by hand: kill -9 {pid}")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _is_zombie(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" in line.split()[1]
    except OSError:
        return False
    return False


def _port_free(port: int) -> bool:
    """Whether a server could listen on *port* of 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _port_comes_free(port: int, wait_s: float = 5.0) -> bool:
    """Whether *port* is free now or within *wait_s*: a server killed a moment ago may still hold it while the
    kernel tears its sockets down, and a restart on the same port keeps clients' URLs valid."""
    deadline = time.monotonic() + wait_s
    while not _port_free(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


class RedisService(Service):
    """A private Redis: 127.0.0.1 only, protected mode, a generated ``requirepass``, run as the stack's user.

    Not durable by default (no AOF, no RDB snapshots: a restart starts empty). ``durable=True`` turns on
    ``appendonly yes`` with ``appendfsync always``: every acknowledged write survives a crash of the server.
    A restart reuses the recorded port when it is still free, so clients' URLs stay valid.
    """

    name = "redis"
    env_var = "REDIS_URL"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def conf_file(self) -> Path:
        return self.dir / "redis.conf"

    def _pid(self) -> int | None:
        """pid of the redis-server serving *our* port, checked against its command line."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = self.state.get("pid") or 0
        if pid <= 0 or not _pid_alive(pid) or _is_zombie(pid):
            return None
        cmdline = _proc_cmdline(pid)
        port = self.state.get("port")
        if cmdline is not None and (b"redis" not in cmdline or f":{port}".encode() not in cmdline):
            return None
        return pid

    def is_running(self) -> bool:
        return self._pid() is not None

    def url(self, *, masked: bool = False) -> str | None:
        port, password = self.state.get("port"), self.state.get("password")
        if port is None or password is None:
            return None
        return f"redis://:{'***' if masked else password}@{LOOPBACK}:{port}/0"

    def notes(self) -> list[str]:
        if self.state.get("durable") is False:
            return ["non-durable: appendonly no, no RDB snapshots (a restart starts empty; for persistence "
                    "use your own REDIS_URL or a durable stack, Stack(..., durable=True))"]
        return []

    def _settings(self, port: int) -> dict[str, str]:
        settings = {
            "bind": LOOPBACK,
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "yes",
            "pidfile": str(self.pid_file),
            "logfile": str(self.log_file),
            "dir": str(self.data_dir),
            "maxclients": "4000",
            "save": '""',
            "appendonly": "no",
        }
        if self.ctx.durable:
            settings.update({"appendonly": "yes", "appendfsync": "always"})
        return settings

    def _binary(self) -> str:
        found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server",
                                                                                      os.X_OK) else None)
        if found is None:
            raise StackError("redis-server not found; install it: apt-get install -y redis-server "
                             "(or run `make setup`)")
        return found

    def start(self, deadline: float) -> None:
        binary = self._binary()
        self.ctx.makedir(self.dir)
        self.ctx.makedir(self.data_dir)
        if not self.state.get("password"):
            self.state.update(password=secrets.token_urlsafe(24), log=str(self.log_file))
            self.ctx.save()
        recorded = self.state.get("port")
        last_port = 0
        for attempt in range(PORT_ATTEMPTS):
            if time.monotonic() >= deadline:
                raise StackError(f"Redis did not start before the deadline: {_tail(_read_text(self.log_file))}; "
                                 "retry with a longer --timeout")
            last_port = recorded if attempt == 0 and recorded and _port_comes_free(recorded) else _free_port()
            settings = self._settings(last_port)
            lines = ["# written by toolclash.stack on every start; edits are lost"]
            lines += [f"{key} {value}" if value else f'{key} ""' for key, value in settings.items()]
            lines.append(f"requirepass {self.state['password']}")
            self.ctx.write_file(self.conf_file, "\n".join(lines) + "\n")
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            self.pid_file.unlink(missing_ok=True)
            result = self.ctx.run([binary, self.conf_file], timeout=deadline - time.monotonic(), cwd=self.dir)
            self.state.update(port=last_port)
            if result.returncode == 0 and self._wait_ready(deadline, offset):
                break
            log = _read_text(self.log_file, offset) + result.stderr + result.stdout
            if "Address already in use" in log:
                continue
            raise StackError(f"Redis failed to start (exit {result.returncode}): {_tail(log)}; see {self.log_file}")
        else:
            raise StackError(f"Redis could not bind a free port on {LOOPBACK} after {PORT_ATTEMPTS} attempts "
                             f"(last {last_port}); retry")
        self.state.update(pid=self._pid(), durable=self.ctx.durable,
                          settings={"appendonly": settings["appendonly"], "appendfsync": settings.get("appendfsync",
                                                                                                    "-"),
                                    "bind": LOOPBACK, "protected-mode": "yes"})
        self.ctx.save()

    def _wait_ready(self, deadline: float, log_offset: int) -> bool:
        """True once the server answers an authenticated PING; False if it exited (e.g. port taken)."""
        import redis  # local import: nothing at import time

        client = redis.Redis(host=LOOPBACK, port=self.state["port"], password=self.state["password"],
                             socket_timeout=2, socket_connect_timeout=2)
        try:
            while True:
                try:
                    if client.ping():
                        return True
                except redis.AuthenticationError as exc:
                    raise StackError(f"Redis on port {self.state['port']} rejected the recorded password; "
                                     f"remove {self.ctx.root} to start afresh") from exc
                except redis.RedisError:
                    pass
                log = _read_text(self.log_file, log_offset)
                if "Address already in use" in log or "Could not create server TCP listening socket" in log:
                    return False
                if time.monotonic() >= deadline:
                    raise StackError(f"Redis did not become ready before the deadline: "
                                     f"{_tail(_read_text(self.log_file, log_offset))}; retry with a longer --timeout")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> bool:
        """SIGTERM (Redis shuts down cleanly, flushing the AOF when on), SIGKILL after 30 s."""
        pid = self._pid()
        self.state["pid"] = None
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        limit = time.monotonic() + 30
        while time.monotonic() < limit:
            if not _pid_alive(pid) or _is_zombie(pid):
                return True
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        return True

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests): no shutdown, no final flush."""
        pid = self._pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            limit = time.monotonic() + 10
            while time.monotonic() < limit and _pid_alive(pid) and not _is_zombie(pid):
                time.sleep(0.02)
        self.state["pid"] = None


class PgBouncerService(Service):
    """Debian's PgBouncer in front of the stack's own PostgreSQL (the ``postgres`` service), 127.0.0.1 only.

    Two pooled databases point at the same PostgreSQL database: ``toolclash`` in session mode and
    ``toolclash_tx`` in transaction mode (choose the pool mode by the database name in the URL).
    ``default_pool_size = 20`` server connections per database and user, ``max_client_conn = 2000``.
    Clients log in with the PostgreSQL user's password: the auth file holds its SCRAM secret (read
    from ``pg_authid``, never the plain password), with which PgBouncer also logs in to PostgreSQL.
    ``toolclash`` is admin and stats user of the console (database ``pgbouncer``: SHOW POOLS,
    SHOW STATS, SET query_wait_timeout = …).  Starts after ``postgres``; fails clearly without it.
    """

    name = "pgbouncer"
    env_var = "PGBOUNCER_URL"
    upstream = "postgres"
    user = PostgresService.user
    database = PostgresService.database
    TRANSACTION_SUFFIX = "_tx"
    """``<database>_tx`` is the same database pooled in transaction mode."""
    DEFAULT_POOL_SIZE = 20
    MAX_CLIENT_CONN = 2000
    QUERY_WAIT_TIMEOUT_S = 120
    BINARY = "/usr/sbin/pgbouncer"

    @property
    def config_file(self) -> Path:
        return self.dir / "pgbouncer.ini"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pgbouncer.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "pgbouncer.log"

    def _binary(self) -> str:
        found = self.BINARY if os.access(self.BINARY, os.X_OK) else shutil.which("pgbouncer")
        if not found:
            raise StackError("pgbouncer not found; install it: apt-get install -y pgbouncer  (or run `make setup`)")
        return found

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid <= 0 or not _pid_alive(pid):
            return None
        cmdline = _proc_cmdline(pid)
        if cmdline is not None and os.fsencode(self.config_file) not in cmdline.split(b"\0"):
            return None  # stale pid file whose pid now belongs to another process
        return pid

    def is_running(self) -> bool:
        return self._pid() is not None

    def url(self, *, masked: bool = False) -> str | None:
        port, password = self.state.get("port"), self.state.get("password")
        if port is None or password is None:
            return None
        return f"postgresql://{self.user}:{'***' if masked else password}@{LOOPBACK}:{port}/{self.database}"

    def notes(self) -> list[str]:
        upstream = self.state.get("upstream_port")
        return [f"pools PostgreSQL at {LOOPBACK}:{upstream}: database {self.database} in session mode, "
                f"{self.database}{self.TRANSACTION_SUFFIX} in transaction mode, default_pool_size "
                f"{self.DEFAULT_POOL_SIZE}, max_client_conn {self.MAX_CLIENT_CONN}"] if upstream else []

    def _upstream_state(self) -> dict[str, Any]:
        """The ``postgres`` service's record (port, password) from this state dir's stack.json."""
        try:
            state = json.loads((self.ctx.root / STATE_FILE).read_text(encoding="utf-8"))
            pg = state["services"][self.upstream]
        except (OSError, ValueError, KeyError, TypeError):
            pg = {}
        if not pg.get("port") or not pg.get("password") or not PostgresService(self.ctx, pg).is_running():
            raise StackError(
                f"pgbouncer fronts the stack's own PostgreSQL, which is not running in {self.ctx.root}; "
                "start both (services postgres then pgbouncer), or give PGBOUNCER_URL for your own PgBouncer"
            )
        return dict(pg)

    def _scram_secret(self, pg: dict[str, Any]) -> str:
        import psycopg2  # local import: nothing at import time

        try:
            conn = psycopg2.connect(host=LOOPBACK, port=pg["port"], user=self.user, password=pg["password"],
                                    dbname="postgres", connect_timeout=5)
        except psycopg2.OperationalError as exc:
            raise StackError(f"pgbouncer: cannot read the login secret from PostgreSQL: "
                             f"{str(exc).strip().splitlines()[0]}") from None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (self.user,))
                row = cur.fetchone()
        finally:
            conn.close()
        if row is None or not str(row[0] or "").startswith("SCRAM-SHA-256$"):
            raise StackError(f"pgbouncer: PostgreSQL user {self.user} has no SCRAM password; "
                             f"remove {self.ctx.root} to start afresh")
        return str(row[0])

    def _config(self, port: int, upstream_port: int) -> str:
        target = f"host={LOOPBACK} port={upstream_port} dbname={self.database}"
        lines = [
            "; written by toolclash.stack on every start; edits are lost",
            "[databases]",
            f"{self.database} = {target}",
            f"{self.database}{self.TRANSACTION_SUFFIX} = {target} pool_mode=transaction",
            "",
            "[pgbouncer]",
            f"listen_addr = {LOOPBACK}",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {self.dir / 'userlist.txt'}",
            f"admin_users = {self.user}",
            f"stats_users = {self.user}",
            "pool_mode = session",
            f"default_pool_size = {self.DEFAULT_POOL_SIZE}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            f"max_client_conn = {self.MAX_CLIENT_CONN}",
            f"query_wait_timeout = {self.QUERY_WAIT_TIMEOUT_S}",
            "server_reset_query = DISCARD ALL",
            "server_login_retry = 1",
            f"logfile = {self.log_file}",
            f"pidfile = {self.pid_file}",
            "log_connections = 0",
            "log_disconnections = 0",
            "stats_period = 10",
        ]
        return "\n".join(lines) + "\n"

    def start(self, deadline: float) -> None:
        binary = self._binary()
        pg = self._upstream_state()
        self.ctx.makedir(self.dir)
        secret = self._scram_secret(pg)
        self.ctx.write_file(self.dir / "userlist.txt", f'"{self.user}" "{secret}"\n')
        self.state.update(password=pg["password"], upstream_port=pg["port"], log=str(self.log_file))
        last_port = 0
        for _attempt in range(PORT_ATTEMPTS):
            if time.monotonic() >= deadline:
                self._raise_deadline()
            last_port = _free_port()
            self.ctx.write_file(self.config_file, self._config(last_port, int(pg["port"])))
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = self.ctx.run([binary, "-d", "-q", self.config_file], timeout=deadline - time.monotonic(),
                                  cwd=self.dir)
            if result.returncode == 0 and self._wait_ready(last_port, deadline):
                break
            log = _read_text(self.log_file, offset) + result.stderr + result.stdout
            self.stop()
            if "Address already in use" in log or "could not bind" in log.lower():
                continue
            raise StackError(f"PgBouncer failed to start (exit {result.returncode}): {_tail(log)}; "
                             f"see {self.log_file}")
        else:
            raise StackError(
                f"PgBouncer could not bind a free port on {LOOPBACK} after {PORT_ATTEMPTS} attempts "
                f"(last {last_port}): ports are being taken by other processes; retry"
            )
        self.state.update(port=last_port, pid=self._pid(), settings={
            "pool_mode": "session", f"pool_mode[{self.database}{self.TRANSACTION_SUFFIX}]": "transaction",
            "default_pool_size": str(self.DEFAULT_POOL_SIZE), "max_client_conn": str(self.MAX_CLIENT_CONN),
            "query_wait_timeout": str(self.QUERY_WAIT_TIMEOUT_S)})
        self.ctx.save()

    def _wait_ready(self, port: int, deadline: float) -> bool:
        """True once the admin console answers; False if the daemon died (e.g. port taken)."""
        import psycopg2

        grace = time.monotonic() + 1.0  # the daemon writes its pid file just after forking
        while time.monotonic() < deadline:
            try:
                conn = psycopg2.connect(host=LOOPBACK, port=port, user=self.user, password=self.state["password"],
                                        dbname="pgbouncer", connect_timeout=2)
            except psycopg2.OperationalError as exc:
                if "password authentication failed" in str(exc) or "SASL" in str(exc):
                    raise StackError(f"PgBouncer rejected the stack's password: {str(exc).strip().splitlines()[0]}; "
                                     f"see {self.log_file}") from None
                if not self.is_running() and time.monotonic() > grace:
                    return False  # the daemon exited (its log says why)
                time.sleep(0.05)
                continue
            conn.close()
            return True
        self._raise_deadline()

    def _raise_deadline(self) -> NoReturn:
        self.stop()
        raise StackError(f"PgBouncer did not become ready before the deadline (see {self.log_file}): "
                         f"{_tail(_read_text(self.log_file))}; retry with a longer --timeout")

    def stop(self) -> bool:
        pid = self._pid()
        self.state["pid"] = None
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # immediate shutdown (SIGINT would wait for every client)
        limit = time.monotonic() + 10
        while time.monotonic() < limit:
            if not _pid_alive(pid):
                return True
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Server processes started by this process (kept so they are reaped, not warned about, when stopped)."""


class PrometheusService(Service):
    """A private Prometheus (Debian's 2.42) on a free port with its own data dir.

    Its configuration is ``prometheus/prometheus.yml`` with the ``toolclash`` job pointed at
    ``127.0.0.1:<scrape_port>`` (a port picked free at start and recorded in the state: the Locust
    master reads it from Prometheus's loaded configuration and serves its exporter there), the
    ``postgres``, ``pgbouncer`` and ``redis`` jobs each at another free port (where the master starts
    Debian's exporter for that server against the run's DATABASE_URL, PGBOUNCER_URL, REDIS_URL), the
    compose-only ``clickhouse`` job dropped, and 1-second
    scrape and rule intervals, so that short runs are seen; the alert rules are ``prometheus/alerts.yml``.
    """

    name = "prometheus"
    env_var = "PROMETHEUS_URL"
    READY_PATH = "/-/ready"
    SERVER_EXPORTER_JOBS: ClassVar[tuple[str, ...]] = ("postgres", "pgbouncer", "redis")
    """Jobs of prometheus.yml kept with a free 127.0.0.1 port: the run starts that exporter there (users/observe.py)."""

    @property
    def log_file(self) -> Path:
        return self.dir / "prometheus.log"

    @staticmethod
    def repo_dir() -> Path:
        return Path(__file__).resolve().parent.parent / "prometheus"

    def _binary(self) -> str:
        found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK)
                                               else None)
        if not found:
            raise StackError("prometheus not found; install it: apt-get install -y prometheus  (or `make setup`)")
        return found

    def config(self, scrape_port: int) -> str:
        """The embedded configuration: the repository's file, with this stack's target, rules and intervals."""
        import yaml

        src = self.repo_dir() / "prometheus.yml"
        try:
            conf = yaml.safe_load(src.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise StackError(f"cannot read {src} ({exc}); restore it from git") from exc
        conf["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
        conf["rule_files"] = [str(self.dir / Path(rule).name) for rule in conf.get("rule_files", [])]
        ports = self.state.setdefault("exporter_ports", {})
        jobs = []
        for job in conf["scrape_configs"]:
            name = job["job_name"]
            if name == "toolclash":
                port = scrape_port
            elif name in self.SERVER_EXPORTER_JOBS:
                port = ports.setdefault(name, _free_port())
                # the server's own figures: less often, yet twice within a short test run's exporter lifetime
                # (rate() needs two samples: at 5 s a 10 s run sometimes left the server panels empty)
                job["scrape_interval"] = job["scrape_timeout"] = "2s"
            else:
                continue  # a compose-only job
            job["static_configs"] = [{"targets": [f"{LOOPBACK}:{port}"]}]
            jobs.append(job)
        conf["scrape_configs"] = jobs
        return yaml.safe_dump(conf, sort_keys=False)

    def _pid(self) -> int | None:
        pid = self.state.get("pid")
        if not pid or not _pid_alive(int(pid)):
            return None
        cmdline = _proc_cmdline(int(pid))
        if cmdline is not None and os.fsencode(f"--storage.tsdb.path={self.dir / 'data'}") not in cmdline.split(b"\0"):
            return None
        return int(pid)

    def is_running(self) -> bool:
        return self._pid() is not None

    def url(self, *, masked: bool = False) -> str | None:
        port = self.state.get("port")
        return f"http://{LOOPBACK}:{port}" if port else None

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["settings"] = {"scrape_port": self.state.get("scrape_port")} if out["running"] else {}
        return out

    def start(self, deadline: float) -> None:
        binary = self._binary()
        self.ctx.makedir(self.dir)
        self.ctx.makedir(self.dir / "data")
        for rule in ("alerts.yml",):
            self.ctx.write_file(self.dir / rule, (self.repo_dir() / rule).read_text(encoding="utf-8"), 0o644)
        scrape_port = self.state.get("scrape_port") or _free_port()
        self.ctx.write_file(self.dir / "prometheus.yml", self.config(scrape_port), 0o644)
        for _attempt in range(PORT_ATTEMPTS):
            port = _free_port()
            argv = [binary, f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address={LOOPBACK}:{port}",
                    "--storage.tsdb.retention.time=7d", "--web.enable-lifecycle"]
            extra: dict[str, Any] = {}
            if self.ctx.run_as is not None:
                extra = {"user": self.ctx.run_as.uid, "group": self.ctx.run_as.gid, "extra_groups": []}
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            with open(self.log_file, "ab") as logfh:
                proc = subprocess.Popen(argv, cwd=self.dir, env=self.ctx.child_env(), stdin=subprocess.DEVNULL,
                                        stdout=logfh, stderr=logfh, start_new_session=True, **extra)
            _CHILDREN[proc.pid] = proc
            self.state.update(pid=proc.pid, port=port, scrape_port=scrape_port, log=str(self.log_file))
            self.ctx.save()
            if self._wait_ready(proc, deadline):
                return
            log = _read_text(self.log_file, offset)
            if "address already in use" in log:
                continue
            self.stop()
            raise StackError(f"Prometheus did not start: {_tail(log)}; see {self.log_file}")
        raise StackError(f"Prometheus could not bind a free port on {LOOPBACK} after {PORT_ATTEMPTS} attempts; retry")

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once Prometheus answers ready; False if it exited."""
        import urllib.error
        import urllib.request

        base = self.url()
        while True:
            if proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{base}{self.READY_PATH}", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise StackError(f"Prometheus did not become ready before the deadline: "
                                 f"{_tail(_read_text(self.log_file))}; see {self.log_file}")
            time.sleep(0.05)

    def stop(self) -> bool:
        pid = self._pid()
        if pid is None:
            self.state["pid"] = None
            return False
        os.kill(pid, signal.SIGTERM)
        child = _CHILDREN.pop(pid, None)
        limit = time.monotonic() + 30
        while time.monotonic() < limit and _pid_alive(pid):
            if child is not None and child.poll() is not None:
                break
            time.sleep(0.05)
        if _pid_alive(pid) and (child is None or child.poll() is None):
            os.kill(pid, signal.SIGKILL)
            if child is not None:
                child.wait(10)
        self.state["pid"] = None
        return True


SERVICES: dict[str, type[Service]] = {
    "postgres": PostgresService,
    "auth_postgres": AuthPostgresService,
    "pgbouncer": PgBouncerService,  # after postgres: it reads that server's port and password
    "clickhouse": ClickHouseService,
    "redis": RedisService,
    "prometheus": PrometheusService,
}


# ---------------------------------------------------------------------------------------------- stack


class Stack:
    """Private servers in one state dir; ``with Stack() as stack:`` starts and stops them.

    ``state_dir=None`` uses a fresh private temp dir (created on first use, removed by ``down()``).
    A given state dir is kept by ``down()`` (data survives for the next ``up()``).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        services: Sequence[str] = ("postgres",),
        durable: bool = False,
        listen: Sequence[str] = (),
    ) -> None:
        unknown = [name for name in services if name not in SERVICES]
        if unknown:
            raise StackError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
        self._given = Path(state_dir).absolute() if state_dir is not None else None
        self._temp_dir: Path | None = None
        self._services = list(dict.fromkeys(services))
        self.durable = durable
        self.listen = tuple(listen)
        for address in self.listen:
            try:
                socket.inet_aton(address)
            except OSError:
                raise StackError(f"--listen {address!r} is not an IPv4 address of this host") from None

    # -- state dir ------------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """The state dir (a temp dir is created on first access when none was given)."""
        if self._given is not None:
            return self._given
        if self._temp_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="toolclash-stack-")).resolve()
        return self._temp_dir

    def _existing_dir(self) -> Path | None:
        """The state dir if it exists, without creating a temp dir."""
        path = self._given if self._given is not None else self._temp_dir
        return path if path is not None and path.is_dir() else None

    def _prepare_dir(self, run_as: RunAs | None) -> Path:
        root = self.state_dir
        created = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StackError(f"cannot create state dir {root}: {exc.strerror}; choose another --dir") from exc
        root = root.resolve()
        if run_as is not None:
            _check_traversable(root, run_as)
            ours = (
                created or root == self._temp_dir or (root / STATE_FILE).exists() or not any(root.iterdir())
            )
            if ours:
                os.chmod(root, 0o700)
                os.chown(root, run_as.uid, run_as.gid)
            else:
                _check_traversable(root / STATE_FILE, run_as)
        return root

    @staticmethod
    def _load(root: Path) -> dict[str, Any]:
        path = root / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": _STATE_VERSION, "services": {}}
        except (OSError, ValueError) as exc:
            raise StackError(
                f"cannot read {path} ({exc}); fix or remove it (and the servers' data with it)"
            ) from exc
        if not isinstance(state, dict) or not isinstance(state.get("services"), dict):
            raise StackError(f"{path} is not a toolclash stack state file; remove it or use another --dir")
        return state

    @contextlib.contextmanager
    def _locked(self, root: Path, run_as: RunAs | None) -> Iterator[None]:
        """Serialise up/down on one state dir across processes."""
        lock_path = root / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if run_as is not None:
                os.fchown(fd, run_as.uid, run_as.gid)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open(
        self, root: Path, state: dict[str, Any], run_as: RunAs | None, names: Sequence[str]
    ) -> list[Service]:
        ctx = ServiceContext(root, run_as, self.durable, save=lambda: self._save(ctx, state), listen=self.listen)
        return [
            SERVICES[name](ctx, state["services"].setdefault(name, {})) for name in names if name in SERVICES
        ]

    @staticmethod
    def _save(ctx: ServiceContext, state: dict[str, Any]) -> None:
        ctx.write_file(ctx.root / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None and self._given is None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    # -- public API -----------------------------------------------------------------------------------

    def up(self, timeout: float = 60.0) -> dict[str, str]:
        """Start the services not already running, wait (until ``timeout`` s) for readiness; return env()."""
        deadline = time.monotonic() + timeout
        started: list[Service] = []
        services: list[Service] = []
        try:
            run_as = _resolve_run_as()
            root = self._prepare_dir(run_as)
            with self._locked(root, run_as):
                state = self._load(root)
                user = state.get("user")
                if run_as is not None and user and user != run_as.name:
                    with contextlib.suppress(KeyError):  # keep the user that owns the existing data
                        pw = pwd.getpwnam(user)
                        run_as = RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
                state["user"] = run_as.name if run_as is not None else pwd.getpwuid(os.geteuid()).pw_name
                services = self._open(root, state, run_as, self._services)
                for service in services:
                    if service.is_running():
                        continue
                    started.append(service)
                    service.start(deadline)
                    service.ctx.save()
                return {k: v for service in services for k, v in service.env().items()}
        except BaseException:
            for service in reversed(started):  # leave nothing half-started behind
                with contextlib.suppress(Exception):
                    service.stop()
                    service.ctx.save()
            if not any(service.is_running() for service in services):
                self._remove_temp_dir()
            raise

    def down(self) -> None:
        """Stop what this state dir's stack.json records as started; remove a temp state dir.  Idempotent."""
        root = self._existing_dir()
        if root is None:
            self._temp_dir = None
            return
        if (root / STATE_FILE).exists():
            state = self._load(root)
            run_as = None
            if os.geteuid() == 0:
                user = state.get("user")
                try:
                    pw = pwd.getpwnam(user) if user else None
                except KeyError:
                    pw = None
                run_as = RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir) if pw else _resolve_run_as()
            with self._locked(root, run_as):
                state = self._load(root)
                services = self._open(root, state, run_as, list(state["services"]))
                for service in reversed(services):
                    service.stop()
                    service.ctx.save()
        self._remove_temp_dir()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per service: running, pid, port, url (password masked), log, settings of note, notes."""
        root = self._existing_dir()
        state = self._load(root) if root is not None else {"services": {}}
        names = list(dict.fromkeys([*self._services, *state["services"]]))
        services = self._open(root or self.state_dir_hint(), state, None, names)
        return {service.name: service.status() for service in services}

    def env(self) -> dict[str, str]:
        """Client environment (real passwords), e.g. ``{"DATABASE_URL": "postgresql://..."}``."""
        root = self._existing_dir()
        state = self._load(root) if root is not None else {"services": {}}
        services = self._open(root or self.state_dir_hint(), state, None, self._services)
        return {k: v for service in services for k, v in service.env().items()}

    def state_dir_hint(self) -> Path:
        """The state dir path for messages, without creating anything."""
        return self._given or self._temp_dir or Path(tempfile.gettempdir()) / "toolclash-stack-(not created)"

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"Stack(state_dir={str(self.state_dir_hint())!r}, services={self._services!r})"


# ------------------------------------------------------------------------------------------------ CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"toolclash.stack: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m toolclash.stack",
        description="Private local servers (PostgreSQL) on free ports on 127.0.0.1, for runs and tests.",
        epilog='Typical use: up, then eval "$(python -m toolclash.stack env)", ..., down.',
    )
    parser.add_argument(
        "command",
        choices=("up", "down", "status", "env"),
        help="up: start and print URLs (password masked); down: stop what `up` started; "
        "status: table of services; env: `export VAR='...'` lines with real passwords",
    )
    parser.add_argument(
        "--dir",
        default=DEFAULT_CLI_DIR,
        help=f"state dir holding data, logs and {STATE_FILE} (default: ./{DEFAULT_CLI_DIR})",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="keep fsync, synchronous_commit and full_page_writes on (default: off, faster)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds `up` waits for readiness (default 60)"
    )
    parser.add_argument(
        "--service",
        action="append",
        choices=sorted(SERVICES),
        help="service to start (repeat for several; default: postgres); env and status cover what runs",
    )
    parser.add_argument(
        "--listen", action="append", default=[], metavar="ADDR",
        help="also listen on this IPv4 address of the host, for workers on other hosts (PostgreSQL; "
        "clients on that address's subnet log in with the password); repeatable",
    )
    return parser


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _print_status(stack: Stack, status: dict[str, dict[str, Any]]) -> None:
    print(f"state dir: {stack.state_dir_hint()}")
    rows = [("SERVICE", "RUNNING", "PID", "PORT", "URL")]
    for name, info in status.items():
        rows.append(
            (
                name,
                "yes" if info["running"] else "no",
                str(info["pid"] or "-"),
                str(info["port"] or "-"),
                info["url"] or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    for name, info in status.items():
        for note in info["notes"]:
            print(f"{name}: {note}")
        if info["log"]:
            print(f"{name}: log {info['log']}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 on any StackError, printed as one line)."""
    args = _build_parser().parse_args(argv)
    try:
        services = args.service or ["postgres"]
        if args.command == "env" and not args.service:  # every service the state dir records as started
            root = Path(args.dir)
            recorded = Stack._load(root.absolute())["services"] if root.is_dir() else {}
            services = [name for name, st in recorded.items() if st.get("pid")] or services
        stack = Stack(args.dir, services=services, durable=args.durable, listen=args.listen)
        if args.command == "up":
            stack.up(timeout=args.timeout)
            status = stack.status()
            for name, info in status.items():
                print(f"{name}: {info['url']}")
                for note in info["notes"]:
                    print(f"{name}: {note}")
            print(f'use: eval "$(python -m toolclash.stack env --dir {stack.state_dir_hint()})"')
        elif args.command == "down":
            stack.down()
            print(f"stopped the stack in {stack.state_dir_hint()}")
        elif args.command == "status":
            _print_status(stack, stack.status())
        else:
            for key, value in stack.env().items():
                print(f"export {key}={_shell_quote(value)}")
    except StackError as exc:
        print(f"toolclash.stack: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
