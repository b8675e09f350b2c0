"""The stack's PgBouncer (``PGBOUNCER_URL``): Debian's pgbouncer in front of the stack's own PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from toolclash.stack.daemon import Launched, Service
from toolclash.stack.postgres import PostgresService
from toolclash.stack.process import LOOPBACK, STATE_FILE, StackError


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
    title = "PgBouncer"
    upstream = "postgres"
    user = PostgresService.user
    database = PostgresService.database
    TRANSACTION_SUFFIX = "_tx"
    """``<database>_tx`` is the same database pooled in transaction mode."""
    DEFAULT_POOL_SIZE = 20
    MAX_CLIENT_CONN = 2000
    QUERY_WAIT_TIMEOUT_S = 120
    BINARY = "/usr/sbin/pgbouncer"
    STOP_WAIT_S = 10.0  # SIGTERM is its immediate shutdown (SIGINT would wait for every client)

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

    def owns(self, pid: int, cmdline: bytes) -> bool:
        return os.fsencode(self.config_file) in cmdline.split(b"\0")

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

    def prepare(self, deadline: float) -> None:
        self._binary()
        pg = self._upstream_state()
        self.ctx.makedir(self.dir)
        secret = self._scram_secret(pg)
        self.ctx.write_file(self.dir / "userlist.txt", f'"{self.user}" "{secret}"\n')
        self.state.update(password=pg["password"], upstream_port=pg["port"], log=str(self.log_file))

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

    def configure(self, port: int) -> None:
        self.ctx.write_file(self.config_file, self._config(port, int(self.state["upstream_port"])))
        self.state.update(port=port, settings={
            "pool_mode": "session", f"pool_mode[{self.database}{self.TRANSACTION_SUFFIX}]": "transaction",
            "default_pool_size": str(self.DEFAULT_POOL_SIZE), "max_client_conn": str(self.MAX_CLIENT_CONN),
            "query_wait_timeout": str(self.QUERY_WAIT_TIMEOUT_S)})

    def launch(self, deadline: float) -> Launched:
        result = self.ctx.run([self._binary(), "-d", "-q", self.config_file], timeout=deadline - time.monotonic(),
                              cwd=self.dir)
        return Launched(result.returncode == 0, result.stderr + result.stdout, f"exit {result.returncode}")

    def probe(self) -> bool:
        """A login to the admin console (database ``pgbouncer``: it needs no server connection)."""
        import psycopg2

        try:
            conn = psycopg2.connect(host=LOOPBACK, port=self.state["port"], user=self.user,
                                    password=self.state["password"], dbname="pgbouncer", connect_timeout=2)
        except psycopg2.OperationalError as exc:
            if "password authentication failed" in str(exc) or "SASL" in str(exc):
                raise StackError(f"PgBouncer rejected the stack's password: {str(exc).strip().splitlines()[0]}; "
                                 f"see {self.log_file}") from None
            self.last_probe_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return False
        conn.close()
        return True
