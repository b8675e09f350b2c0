"""The example platform (``examples/platform``) as stack services: ``platform`` (correct) and ``platform_racy``.

Each is ``python -m examples.platform`` (gunicorn, one gevent worker) on a free port of 127.0.0.1, keeping its
tables in a database of its own (``platform``, ``platform_racy``) on the stack's PostgreSQL; ``PLATFORM_URL``
/ ``PLATFORM_RACY_URL`` point target files at it (``base_url = "{env:PLATFORM_URL}"``) and
``PLATFORM_DATABASE_URL`` / ``PLATFORM_RACY_DATABASE_URL`` at its database (a final state read with SQL). It
runs as the invoking user (it needs this repository's virtualenv), never as the stack's server user.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

from toolclash.stack.daemon import _CHILDREN, Launched, Service
from toolclash.stack.postgres import PostgresService
from toolclash.stack.process import LOOPBACK, STATE_FILE, StackError, spawn

REPO_DIR = Path(__file__).resolve().parents[2]


class PlatformService(Service):
    """The example platform, ``correct`` variant, over the stack's PostgreSQL. Starts after ``postgres``."""

    name = "platform"
    env_var = "PLATFORM_URL"
    database_env_var: ClassVar[str] = "PLATFORM_DATABASE_URL"
    title = "example platform"
    VARIANT: ClassVar[str] = "correct"
    THINK_MS: ClassVar[float] = 0.0
    EXIT_GRACE_S = 0.0  # a child of this process: gone means exited
    STOP_WAIT_S = 10.0

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def owns(self, pid: int, cmdline: bytes) -> bool:
        """gunicorn bound to our port (or, for an instant, ``python -m examples.platform`` before it execs it)."""
        args = cmdline.split(b"\0")
        port = str(self.state.get("port")).encode()
        return (b"gunicorn" in cmdline and f"{LOOPBACK}:".encode() + port in args) or \
            (b"examples.platform" in args and port in args)

    def url(self, *, masked: bool = False) -> str | None:
        port = self.state.get("port")
        return f"http://{LOOPBACK}:{port}" if port else None

    def notes(self) -> list[str]:
        return [f"variant {self.VARIANT}; its tables in database {self.name} of the stack's PostgreSQL"]

    def _database_url(self) -> str:
        try:
            state = json.loads((self.ctx.root / STATE_FILE).read_text(encoding="utf-8"))
            pg = state["services"]["postgres"]
        except (OSError, ValueError, KeyError, TypeError):
            pg = {}
        pg_service = PostgresService(self.ctx, dict(pg))
        if not pg.get("port") or not pg_service.is_running():
            raise StackError(f"the example platform keeps its tables in the stack's own PostgreSQL, which is not "
                             f"running in {self.ctx.root}; start both (services postgres then {self.name})")
        url = pg_service.url()
        assert url is not None
        import psycopg2  # local import: nothing at import time

        try:
            conn = psycopg2.connect(url, connect_timeout=5)
        except psycopg2.OperationalError as exc:
            raise StackError(f"{self.title}: cannot reach the stack's PostgreSQL: "
                             f"{str(exc).strip().splitlines()[0]}") from None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            conn.close()
        return url.rsplit("/", 1)[0] + "/" + self.name

    def prepare(self, deadline: float) -> None:
        self.ctx.makedir(self.dir)
        self.state.update(log=str(self.log_file), database_url=self._database_url())

    def configure(self, port: int) -> None:
        self.state.update(port=port, settings={"variant": self.VARIANT, "workers": "1"})

    def launch(self, deadline: float) -> Launched:
        env = {**self.ctx.child_env(), "PLATFORM_DATABASE_URL": self.state["database_url"]}
        argv = [sys.executable, "-m", "examples.platform", "--variant", self.VARIANT, "--host", LOOPBACK,
                "--port", str(self.state["port"]), "--workers", "1", "--think-ms", str(self.THINK_MS)]
        with open(self.log_file, "ab") as logfh:
            # as this user, not the stack's server user: the platform runs from this repository's virtualenv
            proc = spawn(argv, env=env, run_as=None, cwd=REPO_DIR, output=logfh)
        _CHILDREN[proc.pid] = proc
        self.state["pid"] = proc.pid
        self.ctx.save()
        return Launched(True, "", "exited")

    def probe(self) -> bool:
        """``GET /health`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url()}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError) as exc:
            self.last_probe_error = str(getattr(exc, "reason", exc))
            return False

    def env(self) -> dict[str, str]:
        return {**super().env(), self.database_env_var: self.state["database_url"]}

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["settings"] = {"variant": self.VARIANT} if out["running"] else {}
        return out


class RacyPlatformService(PlatformService):
    """The example platform, ``racy`` variant (read-modify-write across two statements, idempotency ignored)."""

    name = "platform_racy"
    env_var = "PLATFORM_RACY_URL"
    database_env_var = "PLATFORM_RACY_DATABASE_URL"
    title = "example platform (racy)"
    VARIANT = "racy"
    THINK_MS = 1.0

