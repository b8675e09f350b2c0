"""toolclash.stack against real private PostgreSQL servers: no mocks, waits are polls with deadlines."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest

import toolclash.stack.daemon as daemon_module
from toolclash.stack import RunAs, Stack, StackError, _check_traversable, mask_url

pytestmark = pytest.mark.xdist_group("stack")
"""Under pytest-xdist, one worker runs this module: its module-scoped servers and runs are made once."""

REPO = Path(__file__).resolve().parents[1]
CLI_TIMEOUT = 90


def query(url: str, sql: str) -> Any:
    """First column of the first row of sql, on a fresh connection."""
    with closing(psycopg2.connect(url, connect_timeout=2)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]


def assert_refused(url: str) -> None:
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url, connect_timeout=2).close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "toolclash.stack", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def private_dir() -> Path:
    """A fresh dir under /tmp the servers' OS user can reach (pytest's tmp_path is 0700 root-owned)."""
    return Path(tempfile.mkdtemp(prefix="toolclash-stack-test-"))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack()
    s.up(timeout=60)
    try:
        yield s
    finally:
        s.down()


# ------------------------------------------------------------------------------------------ one stack


def test_up_serves_queries_with_the_stack_settings(stack: Stack) -> None:
    url = stack.env()["DATABASE_URL"]
    assert re.fullmatch(r"postgresql://toolclash:[\w-]+@127\.0\.0\.1:\d+/toolclash", url)
    assert query(url, "SELECT 1") == 1
    assert query(url, "SHOW deadlock_timeout") == "100ms"
    assert int(query(url, "SHOW max_prepared_transactions")) > 0
    assert int(query(url, "SHOW max_connections")) == 400
    assert query(url, "SHOW log_lock_waits") == "on"
    assert query(url, "SHOW fsync") == "off"
    assert query(url, "SHOW synchronous_commit") == "off"
    assert query(url, "SHOW full_page_writes") == "off"
    assert query(url, "SELECT current_user || '/' || current_database()") == "toolclash/toolclash"


def test_listens_on_127_0_0_1_only(stack: Stack) -> None:
    port = stack.status()["postgres"]["port"]
    url = stack.env()["DATABASE_URL"]
    assert query(url, "SHOW listen_addresses") == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
        pass
    with pytest.raises(OSError), socket.create_connection(("::1", port), timeout=2):
        pass
    # the kernel's own list of listening sockets on this port: IPv4 loopback only
    listeners = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if int(port_hex, 16) == port and state == "0A":
                listeners.append(address)
    assert listeners == ["0100007F"]


def test_password_is_required(stack: Stack) -> None:
    url = stack.env()["DATABASE_URL"]
    wrong = re.sub(r"toolclash:[^@]+@", "toolclash:wrong@", url)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(wrong, connect_timeout=2).close()


def test_status_masks_password_and_says_non_durable(stack: Stack) -> None:
    url = stack.env()["DATABASE_URL"]
    password = url.split(":")[2].split("@")[0]
    info = stack.status()["postgres"]
    assert info["running"] is True
    assert isinstance(info["pid"], int) and info["pid"] > 0
    assert info["url"] == mask_url(url) and "***" in info["url"] and password not in str(info)
    assert info["settings"]["fsync"] == "off" and info["durable"] is False
    assert any(note.startswith("non-durable: fsync=off") for note in info["notes"])


def test_reopening_the_state_dir_sees_the_running_server(stack: Stack) -> None:
    other = Stack(state_dir=stack.state_dir)
    assert other.status()["postgres"]["running"] is True
    assert other.env() == stack.env()
    pid = stack.status()["postgres"]["pid"]
    assert other.up() == stack.env()  # already running: nothing restarted
    assert stack.status()["postgres"]["pid"] == pid


# --------------------------------------------------------------------------------------- more stacks


def test_two_stacks_at_once_then_down_stops_them_and_removes_temp_dirs() -> None:
    stacks = [Stack(), Stack()]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            envs = list(pool.map(lambda s: s.up(timeout=60), stacks))
        urls = [env["DATABASE_URL"] for env in envs]
        ports = {s.status()["postgres"]["port"] for s in stacks}
        assert len(ports) == 2
        for url in urls:
            assert query(url, "SELECT 1") == 1
        dirs = [s.state_dir for s in stacks]
    finally:
        for s in stacks:
            s.down()
    for url, state_dir in zip(urls, dirs, strict=True):
        assert_refused(url)
        assert not state_dir.exists()
    stacks[0].down()  # idempotent


def test_a_taken_port_is_retried_and_exhaustion_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = private_dir()
    real_free_port: Callable[[], int] = daemon_module.free_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        s = Stack(state_dir)
        try:
            monkeypatch.setattr(daemon_module, "free_port", lambda: taken)  # every service picks ports there
            with pytest.raises(StackError, match="could not bind a free port") as excinfo:
                s.up(timeout=60)
            assert "\n" not in str(excinfo.value)
            assert s.status()["postgres"]["running"] is False

            picks = iter([taken])
            monkeypatch.setattr(daemon_module, "free_port", lambda: next(picks, None) or real_free_port())
            url = s.up(timeout=60)["DATABASE_URL"]
            assert s.status()["postgres"]["port"] != taken
            assert query(url, "SELECT 1") == 1
        finally:
            s.down()
            shutil.rmtree(state_dir)


def test_state_dir_must_be_traversable_by_the_server_user() -> None:
    locked = private_dir()  # mode 0700, owned by whoever runs the tests
    try:
        stranger = RunAs("stranger", os.getuid() + 4242, os.getgid() + 4242, "/nonexistent")
        with pytest.raises(StackError, match=f"{re.escape(str(locked))} is not traversable"):
            _check_traversable(locked / "stack", stranger)
        _check_traversable(Path(tempfile.gettempdir()) / "stack", stranger)
    finally:
        locked.rmdir()


def test_unknown_service_is_a_stack_error() -> None:
    with pytest.raises(StackError, match="unknown service"):
        Stack(services=("postgres", "mongodb"))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_round_trip() -> None:
    state_dir = private_dir()
    try:
        up = cli("up", "--dir", str(state_dir))
        assert up.returncode == 0, up.stderr
        assert "postgresql://toolclash:***@127.0.0.1:" in up.stdout
        assert "non-durable: fsync=off" in up.stdout

        env = cli("env", "--dir", str(state_dir))
        assert env.returncode == 0, env.stderr
        match = re.fullmatch(
            r"export DATABASE_URL='(postgresql://toolclash:([\w-]+)@127\.0\.0\.1:\d+/toolclash)'\n",
            env.stdout,
        )
        assert match, env.stdout
        url, password = match.groups()
        assert query(url, "SELECT 1") == 1
        assert password not in up.stdout + up.stderr

        status = cli("status", "--dir", str(state_dir))
        assert status.returncode == 0, status.stderr
        assert re.search(
            r"^postgres\s+yes\s+\d+\s+\d+\s+postgresql://toolclash:\*\*\*@", status.stdout, re.MULTILINE
        )
        assert "non-durable: fsync=off" in status.stdout
        assert password not in status.stdout + status.stderr

        down = cli("down", "--dir", str(state_dir))
        assert down.returncode == 0, down.stderr
        assert_refused(url)
        assert cli("down", "--dir", str(state_dir)).returncode == 0  # server already gone: still fine
        assert re.search(r"^postgres\s+no\b", cli("status", "--dir", str(state_dir)).stdout, re.MULTILINE)
        with pytest.raises(StackError, match=r"did not become ready before the deadline.*shut down"):
            Stack(state_dir).up(timeout=0)  # the message carries the server log's last lines
        assert Stack(state_dir).status()["postgres"]["running"] is False

        # the kept state dir restarts with its data, this time durable
        assert cli("up", "--dir", str(state_dir), "--durable").returncode == 0
        url = Stack(state_dir).env()["DATABASE_URL"]
        assert query(url, "SHOW fsync") == "on"
        assert "non-durable" not in cli("status", "--dir", str(state_dir)).stdout
    finally:
        Stack(state_dir).down()
        shutil.rmtree(state_dir)


def test_cli_bad_invocation_exits_2_with_one_line() -> None:
    result = cli("frobnicate")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("toolclash.stack: ")
    assert "frobnicate" in result.stderr


def test_cli_env_without_a_running_stack_exits_2_with_one_line(tmp_path: Path) -> None:
    result = cli("env", "--dir", str(tmp_path / "nothing-here"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not running" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nothing-here").exists()


def test_import_has_no_side_effects() -> None:
    code = "import sys, toolclash.stack; assert 'psycopg2' not in sys.modules; print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.stdout == "ok\n", result.stderr


# -------------------------------------------------------------------------------------------- mask_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql://toolclash:s3cret@127.0.0.1:5432/toolclash",
            "postgresql://toolclash:***@127.0.0.1:5432/toolclash",
        ),
        ("redis://:s3cret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("postgresql://u:p%40ss@h/db?sslmode=disable", "postgresql://u:***@h/db?sslmode=disable"),
        ("postgresql://u:p@ss:w@h:1/db", "postgresql://u:***@h:1/db"),
        ("http://user@host:8123/", "http://user@host:8123/"),
        ("postgresql://host/db?user=u&password=s3cret&x=1", "postgresql://host/db?user=u&password=***&x=1"),
        ("clickhouse://default:pw@127.0.0.1:9000", "clickhouse://default:***@127.0.0.1:9000"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# ------------------------------------------------------------------------------------------ ClickHouse


def test_clickhouse_private_server_native_protocol_loopback_password_and_down() -> None:
    from clickhouse_driver import Client
    from clickhouse_driver.errors import Error as ClickHouseError

    state_dir = private_dir()
    s = Stack(state_dir, services=["clickhouse"])
    try:
        url = s.up(timeout=60)["CLICKHOUSE_URL"]
        assert re.fullmatch(r"clickhouse://toolclash:[\w-]+@127\.0\.0\.1:\d+/toolclash", url)
        info = s.status()["clickhouse"]
        assert info["running"] is True and "***" in info["url"] and url.split(":")[2].split("@")[0] not in str(info)
        client = Client.from_url(url)
        try:
            assert client.execute("SELECT version(), currentDatabase()") == [("18.16.1", "toolclash")]
        finally:
            client.disconnect()
        # runs as an unprivileged user, with its data inside the state dir
        uid = int(next(line for line in Path(f"/proc/{info['pid']}/status").read_text().splitlines()
                       if line.startswith("Uid:")).split()[1])
        assert uid != 0 or os.geteuid() != 0
        assert (state_dir / "clickhouse" / "data").is_dir()
        # both of its ports listen on 127.0.0.1 only; interserver replication is off (no third port)
        ports = {int(info["settings"]["tcp_port"]), int(info["settings"]["http_port"])}
        listeners = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].split(":")
                inode = fields[9]
                if fields[3] == "0A" and os.path.exists(f"/proc/{info['pid']}/fd") and any(
                        os.readlink(f"/proc/{info['pid']}/fd/{fd}") == f"socket:[{inode}]"
                        for fd in os.listdir(f"/proc/{info['pid']}/fd")):
                    listeners.add((address, int(port_hex, 16)))
        assert listeners == {("0100007F", port) for port in ports}
        wrong = Client.from_url(re.sub(r"toolclash:[^@]+@", "toolclash:wrong@", url))
        with pytest.raises(ClickHouseError, match=r"(?i)password"):
            wrong.execute("SELECT 1")
        wrong.disconnect()
        assert Stack(state_dir, services=["clickhouse"]).env() == {"CLICKHOUSE_URL": url}  # seen across processes
    finally:
        s.down()
    assert s.status()["clickhouse"]["running"] is False
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])), timeout=2).close()
    shutil.rmtree(state_dir)
