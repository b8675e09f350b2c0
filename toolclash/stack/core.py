"""``Stack``: the private servers of one state dir, and ``SERVICES``, every kind of server it can run.

A state dir holds each service's data and logs and ``stack.json`` (the record of what this stack started,
including the generated passwords; mode 0600).  Reopening ``Stack(state_dir=same_dir)`` in another process
sees the running services; ``up`` and ``down`` (and :meth:`Stack.service`) hold the dir's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from toolclash.stack.clickhouse import ClickHouseService
from toolclash.stack.daemon import Service, ServiceContext
from toolclash.stack.pgbouncer import PgBouncerService
from toolclash.stack.platform import PlatformService, RacyPlatformService
from toolclash.stack.postgres import AuthPostgresService, PostgresService
from toolclash.stack.process import (
    LOCK_FILE,
    STATE_FILE,
    RunAs,
    StackError,
    check_traversable,
    recorded_run_as,
    resolve_run_as,
)
from toolclash.stack.prometheus import PrometheusService
from toolclash.stack.redis import RedisService

_STATE_VERSION = 1

SERVICES: dict[str, type[Service]] = {
    "postgres": PostgresService,
    "auth_postgres": AuthPostgresService,
    "pgbouncer": PgBouncerService,  # after postgres: it reads that server's port and password
    "clickhouse": ClickHouseService,
    "redis": RedisService,
    "prometheus": PrometheusService,
    "platform": PlatformService,  # the example platform (examples/platform), after postgres: it keeps its tables there
    "platform_racy": RacyPlatformService,
}


def load_state(root: Path) -> dict[str, Any]:
    """The state dir's stack.json (an empty record when there is none yet)."""
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
            check_traversable(root, run_as)
            ours = (
                created or root == self._temp_dir or (root / STATE_FILE).exists() or not any(root.iterdir())
            )
            if ours:
                os.chmod(root, 0o700)
                os.chown(root, run_as.uid, run_as.gid)
            else:
                check_traversable(root / STATE_FILE, run_as)
        return root

    _load = staticmethod(load_state)

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
            run_as = resolve_run_as()
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
            run_as = recorded_run_as(self._load(root).get("user"))
            with self._locked(root, run_as):
                state = self._load(root)
                services = self._open(root, state, run_as, list(state["services"]))
                for service in reversed(services):
                    service.stop()
                    service.ctx.save()
        self._remove_temp_dir()

    @contextlib.contextmanager
    def service(self, name: str, *, locked: bool = True) -> Iterator[Service]:
        """The stack's service *name*, its record loaded under the state dir's lock and saved after (e.g.
        ``with Stack(dir).service("redis") as redis: redis.kill()``; :mod:`toolclash.stack.control` uses it).
        ``locked=False``: a look without the lock (not waiting for an ``up`` in progress), nothing saved."""
        root = self._existing_dir()
        if root is None or not (root / STATE_FILE).exists():
            raise StackError(f"no stack in {self.state_dir_hint()}; start one: python -m toolclash.stack up")
        run_as = recorded_run_as(self._load(root).get("user"))
        with self._locked(root, run_as) if locked else contextlib.nullcontext():
            state = self._load(root)
            record = state["services"].get(name)
            if name not in SERVICES or not record:
                raise StackError(f"the stack in {root} has no {name} (it has {', '.join(state['services'])})")
            ctx = ServiceContext(root, run_as, bool(record.get("durable")), save=lambda: self._save(ctx, state),
                                 listen=record.get("listen") or ())
            service = SERVICES[name](ctx, record)
            try:
                yield service
            finally:
                if locked:
                    ctx.save()

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
