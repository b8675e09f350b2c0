"""The stack's ClickHouse (``CLICKHOUSE_URL``): Debian's clickhouse-server 18.16 with its own config."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from toolclash.stack.daemon import Launched, Service
from toolclash.stack.process import LOOPBACK, StackError


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
    title = "clickhouse-server"
    user = "toolclash"
    database = "toolclash"
    PID_FROM_STATE = True
    EXIT_GRACE_S = 15.0  # the daemon writes its pid file once it has loaded its config

    @property
    def config_file(self) -> Path:
        return self.dir / "config.xml"

    @property
    def pid_file(self) -> Path:
        return self.dir / "clickhouse.pid"

    @property
    def log_file(self) -> Path:
        """The error log: what the server says when it fails (its full log is clickhouse-server.log)."""
        return self.dir / "clickhouse-server.err.log"

    @property
    def full_log_file(self) -> Path:
        return self.dir / "clickhouse-server.log"

    def owns(self, pid: int, cmdline: bytes) -> bool:
        return f"--config-file={self.config_file}".encode() in cmdline.split(b"\0")

    def url(self, *, masked: bool = False) -> str | None:
        port, password = self.state.get("port"), self.state.get("password")
        if port is None or password is None:
            return None
        return f"clickhouse://{self.user}:{'***' if masked else password}@{LOOPBACK}:{port}/{self.database}"

    def ports(self) -> list[int]:
        return [int(self.state[key]) for key in ("port", "http_port") if self.state.get(key)]

    def prepare(self, deadline: float) -> None:
        find_clickhouse_server()
        self.ctx.makedir(self.dir)
        if not self.state.get("password"):
            self.state.update(password=secrets.token_urlsafe(24), log=str(self.log_file))
            self.ctx.save()

    def configure(self, port: int) -> None:
        from xml.sax.saxutils import escape

        tcp_port, http_port = port, self.pick_port()
        while http_port == tcp_port:
            http_port = self.pick_port()
        d = self.dir
        config = f"""<?xml version="1.0"?>
<!-- written by toolclash.stack on every start; edits are lost -->
<yandex>
    <logger>
        <level>warning</level>
        <log>{escape(str(self.full_log_file))}</log>
        <errorlog>{escape(str(self.log_file))}</errorlog>
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
        self.state.update(port=tcp_port, http_port=http_port, durable=True,
                          settings={"tcp_port": str(tcp_port), "http_port": str(http_port)})

    def launch(self, deadline: float) -> Launched:
        self.pid_file.unlink(missing_ok=True)
        result = self.ctx.run([find_clickhouse_server(), "--daemon", f"--config-file={self.config_file}",
                               f"--pid-file={self.pid_file}"], timeout=deadline - time.monotonic(), cwd=self.dir)
        return Launched(result.returncode == 0, result.stderr + result.stdout, f"exit {result.returncode}")

    def probe(self) -> bool:
        """``SELECT 1`` over the native protocol, then the database is created if missing."""
        from clickhouse_driver import Client
        from clickhouse_driver.errors import Error as ClickHouseError

        if self.pid() is None:
            return False
        client = Client(host=LOOPBACK, port=self.state["port"], user=self.user, password=self.state["password"],
                        connect_timeout=2, send_receive_timeout=5)
        try:
            client.execute("SELECT 1")
            client.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            return True
        except (ClickHouseError, OSError, EOFError) as exc:
            self.last_probe_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return False
        finally:
            client.disconnect()
