"""The embedded PgBouncer (toolclash.stack.PgBouncerService) against the real servers: no mocks."""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from toolclash.stack import PgBouncerService, Stack, StackError


def admin(url: str) -> Any:
    """A connection to PgBouncer's admin console (database ``pgbouncer``), autocommit."""
    conn = psycopg2.connect(re.sub(r"/[^/]*$", "/pgbouncer", url), connect_timeout=5)
    conn.autocommit = True
    return conn


def show(url: str, what: str) -> list[dict[str, Any]]:
    with closing(admin(url)) as conn, conn.cursor() as cur:
        cur.execute(f"SHOW {what}")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def test_pgbouncer_pools_the_stack_postgres_in_both_modes(stack: dict[str, str]) -> None:
    url = stack["PGBOUNCER_URL"]
    assert re.fullmatch(r"postgresql://toolclash:[\w-]+@127\.0\.0\.1:\d+/toolclash", url)
    assert url.split("@")[1] != stack["DATABASE_URL"].split("@")[1]  # its own port, not PostgreSQL's
    with closing(psycopg2.connect(stack["DATABASE_URL"])) as pg, pg.cursor() as cur:
        cur.execute("SELECT inet_server_port()")
        pg_port = cur.fetchone()[0]
    for dbname in ("toolclash", "toolclash_tx"):
        with closing(psycopg2.connect(url.rsplit("/", 1)[0] + "/" + dbname)) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database(), inet_server_port()")
            assert cur.fetchone() == ("toolclash", pg_port)  # behind the bouncer: the stack's PostgreSQL
    modes = {p["database"]: p["pool_mode"] for p in show(url, "POOLS")}
    assert modes["toolclash"] == "session" and modes["toolclash_tx"] == "transaction"
    config = {row["key"]: row["value"] for row in show(url, "CONFIG")}
    assert config["default_pool_size"] == "20"
    assert int(config["max_client_conn"]) >= 1000
    assert config["listen_addr"] == "127.0.0.1" and config["auth_type"] == "scram-sha-256"
    assert show(url, "STATS")  # stats access for the run's sampler


def test_pgbouncer_requires_the_password(stack: dict[str, str]) -> None:
    wrong = re.sub(r"toolclash:[^@]+@", "toolclash:wrong@", stack["PGBOUNCER_URL"])
    with pytest.raises(psycopg2.OperationalError, match="SASL authentication failed"):
        psycopg2.connect(wrong, connect_timeout=2).close()


def test_query_wait_timeout_is_settable_online(stack: dict[str, str]) -> None:
    url = stack["PGBOUNCER_URL"]
    with closing(admin(url)) as conn, conn.cursor() as cur:
        cur.execute("SET query_wait_timeout = 7")
        try:
            assert {r["key"]: r["value"] for r in show(url, "CONFIG")}["query_wait_timeout"] == "7"
        finally:
            cur.execute(f"SET query_wait_timeout = {PgBouncerService.QUERY_WAIT_TIMEOUT_S}")


def test_pgbouncer_without_the_stack_postgres_is_a_clear_error(tmp_path: Path) -> None:
    st = Stack(services=["pgbouncer"])
    try:
        with pytest.raises(StackError, match="fronts the stack's own PostgreSQL") as excinfo:
            st.up(timeout=30)
        assert "\n" not in str(excinfo.value)
    finally:
        st.down()


def test_status_and_down_of_a_private_bouncer() -> None:
    st = Stack(services=["postgres", "pgbouncer"])
    try:
        env = st.up(timeout=60)
        info = st.status()["pgbouncer"]
        password = env["PGBOUNCER_URL"].split(":")[2].split("@")[0]
        assert info["running"] and info["url"].startswith("postgresql://toolclash:***@127.0.0.1:")
        assert password not in str(info)
        assert info["settings"]["default_pool_size"] == "20"
        userlist = Path(info["dir"], "userlist.txt").read_text()
        assert "SCRAM-SHA-256$" in userlist and password not in userlist  # the secret, never the password
        url = env["PGBOUNCER_URL"]
    finally:
        st.down()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url, connect_timeout=2).close()
