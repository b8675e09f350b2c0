"""The TCP proxy the nemesis puts between agents and a service, on the session's real PostgreSQL and Redis: what
each network fault does to a client, that it ends when cleared, and that the proxy never outlives its parent.
Waits are polls with deadlines; timings are checked against generous bounds (the machine is shared)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from urllib.parse import urlsplit

import psycopg2
import pytest
import redis

from toolclash.nemesis.scheduler import with_address
from toolclash.stack.process import pid_alive
from toolclash.stack.proxy import ProxyError, ProxyProcess


@pytest.fixture
def proxy() -> Iterator[ProxyProcess]:
    p = ProxyProcess().start()
    try:
        yield p
    finally:
        p.close()


def through(proxy: ProxyProcess, name: str, url: str) -> str:
    parts = urlsplit(url)
    host, port = proxy.listen(name, parts.hostname or "127.0.0.1", parts.port or 0)
    return with_address(url, host, port)


def round_trip_ms(conn: object) -> float:
    started = time.perf_counter()
    with conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute("SELECT 1")
        cur.fetchone()
    return (time.perf_counter() - started) * 1000.0


def test_latency_delays_every_round_trip_and_ends_when_cleared(proxy: ProxyProcess, stack: dict[str, str]) -> None:
    url = through(proxy, "postgres", stack["DATABASE_URL"])
    assert urlsplit(url).port != urlsplit(stack["DATABASE_URL"]).port
    with closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        before = sorted(round_trip_ms(conn) for _ in range(20))[10]
        proxy.request("set", name="postgres", delay_ms=80, jitter_ms=20)
        during = [round_trip_ms(conn) for _ in range(15)]
        stats = proxy.request("clear", name="postgres", what=["latency"])["stats"]
        after = sorted(round_trip_ms(conn) for _ in range(20))[10]
    assert min(during) >= 60.0 - 1.0, during  # 80 ms ± 20 ms to the server, every time
    assert stats["delayed_chunks"] >= 15 and 60 <= stats["delay_s_total"] / stats["delayed_chunks"] * 1000 <= 100
    assert after < 40.0 and before < 40.0, (before, after)


def test_bandwidth_caps_the_bytes_per_second(proxy: ProxyProcess, stack: dict[str, str]) -> None:
    url = through(proxy, "redis", stack["REDIS_URL"])
    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        client.set("tc:proxy:blob", b"x" * 300_000)
        started = time.perf_counter()
        assert len(client.get("tc:proxy:blob") or b"") == 300_000
        fast = time.perf_counter() - started
        proxy.request("set", name="redis", rate_bytes_s=150_000)
        started = time.perf_counter()
        assert len(client.get("tc:proxy:blob") or b"") == 300_000
        slow = time.perf_counter() - started
        proxy.request("clear", name="redis", what=["bandwidth"])
        client.delete("tc:proxy:blob")
    finally:
        client.close()
    assert slow >= 1.5 and slow > 5 * fast, (fast, slow)  # 300 kB at 150 kB/s: about 2 s


def test_reset_cuts_open_and_new_connections_until_cleared(proxy: ProxyProcess, stack: dict[str, str]) -> None:
    url = through(proxy, "postgres", stack["DATABASE_URL"])
    conn = psycopg2.connect(url)
    try:
        round_trip_ms(conn)
        answer = proxy.request("set", name="postgres", reset_share=1.0)
        assert answer["reset_now"] == 1
        with pytest.raises(psycopg2.OperationalError):
            round_trip_ms(conn)
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(url, connect_timeout=5).close()
        stats = proxy.request("clear", name="postgres", what=["reset"])["stats"]
        assert stats["resets"] >= 2
        with closing(psycopg2.connect(url, connect_timeout=5)) as again:
            assert round_trip_ms(again) < 1000
    finally:
        conn.close()


def test_a_refused_upstream_is_a_reset_and_the_proxy_ends_with_its_parents_input(stack: dict[str, str]) -> None:
    p = ProxyProcess().start()
    pid = p.pid
    assert pid is not None
    try:
        host, port = p.listen("nowhere", "127.0.0.1", 1)  # nothing listens on port 1
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(host=host, port=port, user="x", connect_timeout=5)
        assert p.request("stats", name="nowhere")["stats"]["refused_upstream"] == 1
        with pytest.raises(ProxyError, match="no link"):
            p.request("set", name="other", delay_ms=1)
    finally:
        p.close()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
