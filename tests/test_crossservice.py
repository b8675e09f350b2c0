"""The crossservice slice against real servers: main and auth PostgreSQL (two clusters) and ClickHouse.

Recovery is exercised directly (coordinators crashed at each point, then resolved from the decision log),
and through short headless Locust runs whose verdicts are read back from reports/<run-id>/checks.json:
the correct modes pass under their injected failures, and each planted fault exits 1 with named evidence.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import ROOT, run_locust
from toolclash.backend import Backend
from toolclash.option import SettingsError
from toolclash.recover import prepared, recover
from toolclash.retry import RetryPolicy
from toolclash.scenario import Context
from toolclash.tools import Call
from toolclash.tools.crossservice import (
    CRASH_POINTS,
    SCENARIO,
    CrossServiceTool,
    Outage,
    Relay,
    auth_server_control,
    clickhouse_client,
    decide,
    gid,
)

LOCUSTFILE = "locustfiles/crossservice.py"
LOAD = ["-u", "8", "-r", "8", "--profile", "stress", "--xs-agents", "4"]


def _clean(urls: dict[str, str]) -> None:
    """Roll back every prepared transaction and drop the project's objects on all three servers."""
    for var in ("DATABASE_URL", "AUTH_DATABASE_URL"):
        conn = psycopg2.connect(urls[var])
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
                for (g,) in cur.fetchall():
                    cur.execute("ROLLBACK PREPARED %s", (g,))
                cur.execute("DROP SCHEMA IF EXISTS toolclash CASCADE")
        finally:
            conn.close()
    ch = clickhouse_client(urls["CLICKHOUSE_URL"])
    try:
        ch.execute("DROP TABLE IF EXISTS xs_usage")
    finally:
        ch.disconnect()


@pytest.fixture
def xs(stack: dict[str, str]) -> Iterator[dict[str, str]]:
    """The session's three servers with the scenario's objects dropped before and after the test."""
    _clean(stack)
    yield stack
    _clean(stack)


def _prepared_counts(urls: dict[str, str]) -> tuple[int, int]:
    out = []
    for var in ("DATABASE_URL", "AUTH_DATABASE_URL"):
        conn = psycopg2.connect(urls[var])
        try:
            out.append(len(prepared(conn)))
        finally:
            conn.close()
    return out[0], out[1]


def _ctx(backend: Backend, **opts: Any) -> Context:
    return SCENARIO.context(backend, SCENARIO.options_from(opts))


def _call(op_id: str) -> Call:
    return Call(op_id=op_id, policy=RetryPolicy(max_tries=3, base_s=0.001, cap_s=0.01, deadline_s=2.0),
                rng=random.Random(1))


class _Crashing(random.Random):
    """An rng that always injects, and crashes at a chosen point."""

    def __init__(self, point: str) -> None:
        super().__init__(7)
        self.point = point

    def random(self) -> float:
        return 0.0

    def choice(self, seq: Any) -> Any:
        return self.point if self.point in seq else super().choice(seq)


