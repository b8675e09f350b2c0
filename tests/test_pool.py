"""The pool scenario against the real PostgreSQL and PgBouncer: the pool itself, the tool, and short
headless Locust runs whose verdict is read back from reports/<run-id>/checks.json.

Pool tests use plain threads (the pool only uses ``threading`` primitives, which Locust's gevent
patching makes cooperative); waits are polls on the pool's own state, never sleeps.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import run_locust
from toolclash import db
from toolclash.backend import Backend
from toolclash.retry import RetryPolicy
from toolclash.tools import Call
from toolclash.tools import pool as pt

LOCUSTFILE = "locustfiles/pool.py"
SMALL = ["--facts-rows", "50000", "--scan-rows", "20000"]


def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def make_pool(database_url: str) -> Iterator[Callable[..., db.Pool]]:
    pools: list[db.Pool] = []

    def make(size: int = 2, **kw: Any) -> db.Pool:
        p = db.Pool("test", lambda: db.connect(database_url, application_name="tc:test:pool"), size=size, **kw)
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.close()


def test_waiters_are_served_in_arrival_order(make_pool: Callable[..., db.Pool]) -> None:
    pool = make_pool(size=1)
    first = pool.acquire("a0")
    order: list[str] = []
    threads = []
    for i in range(1, 5):
        def take(name: str = f"a{i}") -> None:
            with pool.connection(name):
                order.append(name)
        t = threading.Thread(target=take)
        t.start()
        threads.append(t)
        until(lambda i=i: pool.stats()["waiting"] == i)  # a1 queued before a2 asks, and so on
    pool.release(first)
    for t in threads:
        t.join(10)
    assert order == ["a1", "a2", "a3", "a4"]
    stats = pool.stats()
    assert stats["in_use"] == 0 and stats["waiting"] == 0 and stats["counters"]["pool_waits"] == 4
    assert stats["counters"]["pool_opened"] == 1  # one connection, handed from holder to holder


def test_acquire_timeout_names_pool_wait_and_waiters(make_pool: Callable[..., db.Pool]) -> None:
    pool = make_pool(size=1, acquire_timeout_s=0.2)
    held = pool.acquire("holder")
    def other_agent() -> None:
        with pool.connection("other", None, 10.0):
            pass

    other = threading.Thread(target=other_agent)
    other.start()
    until(lambda: pool.stats()["waiting"] == 1)
    with pytest.raises(db.PoolTimeout) as excinfo:
        pool.acquire("late")
    assert re.fullmatch(r"pool 'test': no connection within 0\.2\d\d s \(1/1 in use, 1 other agent\(s\) waiting\)",
                        str(excinfo.value)), str(excinfo.value)
    assert excinfo.value.waiting == 1 and excinfo.value.waited_s >= 0.2
    pool.release(held)
    other.join(10)
    assert pool.stats()["counters"]["pool_timeouts"] == 1 and pool.stats()["waiting"] == 0


def test_connection_is_returned_on_error_and_closed_on_interrupt(make_pool: Callable[..., db.Pool]) -> None:
    pool = make_pool(size=1)
    with pytest.raises(psycopg2.errors.DivisionByZero), pool.connection("a") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1/0")
    assert pool.stats()["in_use"] == 0 and pool.stats()["idle"] == 1  # rolled back and returned
    with pool.connection("a") as again:
        assert again is conn  # the same healthy connection

    class Interrupt(BaseException):  # stands for GreenletExit / KeyboardInterrupt
        pass

    with pytest.raises(Interrupt), pool.connection("a") as conn2, conn2.cursor() as cur:
        cur.execute("SELECT 1")
        raise Interrupt
    assert conn2.closed and pool.stats()["in_use"] == 0 and pool.stats()["counters"]["pool_discarded"] == 1
    with pool.connection("b") as fresh:  # the slot came back: a new connection is opened
        assert fresh is not conn2 and not fresh.closed


def test_health_check_and_max_lifetime_replace_connections(make_pool: Callable[..., db.Pool],
                                                           database_url: str) -> None:
    pool = make_pool(size=1, max_lifetime_s=3600)
    with pool.connection("a") as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    conn.close()  # dies while idle in the pool
    with pool.connection("a") as conn2:
        assert conn2 is not conn and not conn2.closed
    assert pool.stats()["counters"]["pool_closed_unhealthy"] == 1
    pool.max_lifetime_s = 0.0  # every connection is now too old
    with pool.connection("a") as conn3:
        pass
    assert conn3.closed and pool.stats()["counters"]["pool_closed_lifetime"] >= 1
    with closing(psycopg2.connect(database_url)) as admin, admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        assert cur.fetchone()[0] == 0


def test_leak_tracking_names_the_holder(make_pool: Callable[..., db.Pool]) -> None:
    pool = make_pool(size=2, leak_after_s=30)
    lease = pool.acquire("agent-7", "op-42")
    with pool.connection("agent-8"):
        assert pool.check_leaks() == []
    leaks = pool.check_leaks(now=time.monotonic() + 31)
    assert [(x["agent"], x["op_id"]) for x in leaks] == [("agent-7", "op-42")]
    assert pool.check_leaks(now=time.monotonic() + 60) == []  # reported once
    assert pool.holders()[0]["agent"] == "agent-7" and pool.stats()["counters"]["pool_leaks"] == 1
    pool.release(lease)
    assert pool.stats()["in_use"] == 0 and pool.stats()["leaks"][0]["agent"] == "agent-7"


def test_close_wakes_waiters(make_pool: Callable[..., db.Pool]) -> None:
    pool = make_pool(size=1)
    pool.acquire("holder")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire("waiter", None, 30)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    until(lambda: pool.stats()["waiting"] == 1)
    pool.close()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], db.PoolClosed)


def test_pgbouncer_query_wait_timeout_is_a_pool_timeout(stack: dict[str, str], database_url: str) -> None:
    """20 open transactions hold every server connection of the transaction pool: the next query waits in
    PgBouncer until query_wait_timeout, and the call fails pool-timeout saying so."""
    url = pt.bouncer_url(stack["PGBOUNCER_URL"], "transaction")
    backend = Backend(stack, "qwt")
    with closing(backend.pg()) as conn:
        pt.reset(conn, backend=backend, facts_rows=1000, pool="pgbouncer", pool_acquire_timeout_s=1)
    holders = [psycopg2.connect(url) for _ in range(20)]
    waiting = pt.BouncerWaiting(url, "toolclash_tx")
    try:
        for h in holders:
            h.cursor().execute("SELECT 1")  # BEGIN … and never COMMIT: the server connection stays lent
        source = pt.BouncerSource(lambda agent: db.connect(url, application_name=f"tc:qwt:{agent}"),
                                  mode="transaction", label="pgbouncer:toolclash_tx", query_wait_timeout_s=1,
                                  waiting=waiting)
        tool = pt.AnalyticsTool(source, agent="a1", statement_timeout_ms=5000, facts_rows=1000, scan_rows=100)
        call = tool.analyze(Call("qwt-1", RetryPolicy(), __import__("random").Random()), 1, 100)
        assert call.outcome == "fail" and call.reason == "pool-timeout", call
        assert call.result["wait_ms"] >= 900
        assert re.search(r"pool 'pgbouncer:toolclash_tx': no server connection within 1\.\d+ s \(PgBouncer "
                         r"query_wait_timeout 1 s\), \d+ client\(s\) waiting", call.result["message"])
        source.close()
    finally:
        for h in holders:
            h.close()
        waiting.close()
        with closing(pt.bouncer_admin(stack["PGBOUNCER_URL"])) as admin, admin.cursor() as cur:
            cur.execute("SET query_wait_timeout = 120")


# ----------------------------------------------------------------------------------- Locust runs


def test_client_pool_queues_and_ends_idle(database_url: str, stack: dict[str, str], tmp_path: Path) -> None:
    """8 agents, 3 connections, no think time: agents queue; stop kills calls mid-query and every
    connection still goes back (or is closed); every check passes."""
    run = run_locust(["-u", "8", "-r", "8", "-t", "3s", "--profile", "stress", "--pool-size", "3", *SMALL],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE, services=stack)
    assert run.code in (0, 4), run.output()
    verdict = run.verdict
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
    fig, counters = verdict["figures"]["pool"], verdict["counters"]
    assert fig["ok"] > 20 and fig["queued_calls"] > 0 and fig["client_in_use_max"] == 3, fig
    assert counters["pool_waits"] > 0 and counters["pool_in_use"] == 0 and counters["pool_waiting"] == 0
    assert "pool_waits" in run.proc.stdout  # queueing is visible in the summary
    # the stop killed agents mid-query (GreenletExit): their connections were closed, not lost
    assert 0 < counters.get("pool_discarded", 0) <= counters.get("calls_unknown", 0), counters
    state = run.check("pool.client_idle")["counts"]
    assert state["in_use"] == 0 and state["waiting"] == 0


def test_timeouts_and_cancellations_are_accounted(database_url: str, stack: dict[str, str], tmp_path: Path) -> None:
    run = run_locust(["-u", "8", "-r", "8", "-t", "3s", "--profile", "stress", "--pool-size", "2",
                      "--pool-acquire-timeout-s", "0.02", "--statement-timeout-ms", "15", "--facts-rows", "400000",
                      "--scan-rows", "200000"],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE, services=stack)
    assert run.code == 4, run.output()  # data right, success-rate gate missed
    accounted = run.check("pool.accounted")
    assert accounted["valid"] is True, accounted
    assert accounted["counts"]["pool-timeout"] > 0 and accounted["counts"]["cancelled"] > 0, accounted
    assert accounted["counts"]["pool_counted_timeouts"] == accounted["counts"]["pool-timeout"]
    assert any(g["gate"] == "success_rate" and not g["met"] for g in run.verdict["gates"])
    assert run.verdict["counters"]["pool_cancelled"] == accounted["counts"]["cancelled"]


def test_leak_fault_is_caught_and_named(database_url: str, stack: dict[str, str], tmp_path: Path) -> None:
    run = run_locust(["-u", "6", "-r", "6", "-t", "3s", "--fault", "leak", "--profile", "stress",
                      "--pool-leak-after-s", "1", *SMALL],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE, services=stack)
    assert run.code == 1, run.output()
    idle = run.check("pool.client_idle")
    assert idle["valid"] is False and idle["counts"]["leaked_agents"], idle
    agent = idle["counts"]["leaked_agents"][0]
    assert agent in run.proc.stdout and "leaked by" in run.proc.stdout
    assert run.verdict["counters"]["pool_leaks"] >= 1  # the leak tracker reported it during the run
    assert run.check("server.sessions")["valid"] is True  # the pool closed the leaked connection at stop


def test_swallowed_pool_timeouts_are_caught_by_the_pools_own_count(database_url: str, stack: dict[str, str],
                                                                   tmp_path: Path) -> None:
    """--fault swallow_timeout: the tool hides each pool timeout by asking again; every call looks ok, but the
    pool counted its timeouts, and pool.accounted compares the two."""
    run = run_locust(["-u", "8", "-r", "8", "-t", "3s", "--profile", "stress", "--pool-size", "1",
                      "--pool-acquire-timeout-s", "0.02", "--fault", "swallow_timeout", "--facts-rows", "200000",
                      "--scan-rows", "100000"],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE, services=stack)
    assert run.code == 1, run.output()
    accounted = run.check("pool.accounted")
    assert accounted["valid"] is False, accounted
    ev = next(e for e in accounted["evidence"] if "pool_timeouts" in e)  # a few calls may still time out at last
    assert ev["pool_timeouts"] > ev["pool_timeout_calls"] and ev["process"], ev
    assert "pool.accounted" in run.proc.stdout and "FALSE" in run.proc.stdout


def test_off_by_one_window_is_caught_by_the_aggregates(database_url: str, stack: dict[str, str],
                                                      tmp_path: Path) -> None:
    """--fault off_by_one: every aggregate leaves out its window's first row."""
    run = run_locust(["-u", "4", "-r", "4", "-t", "2s", "--profile", "stress", "--fault", "off_by_one", *SMALL],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE, services=stack)
    assert run.code == 1, run.output()
    aggregates = run.check("pool.aggregates")
    assert aggregates["valid"] is False and aggregates["counts"]["wrong"] == aggregates["counts"]["ok_calls"] > 0
    ev = aggregates["evidence"][0]
    assert ev["rows"] == ev["expected"] - 1 and ev["op_id"] and ev["window"], ev
    assert run.check("pool.accounted")["valid"] is True  # every call ended ok: only the answer is wrong


