"""toolclash.stack.control against real private servers: every operation, seen from a client. No mocks; the
waits are polls with deadlines (a blocked call is one that has not answered within its deadline)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis
from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError

from tests.test_stack import private_dir, query
from toolclash.stack.control import NotLocalError, ServerControl
from toolclash.stack.core import Stack
from toolclash.stack.process import StackError, descendants, pid_alive, same_process

pytestmark = pytest.mark.xdist_group("stack-control")
"""Under pytest-xdist, one worker runs this module: its module-scoped servers and runs are made once."""

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("postgres", "auth_postgres", "pgbouncer", "redis", "clickhouse")
VARS = {"postgres": "DATABASE_URL", "auth_postgres": "AUTH_DATABASE_URL", "pgbouncer": "PGBOUNCER_URL",
        "redis": "REDIS_URL", "clickhouse": "CLICKHOUSE_URL"}


@pytest.fixture(scope="module")
def durable() -> Iterator[tuple[Stack, dict[str, str]]]:
    """A durable private stack (acknowledged writes survive a crash of the server)."""
    state_dir = private_dir()
    stack = Stack(state_dir, services=SERVICES, durable=True)
    try:
        yield stack, stack.up(timeout=120)
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def env(durable: tuple[Stack, dict[str, str]]) -> Iterator[dict[str, str]]:
    """The stack's URLs; after the test every server is resumed and running again (whatever the test did)."""
    yield durable[1]
    for name in SERVICES:
        ctl = ServerControl.of(durable[1][VARS[name]], state_dir=durable[0].state_dir)
        ctl.resume()
        ctl.start()


def refused(url: str) -> None:
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        psycopg2.connect(url, connect_timeout=2).close()


def patient_query(url: str, sql: str) -> Any:
    """First column of the first row of sql, on a fresh connection that waits up to 30 s for the server."""
    with closing(psycopg2.connect(url, connect_timeout=30)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def blocks(fn: Any, deadline_s: float = 1.0) -> Any:
    """Run fn in a thread; assert it has not returned within deadline_s; return its future."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    with pytest.raises(FutureTimeout):
        future.result(timeout=deadline_s)
    pool.shutdown(wait=False)
    return future


# -------------------------------------------------------------------------------------------- finding


def test_each_server_is_found_from_its_url_alone(durable: tuple[Stack, dict[str, str]], env: dict[str, str]) -> None:
    stack, _ = durable
    status = stack.status()
    for name in SERVICES:
        ctl = ServerControl.of(env[VARS[name]])
        assert ctl.name == name and ctl.where == stack.state_dir
        assert ctl.pid() == status[name]["pid"] and ctl.is_running() and not ctl.is_paused()
        assert "***" in repr(ctl) and env[VARS[name]] not in repr(ctl)  # password masked
        assert ServerControl.of(env[VARS[name]], state_dir=stack.state_dir).name == name


def test_a_server_of_another_host_or_none_at_all_is_a_one_line_error() -> None:
    with pytest.raises(NotLocalError, match="needs a local server") as excinfo:
        ServerControl.of("postgresql://u:s3cret@10.1.2.3:5432/db")
    assert "\n" not in str(excinfo.value) and "s3cret" not in str(excinfo.value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StackError, match=f"no process .* listens on port {port}"):
        ServerControl.of(f"redis://127.0.0.1:{port}/0")
    with socket.socket() as sock:  # a listener that is no stack's server: this very process
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(StackError, match="not one of a toolclash stack's"):
            ServerControl.of(f"redis://127.0.0.1:{sock.getsockname()[1]}/0")


# ----------------------------------------------------------------------------------------- PostgreSQL


def test_postgres_pause_blocks_queries_until_resume(env: dict[str, str]) -> None:
    url = env["DATABASE_URL"]
    ctl = ServerControl.of(url)
    with closing(psycopg2.connect(url, connect_timeout=2)) as conn:
        ctl.pause()
        assert ctl.is_paused()
        pending = blocks(lambda: patient_query(url, "SELECT 1"))  # a new session: the postmaster does not answer
        with conn.cursor() as cur:  # an open session: its backend is stopped too
            running = blocks(lambda: (cur.execute("SELECT 2"), cur.fetchone()))
            ctl.resume()
            assert not ctl.is_paused()
            assert running.result(timeout=10)[1] == (2,)
        assert pending.result(timeout=10) == 1


def test_postgres_crash_refuses_then_start_keeps_committed_data(durable: tuple[Stack, dict[str, str]],
                                                                env: dict[str, str]) -> None:
    stack, _ = durable
    url = env["DATABASE_URL"]
    with closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS crash_test (v text); TRUNCATE crash_test;"
                    "INSERT INTO crash_test VALUES ('committed')")
        conn.commit()
    ctl = ServerControl.of(url)
    old = ctl.pid()
    assert old is not None
    children = descendants(old)
    assert children  # checkpointer, walwriter...
    assert ctl.crash() is True
    assert not pid_alive(old) and not any(same_process(*child) for child in children)  # nothing of it is left
    assert not ctl.is_running() and stack.status()["postgres"]["running"] is False
    refused(url)
    ctl.start()
    assert ctl.pid() not in (None, old)
    assert stack.status()["postgres"]["pid"] == ctl.pid()  # recorded in the stack's state
    assert query(url, "SELECT string_agg(v, ',') FROM crash_test") == "committed"
    assert ctl.crash() is True and ctl.crash() is False  # nothing left to crash


def test_postgres_stop_modes_start_and_restart(env: dict[str, str]) -> None:
    url = env["DATABASE_URL"]
    ctl = ServerControl.of(url)
    for mode in ("immediate", "fast", "smart"):
        assert ctl.stop(mode) is True
        refused(url)
        assert ctl.stop(mode) is False
        ctl.start()
        assert query(url, "SELECT 1") == 1
    before = ctl.pid()
    ctl.restart("immediate")
    assert ctl.pid() not in (None, before) and query(url, "SELECT 1") == 1
    with pytest.raises(StackError, match="no stop mode 'abrupt'"):
        ctl.stop("abrupt")
    assert ctl.pid() is not None


def test_the_auth_server_restarts_on_its_own(env: dict[str, str]) -> None:
    main, auth = ServerControl.of(env["DATABASE_URL"]), ServerControl.of(env["AUTH_DATABASE_URL"])
    main_pid, auth_pid = main.pid(), auth.pid()
    auth.stop("immediate")
    refused(env["AUTH_DATABASE_URL"])
    assert query(env["DATABASE_URL"], "SELECT 1") == 1
    auth.start()
    assert query(env["AUTH_DATABASE_URL"], "SELECT current_setting('port')::int") == int(
        env["AUTH_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
    assert main.pid() == main_pid and auth.pid() not in (None, auth_pid)


def test_a_recycled_pid_is_never_signalled(env: dict[str, str]) -> None:
    """A stopped server's pid file naming another live process: not running, and crash() sends nothing."""
    ctl = ServerControl.of(env["DATABASE_URL"])
    pid_file = ctl.where / "postgres" / "data" / "postmaster.pid"
    ctl.stop()
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(f"{stranger.pid}\n")
        assert not ctl.is_running() and ctl.pid() is None
        assert ctl.crash() is False
        with pytest.raises(StackError, match="not running"):
            ctl.pause()
        assert ctl.stop() is False
        assert stranger.poll() is None  # alive, never stopped nor killed
        assert ServerControl.of(env["DATABASE_URL"], state_dir=ctl.where).name == "postgres"  # found while down
    finally:
        stranger.kill()
        stranger.wait()
        pid_file.unlink()


def test_control_from_another_process(durable: tuple[Stack, dict[str, str]], env: dict[str, str]) -> None:
    stack, _ = durable
    before = stack.status()["postgres"]["pid"]
    code = ("import os, sys; from toolclash.stack.control import ServerControl; "
            "c = ServerControl.of(os.environ['URL']); assert c.crash(); c.start(); print(c.pid())")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO), "URL": env["DATABASE_URL"]}, check=False)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == stack.status()["postgres"]["pid"] != before
    assert query(env["DATABASE_URL"], "SELECT 1") == 1