def test_recovery_resolves_a_coordinator_crashed_at_every_point_from_the_decision_log(xs: dict[str, str]) -> None:
    backend = Backend(xs, "t-recover")
    ctx = _ctx(backend, xs_agents=5, xs_initial_credits=1000)
    admin = backend.pg("admin")
    opened: list[Any] = []

    def connect(var: str) -> Any:
        conn = backend.pg("agent", var)
        opened.append(conn)
        return conn

    try:
        SCENARIO.reset(ctx, admin)
        for i, point in enumerate(CRASH_POINTS):
            tool = CrossServiceTool(connect, mode="2pc", inject="coordinator_crash", inject_rate=1.0,
                                    rng=_Crashing(point))
            call = tool.grant_tool_access(_call(f"op-{i}"), f"agent-{i + 1}", "web_search", 10)  # no lock waits
            assert call.outcome == "unknown" and call.reason == f"coordinator-crash-{point}", call
            tool.close()
        # a live coordinator loses the race to a recovery that decided abort first: the log arbitrates
        tool = CrossServiceTool(connect, mode="2pc")
        tool.ensure_connected()
        assert decide(tool.main, "op-late", "abort", "recovery") == "abort"
        late = tool.grant_tool_access(_call("op-late"), "agent-5", "email", 5)
        assert late.outcome == "fail" and late.reason == "aborted-by-recovery", late
        tool.close()
        assert _prepared_counts(xs) == (3, 3)  # op-0..2 left main prepared, op-1..3 left auth prepared
        auth = backend.pg("admin", "AUTH_DATABASE_URL")
        try:
            counts = recover(admin, auth, who="test")
        finally:
            auth.close()
        assert _prepared_counts(xs) == (0, 0)
        assert counts["committed"] == 3 and counts["rolled_back"] == 3, counts
        final = SCENARIO.snapshot(ctx, admin)
    finally:
        admin.close()
        for conn in opened:
            conn.close()
    debits = {r["op_id"] for r in final["debits"]}
    grants = {r["op_id"] for r in final["grants"] if r["granted"]}
    decisions = {r["op_id"]: r["decision"] for r in final["decisions"]}
    # crashed before the decision: presumed abort; after it: committed on both servers
    assert debits == grants == {"op-2", "op-3"}
    assert decisions == {"op-0": "abort", "op-1": "abort", "op-2": "commit", "op-3": "commit", "op-late": "abort"}
    balance = {a["agent"]: a["balance"] for a in final["accounts"]}
    assert balance == {"agent-1": 1000, "agent-2": 1000, "agent-3": 990, "agent-4": 990, "agent-5": 1000}


def test_relay_redelivers_and_clickhouse_deduplicates_by_event_id(xs: dict[str, str]) -> None:
    backend = Backend(xs, "t-relay")
    ctx = _ctx(backend, xs_agents=1, xs_initial_credits=1000)
    admin = backend.pg("admin")
    tool = CrossServiceTool(lambda var: backend.pg("agent", var), mode="saga")
    relay = Relay(backend, redeliver_rate=0.5, rng=random.Random(3), batch=3)
    try:
        SCENARIO.reset(ctx, admin)
        for i in range(12):
            assert tool.grant_tool_access(_call(f"op-{i}"), "agent-1", "browser", 2).outcome == "ok"
        assert relay.drain(20.0)
        assert relay.counts["redelivered_batches"] > 0, relay.counts
        final = SCENARIO.snapshot(ctx, admin)
    finally:
        relay.close()
        tool.close()
        admin.close()
    assert relay.counts["deliveries"] > len(final["clickhouse_events"]) == 12  # delivered again, counted once
    assert sum(e["cost"] for e in final["clickhouse_events"]) == 24


def test_2pc_with_coordinator_crashes_exits_0_after_recovery(xs: dict[str, str], tmp_path: Path) -> None:
    # a high redelivery share: on a loaded machine a 3 s run made so few relay batches that none lost its
    # acknowledgement at 0.3 (seen once in CI)
    run = run_locust([*LOAD, "-t", "3s", "--mode", "2pc", "--inject", "coordinator_crash", "--inject-rate", "0.2",
                      "--relay-redeliver-rate", "0.7"],
                     reports=tmp_path, database_url=None, services=xs, locustfile=LOCUSTFILE)
    assert run.code == 0, run.output()
    atomic = run.check("crossservice.atomic")["counts"]
    assert atomic.get("unknown_committed", 0) > 0 and atomic.get("unknown_none", 0) > 0, atomic
    assert run.verdict["counters"]["injected_crashes"] > 0
    fig = run.verdict["figures"]["crossservice"]
    assert fig["decisions_by"].get("recovery-live", 0) + fig["decisions_by"].get("recovery-finish", 0) > 0, fig
    relay = fig["relay"]  # batches were delivered again after a lost acknowledgement, and counted once
    assert relay["redelivered_batches"] > 0 and relay["deliveries"] > fig["clickhouse_events"] > 0, fig
    assert _prepared_counts(xs) == (0, 0)
    assert "crossservice.prepared" in run.proc.stdout