def test_pgbouncer_transaction_pool(database_url: str, stack: dict[str, str], tmp_path: Path) -> None:
    run = run_locust(["-u", "25", "-r", "25", "-t", "3s", "--pool", "pgbouncer", "--profile", "stress", *SMALL],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE, services=stack)
    assert run.code in (0, 4), run.output()
    assert all(c["valid"] is True for c in run.verdict["checks"]), run.verdict["checks"]
    fig = run.verdict["figures"]["pool"]
    assert fig["ok"] > 20 and fig["bouncer_sv_active_max"] is not None, fig
    assert fig["bouncer_sv_active_max"] <= 20  # default_pool_size
    assert run.check("pool.bouncer_idle")["counts"]["cl_waiting"] == 0


def test_pgbouncer_leak_is_caught_and_named(database_url: str, stack: dict[str, str], tmp_path: Path) -> None:
    run = run_locust(["-u", "6", "-r", "6", "-t", "3s", "--pool", "pgbouncer", "--fault", "leak",
                      "--profile", "stress", *SMALL],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE, services=stack)
    assert run.code == 1, run.output()
    bouncer = run.check("pool.bouncer_idle")
    assert bouncer["valid"] is False and bouncer["counts"]["clients_of_run"] >= 1, bouncer
    agent = bouncer["evidence"][0]["agent"]
    sessions = run.check("server.sessions")  # the leaked transaction holds a server session, named too
    assert sessions["valid"] is False
    assert any(s["application_name"].endswith(":" + agent) and s["state"] == "idle in transaction"
               for s in sessions["evidence"])


def test_bad_option_is_one_line_and_exit_2(tmp_path: Path) -> None:
    run = run_locust(["-u", "1", "-t", "1s", "--scan-rows", "0"], reports=tmp_path, database_url=None,
                     locustfile=LOCUSTFILE, services={})
    assert run.code == 2, run.output()
    assert run.proc.stderr.strip() == ("toolclash: --scan-rows and --facts-rows must satisfy "
                                       "1 <= scan rows <= facts rows")
    assert not run.run_dir.exists()