# ------------------------------------------------------------------------------------- the other servers


def test_redis_crash_keeps_acknowledged_writes_pause_times_out(env: dict[str, str]) -> None:
    url = env["REDIS_URL"]
    ctl = ServerControl.of(url)
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        client.set("control:test", "kept")
        assert ctl.crash() is True
        with pytest.raises(redis.ConnectionError):
            client.ping()
        ctl.start()
        assert client.get("control:test") == b"kept"  # appendfsync always: nothing acknowledged is lost
        ctl.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        ctl.resume()
        assert client.ping() is True
        ctl.pause()
        started = time.monotonic()
        assert ctl.stop() is True  # a paused server is resumed to act on SIGTERM, not killed after 30 s
        assert time.monotonic() - started < 10
        ctl.restart()
        assert client.get("control:test") == b"kept"
        with pytest.raises(StackError, match="no stop mode"):
            ctl.stop("immediate")
    finally:
        client.close()


def test_pgbouncer_crash_restart_and_pause(env: dict[str, str]) -> None:
    url = env["PGBOUNCER_URL"]
    ctl = ServerControl.of(url)
    assert ctl.crash() is True
    refused(url)
    ctl.start()
    assert query(url, "SELECT 1") == 1
    ctl.pause()
    with pytest.raises(psycopg2.OperationalError, match="timeout"):
        psycopg2.connect(url, connect_timeout=1).close()
    ctl.resume()
    assert query(url, "SELECT 1") == 1


def test_clickhouse_crash_and_start(env: dict[str, str]) -> None:
    url = env["CLICKHOUSE_URL"]
    ctl = ServerControl.of(url)
    assert ctl.crash() is True
    client = Client.from_url(url)
    client.connection.connect_timeout = 1
    with pytest.raises((ClickHouseError, OSError)):
        client.execute("SELECT 1")
    client.disconnect()
    ctl.start()
    again = Client.from_url(url)
    try:
        assert again.execute("SELECT 1") == [(1,)]
    finally:
        again.disconnect()
