"""The stack's PostgreSQL clusters: the main one (``DATABASE_URL``) and the auth service's (``AUTH_DATABASE_URL``).

initdb runs as the stack's unprivileged OS user (when root), ``pg_ctl`` starts and stops the server, and
its settings are rewritten into ``toolclash.conf`` (included by postgresql.conf) on every start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import ClassVar

from toolclash.option import mask_url
from toolclash.stack.daemon import Launched, Service, ServiceContext
from toolclash.stack.process import (
    LOOPBACK,
    STATE_FILE,
    StackError,
    pid_alive,
    proc_cwd,
    tail,
    terminate,
)

PG_BINARIES = ("initdb", "pg_ctl", "postgres")
STOP_MODES = ("smart", "fast", "immediate")
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
"""What ``pg_ctl stop -m MODE`` sends the postmaster (used when the binaries are gone)."""


def _version_key(bindir: str) -> tuple[int, ...]:
    name = Path(bindir).parent.name
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def find_pg_bindir() -> Path:
    """Dir holding initdb, pg_ctl and postgres: ``pg_config --bindir``, else newest /usr/lib/postgresql/*/bin."""
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
        if all(os.access(Path(cand, exe), os.X_OK) for exe in PG_BINARIES):
            return Path(cand)
    missing = next((exe for exe in PG_BINARIES if not any(Path(c, exe).exists() for c in candidates)), "initdb")
    raise StackError(
        f"PostgreSQL server binaries not found ({missing}); install them: "
        "apt-get install -y postgresql  (or run `make setup`)"
    )


def _shell_safe_path(path: Path) -> None:
    # pg_ctl passes -D and -l through /bin/sh inside double quotes
    bad = set('"$`\\\n') & set(str(path))
    if bad:
        raise StackError(
            f"path {path} contains characters pg_ctl cannot quote ({''.join(sorted(bad))}); "
            "use a plain directory name for --dir"
        )


class PostgresService(Service):
    """A private PostgreSQL cluster: superuser and database ``toolclash``, scram password, 127.0.0.1 only."""

    name = "postgres"
    env_var = "DATABASE_URL"
    title = "PostgreSQL"
    user = "toolclash"
    database = "toolclash"
    EXIT_GRACE_S = 0.0  # pg_ctl -w returns once the server is up: gone after that means it exited
    STOP_WAIT_S = 60.0

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
    HBA_MARK = "# toolclash.stack: clients of other hosts (rewritten on every start)"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    # -- state --------------------------------------------------------------------------------------

    def owns(self, pid: int, cmdline: bytes) -> bool:
        """The postmaster of *our* data dir: named by ``-D`` (pg_ctl), or its working dir (the postmaster
        chdirs there: a cluster started another way, e.g. pg_ctlcluster, has no ``-D`` of it)."""
        return os.fsencode(self.data_dir) in cmdline.split(b"\0") or proc_cwd(pid) == self.data_dir

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
        if recorded and all(os.access(Path(recorded, exe), os.X_OK) for exe in PG_BINARIES):
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

    # -- start --------------------------------------------------------------------------------------

    def prepare(self, deadline: float) -> None:
        _shell_safe_path(self.data_dir)
        self._initdb(self._bindir(), deadline)

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
                f"initdb failed (exit {result.returncode}): {tail(result.stderr + result.stdout, 3)}; "
                f"fix the cause above, then retry `up` (data dir {data})"
            )
        with (data / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write(
                "\n# settings of the toolclash stack, rewritten on every start\ninclude 'toolclash.conf'\n"
            )
        self.state.update(initialized=True, phase="initialized")
        self.ctx.save()

    def configure(self, port: int) -> None:
        settings = self._settings(port)
        lines = ["# written by toolclash.stack on every start; edits are lost"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        self.ctx.write_file(self.data_dir / "toolclash.conf", "\n".join(lines) + "\n")
        # With --listen, hosts on the listen addresses' own subnets (samenet) may log in, with the password.
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8").split("\n" + self.HBA_MARK)[0].rstrip("\n") + "\n"
        if self.ctx.listen:
            text += f"\n{self.HBA_MARK}\nhost all all samenet scram-sha-256\n"
        self.ctx.write_file(hba, text)
        self.state.update(port=port, listen=list(self.ctx.listen), durable=self.ctx.durable,
                          settings={k: v.strip("'") for k, v in settings.items()})

    def launch(self, deadline: float) -> Launched:
        """``pg_ctl start -w``: returns once the server accepts connections (or failed)."""
        wait = max(1, int(deadline - time.monotonic()))
        cmd: list[str | os.PathLike[str]] = [self._bindir() / "pg_ctl", "start", "-D", self.data_dir,
                                             "-l", self.log_file, "-w", "-t", str(wait), "-s"]
        result = self.ctx.run(cmd, timeout=wait + 15, cwd=self.dir)
        return Launched(result.returncode == 0, result.stderr + result.stdout, f"pg_ctl exit {result.returncode}")

    def probe(self) -> bool:
        """Log in (database ``postgres``) and create the database ``toolclash`` if missing."""
        import psycopg2  # local import: nothing at import time, and only this service needs it

        try:
            conn = psycopg2.connect(host=LOOPBACK, port=self.state["port"], user=self.user,
                                    password=self.state["password"], dbname="postgres", connect_timeout=2)
        except psycopg2.OperationalError as exc:
            self.last_probe_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            if "password authentication failed" in self.last_probe_error:
                raise StackError(
                    f"PostgreSQL rejected the password recorded in {self.ctx.root / STATE_FILE}; "
                    f"remove {self.ctx.root} to start afresh"
                ) from exc
            return False
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()
        return True

    def abort(self) -> None:
        with contextlib.suppress(StackError, OSError):
            self.stop("immediate")

    # -- stop ---------------------------------------------------------------------------------------

    def check_mode(self, mode: str) -> None:
        if mode not in STOP_MODES:
            raise StackError(f"PostgreSQL has no stop mode {mode!r}; use one of {', '.join(STOP_MODES)}")

    def stop(self, mode: str = "fast") -> bool:
        """``pg_ctl stop -m MODE`` (fast: roll back sessions, checkpoint; immediate: no checkpoint, crash
        recovery at the next start; smart: wait for every session to end); the signal when pg_ctl is gone."""
        self.check_mode(mode)
        pid = self.pid()
        self.state["pid"] = None
        if pid is None:
            return False
        self._continue(pid)  # a paused postmaster would not act on pg_ctl's signal
        bindir: Path | None
        try:
            bindir = self._bindir()
        except StackError:
            bindir = None
        if bindir is not None and os.access(bindir / "pg_ctl", os.X_OK):
            result = self.ctx.run(
                [bindir / "pg_ctl", "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "60", "-s"],
                timeout=75,
                cwd=self.dir,
            )
            if result.returncode == 0 or not pid_alive(pid):
                return True
            why = tail(result.stderr + result.stdout, 2)
        else:  # binaries gone: pg_ctl's signal to the postmaster, by hand
            sig = _STOP_SIGNALS[mode]
            if terminate(pid, lambda: self.is_ours(pid), ((sig, self.STOP_WAIT_S),)):
                return True
            why = f"still running {self.STOP_WAIT_S:.0f}s after {signal.Signals(sig).name}"
        raise StackError(
            f"could not stop PostgreSQL (pid {pid}, data {self.data_dir}): {why}; "
            f"stop it by hand: kill -INT {pid}"
        )


class AuthPostgresService(PostgresService):
    """A second private PostgreSQL cluster: the auth service's database (cross-service scenario)."""

    name = "auth_postgres"
    env_var = "AUTH_DATABASE_URL"


class LocalCluster(PostgresService):
    """A PostgreSQL cluster of this machine that no stack records, found by its data dir (fault injection on
    a local server of the user's own): what ``pg_ctl`` does with that data dir (stop, start as configured,
    crash, pause), run as the data dir's owner.  No initdb, no settings, no password: ready is what
    ``pg_ctl start -w`` says."""

    def __init__(self, ctx: ServiceContext, data_dir: Path, port: int) -> None:
        super().__init__(ctx, {"port": port})
        self._data_dir = data_dir

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def dir(self) -> Path:
        return self._data_dir.parent

    @property
    def log_file(self) -> Path:
        """The stack's log next to the data dir when there is one, else ``restart.log`` in it."""
        log = self._data_dir.parent / "postgres.log"
        return log if log.exists() else self._data_dir / "restart.log"

    def url(self, *, masked: bool = False) -> str | None:
        return None

    def prepare(self, deadline: float) -> None:
        raise StackError(f"the PostgreSQL cluster in {self._data_dir} is not one of the stack's: it can be "
                         "stopped and started again, not set up")

    def probe(self) -> bool:
        return True