def test_saga_with_terminated_participant_compensates(xs: dict[str, str], tmp_path: Path) -> None:
    run = run_locust([*LOAD, "-t", "3s", "--mode", "saga", "--inject", "participant_terminate",
                      "--inject-rate", "0.2"], reports=tmp_path, database_url=None, services=xs, locustfile=LOCUSTFILE)
    assert run.code == 0, run.output()
    atomic = run.check("crossservice.atomic")["counts"]
    assert atomic.get("fail_compensated", 0) > 0 and atomic.get("ok_committed", 0) > 0, atomic
    assert run.check("crossservice.credits")["counts"]["refunded"] > 0
    assert run.check("crossservice.analytics")["valid"] is True


def test_clickhouse_outage_backs_up_the_outbox_which_drains_after(xs: dict[str, str], tmp_path: Path) -> None:
    run = run_locust([*LOAD, "-t", "2s", "--mode", "saga", "--inject", "clickhouse_outage", "--outage-after-s", "0.3",
                      "--outage-s", "1.2"], reports=tmp_path, database_url=None, services=xs, locustfile=LOCUSTFILE)
    assert run.code == 0, run.output()
    fig = run.verdict["figures"]["crossservice"]
    assert fig["relay"]["outages"] == 1 and fig["relay"]["errors"] > 0 and fig["relay"]["drained"] == 1, fig
    assert fig["analytics_lag_max_ms"] >= 1000, fig  # events waited out the outage in the outbox
    assert run.check("crossservice.analytics")["counts"]["events"] == fig["clickhouse_events"] > 0


def test_saga_survives_the_auth_server_stopped_immediately_and_started(xs: dict[str, str], tmp_path: Path) -> None:
    """pg_ctl stop -m immediate of the auth server mid-run, then start: calls in flight fail or complete as a whole
    (sagas compensate once auth is back), agents reconnect, and acknowledged grants survive the crash."""
    run = run_locust([*LOAD, "-t", "3s", "--mode", "saga", "--inject", "auth_restart", "--outage-after-s", "0.5",
                      "--outage-s", "1"], reports=tmp_path, database_url=None, services=xs, locustfile=LOCUSTFILE)
    assert run.code == 0, run.output()
    fig = run.verdict["figures"]["crossservice"]
    assert fig["relay"]["outages"] == 1, fig
    atomic = run.check("crossservice.atomic")["counts"]
    assert atomic.get("ok_committed", 0) > 0 and atomic.get("ok_partial", 0) == 0, atomic
    assert atomic.get("fail_compensated", 0) > 0, atomic  # calls caught by the stop were undone, not left half
    assert _prepared_counts(xs) == (0, 0)  # the auth server is back and answers


def test_no_recovery_leaves_in_doubt_transactions_and_the_cli_resolves_them(xs: dict[str, str],
                                                                            tmp_path: Path) -> None:
    run = run_locust([*LOAD, "-t", "2s", "--mode", "2pc", "--inject", "coordinator_crash", "--inject-rate", "0.2",
                      "--fault", "no_recovery"], reports=tmp_path, database_url=None, services=xs,
                     locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    left = run.check("crossservice.prepared")
    assert left["valid"] is False and left["counts"]["main"] + left["counts"]["auth"] > 0
    first = left["evidence"][0]
    assert first["store"] in ("main", "auth") and first["gid"] == gid(first["op_id"], first["gid"][-1])
    assert "crossservice.prepared" in run.proc.stdout and "FALSE" in run.proc.stdout
    left_anywhere = run.check("server.prepared")  # the run-wide check sees them too, on both servers' lists
    assert left_anywhere["valid"] is False and left_anywhere["counts"]["left_prepared"] == (
        left["counts"]["main"] + left["counts"]["auth"]), left_anywhere
    ev = left_anywhere["evidence"][0]
    assert ev["gid"].startswith("xs:") and ev["server"] in ("DATABASE_URL", "AUTH_DATABASE_URL"), ev
    assert sum(_prepared_counts(xs)) > 0
    env = {**os.environ, "DATABASE_URL": xs["DATABASE_URL"], "AUTH_DATABASE_URL": xs["AUTH_DATABASE_URL"]}
    cli = subprocess.run([sys.executable, "-m", "toolclash.recover"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "prepared left: main 0, auth 0" in cli.stdout
    assert _prepared_counts(xs) == (0, 0)


def test_skip_compensation_leaves_a_debit_and_is_caught(xs: dict[str, str], tmp_path: Path) -> None:
    run = run_locust([*LOAD, "-t", "3s", "--mode", "saga", "--inject", "participant_terminate",
                      "--inject-rate", "0.2", "--fault", "skip_compensation"],
                     reports=tmp_path, database_url=None, services=xs, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    atomic = run.check("crossservice.atomic")
    assert atomic["valid"] is False
    ev = atomic["evidence"][0]
    assert ev["op_id"] and ev["store"] == "main" and ev["main_debit"] and not ev["auth_grant"], ev
    # the verdict is a function of the run directory alone: the same without any server
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(run.run_dir)], cwd=ROOT,
                           capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode == 1 and ev["op_id"] in again.stdout, again.stdout + again.stderr


def test_double_charge_is_caught_by_the_credits_balance(xs: dict[str, str], tmp_path: Path) -> None:
    """--fault double_charge: a share of debits update the balance twice with one debit row; every operation is
    still all-or-nothing across the stores, but the balances no longer match the debits."""
    run = run_locust([*LOAD, "-t", "3s", "--mode", "2pc", "--fault", "double_charge"],
                     reports=tmp_path, database_url=None, services=xs, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    credits = run.check("crossservice.credits")
    assert credits["valid"] is False and credits["counts"]["mismatched"] > 0, credits
    ev = credits["evidence"][0]
    assert ev["store"] == "main" and ev["final"] < ev["expected"], ev
    assert run.check("crossservice.atomic")["valid"] is True


def test_relay_without_dedup_double_counts_and_is_caught(xs: dict[str, str], tmp_path: Path) -> None:
    run = run_locust([*LOAD, "-t", "3s", "--mode", "2pc", "--fault", "relay_without_dedup",
                      "--relay-redeliver-rate", "0.3"],
                     reports=tmp_path, database_url=None, services=xs, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    analytics = run.check("crossservice.analytics")
    assert analytics["valid"] is False
    ev = analytics["evidence"][0]
    assert ev["store"] == "clickhouse" and ev["what"] == "counted more than once" and ev["usage_events"] > 1, ev
    assert run.check("crossservice.atomic")["valid"] is True  # main and auth are right: only analytics is off


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--mode", "3pc"], {}, "--mode"),
    ([], {"CLICKHOUSE_URL": "http://127.0.0.1:1/x"}, "CLICKHOUSE_URL"),
])
def test_bad_input_is_one_line_and_exit_2(xs: dict[str, str], tmp_path: Path, args: list[str],
                                         env: dict[str, str], message: str) -> None:
    run = run_locust([*LOAD, "-t", "1s", *args], reports=tmp_path, database_url=None, services={**xs, **env},
                     locustfile=LOCUSTFILE)
    assert run.code == 2, run.output()
    lines = [line for line in run.proc.stderr.splitlines() if line.strip()]
    assert any(message in line for line in lines) and "Traceback" not in run.proc.stderr, run.output()


def test_recover_cli_without_urls_is_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "AUTH_DATABASE_URL")}
    cli = subprocess.run([sys.executable, "-m", "toolclash.recover"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "DATABASE_URL is not set" in cli.stderr, cli


def test_options_keep_their_bounds_and_cross_checks() -> None:
    assert SCENARIO.options_from({}).inject_rate == 0.1
    for values, flag in (({"inject_rate": 1.5}, "--inject-rate"), ({"xs_agents": 0}, "--xs-agents"),
                         ({"mode": "3pc"}, "--mode"), ({"relay_redeliver_rate": 1.0}, "--relay-redeliver-rate"),
                         ({"outage_s": 0.0}, "--outage-s"), ({"relay_interval_s": 0.0}, "--relay-interval-s")):
        with pytest.raises(SettingsError, match=flag):
            SCENARIO.options_from(values)


def _answers(url: str) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def _wait_for(url: str, up: bool, deadline_s: float = 60.0) -> float:
    limit = time.monotonic() + deadline_s
    while _answers(url) != up:
        assert time.monotonic() < limit, f"the auth server did not come {'up' if up else 'down'} in {deadline_s} s"
        time.sleep(0.05)
    return time.monotonic()


def test_outage_starts_after_its_delay_lasts_its_length_and_stop_ends_it(xs: dict[str, str]) -> None:
    """The real auth server: stopped after the delay, back after the length by its own clock; stop() during an
    outage brings it back at once; stop() before the delay leaves it alone."""
    url = xs["AUTH_DATABASE_URL"]
    backend = Backend(xs, "outage-test")
    server = auth_server_control(backend)
    started = time.monotonic()
    outage = Outage(backend, "auth_restart", after_s=0.3, length_s=1.0, auth_server=server).start()
    down = _wait_for(url, up=False)
    up = _wait_for(url, up=True)
    outage.stop()
    assert down - started >= 0.3 and up - down >= 1.0, (down - started, up - down)
    assert outage.counts == {"outages": 1}

    cut = Outage(backend, "auth_restart", after_s=0.0, length_s=60.0, auth_server=server).start()
    _wait_for(url, up=False)
    cut.stop()  # during the outage: the server is started again before stop() returns
    assert _answers(url)

    never = Outage(backend, "auth_restart", after_s=60.0, length_s=1.0, auth_server=server).start()
    never.stop()
    assert never.counts == {} and _answers(url)


def _terminate(url: str, pid: int) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(200):
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cur.fetchone()[0] == 0:
                    return
                time.sleep(0.01)
    finally:
        conn.close()


def test_a_failure_is_labelled_injected_only_where_the_injector_caused_it(xs: dict[str, str]) -> None:
    """Under --inject auth_restart, a lost connection is ``injected-fault`` (left out of the success rate) only
    when it was the auth step's and the auth server is really down; a lost main connection, or an auth connection
    lost while the server answers, is an ordinary failure. Before, any connection failure during the run was
    labelled injected."""
    backend = Backend(xs, "t-label")
    ctx = _ctx(backend, xs_agents=3, xs_initial_credits=1000)
    admin = backend.pg("admin")
    opened: list[Any] = []

    def connect(var: str) -> Any:
        conn = backend.pg("agent", var)
        opened.append(conn)
        return conn

    server = auth_server_control(backend)
    try:
        SCENARIO.reset(ctx, admin)
        tool = CrossServiceTool(connect, mode="2pc", inject="auth_restart")
        tool.ensure_connected()
        _terminate(xs["DATABASE_URL"], tool.main.get_backend_pid())  # main's session dies: not the injector's doing
        main_lost = tool.grant_tool_access(_call("op-main"), "agent-1", "web_search", 5)
        assert main_lost.outcome == "fail" and main_lost.reason == "connection-lost", main_lost
        tool.close()
        tool.ensure_connected()
        _terminate(xs["AUTH_DATABASE_URL"], tool.auth.get_backend_pid())  # auth's session dies, the server answers
        auth_lost = tool.grant_tool_access(_call("op-auth"), "agent-2", "web_search", 5)
        assert auth_lost.outcome == "fail" and auth_lost.reason == "connection-lost", auth_lost
        tool.close()
        tool.ensure_connected()
        server.stop("immediate")  # what the injector does
        _wait_for(xs["AUTH_DATABASE_URL"], up=False)
        injected = tool.grant_tool_access(_call("op-down"), "agent-3", "web_search", 5)
        assert injected.outcome == "fail" and injected.reason == "injected-fault", injected
        tool.close()
    finally:
        if not _answers(xs["AUTH_DATABASE_URL"]):
            server.start()
            _wait_for(xs["AUTH_DATABASE_URL"], up=True)
        admin.close()
        for conn in opened:
            conn.close()
