"""Faults on a schedule (``--nemesis``) in real runs of agents on real servers: each fault kind is seen in effect
(not only asked for), healed, recorded in faults.jsonl, drawn on the report's time plots, its recovery measured,
and the verdict truthful: a correct strategy is valid, unknown or an SLA miss (never an anomaly), a known-bad
strategy is still caught. Also the agents' circuit breakers and the emergency stop (``--abort-on``).

Loss and partitions between hosts are in tests/test_multihost.py; the longer matrix (every kind on every scenario,
correct and known-bad, a worker kill under a known-bad strategy, loss and a partition under one) in ``make chaos``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_locust
from tests.faultkit import assert_fault_seen, no_false_check, window
from tests.test_stack import private_dir
from toolclash.history import read_history
from toolclash.nemesis import read_faults
from toolclash.stack.core import Stack

pytestmark = pytest.mark.xdist_group("faults")
"""Under pytest-xdist, one worker runs this module: its module-scoped servers and runs are made once."""

STRESS = ["--profile", "stress", "--strategy", "pessimistic", "--accounts", "5"]
STEADY = ["--wait-min", "0.005", "--wait-max", "0.01", "--strategy", "pessimistic", "--accounts", "100"]
"""A load that stays level (with no think time, a few hot rows slow down as their dead versions pile up, and the
throughput after a fault would be compared with a faster start)."""


@pytest.fixture(scope="module")
def durable() -> Iterator[dict[str, str]]:
    """A durable PostgreSQL of its own (a crash loses no acknowledged commit), shared by this module's crashes."""
    state_dir = private_dir()
    stack = Stack(state_dir, services=("postgres",), durable=True)
    try:
        yield stack.up(timeout=120)
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def clean(url: str) -> str:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS toolclash CASCADE")
        conn.commit()
    finally:
        conn.close()
    return url


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def distributed(workers: int = 2) -> list[str]:
    port = free_port()
    return ["--processes", str(workers), "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
            "--master-port", port]


def test_stop_pause_restart_latency_reset_and_bandwidth_are_seen_healed_plotted_and_recovered(
        database_url: str, tmp_path: Path) -> None:
    run = run_locust(["-u", "8", "-r", "8", "-t", "10s", *STEADY, "--nemesis",
                      "stop postgres at 1.2s for 0.8s; pause postgres at 2.8s for 0.8s; restart postgres at 4.3s; "
                      "latency postgres 20ms±5ms at 5.6s for 0.8s; reset postgres at 6.9s for 0.5s; "
                      "bandwidth postgres 50kbit at 8s for 0.5s"],
                     report=True, reports=tmp_path, database_url=database_url)
    assert run.code in (0, 3, 4), run.output()
    verdict = run.verdict
    no_false_check(verdict)
    stop = assert_fault_seen(run.run_dir, verdict, "stop", "postgres")
    assert "stopped (fast)" in stop["detail"] and "serves again" in stop["detail"]
    pause = assert_fault_seen(run.run_dir, verdict, "pause", "postgres")
    assert "SIGSTOP" in pause["detail"] and "SIGCONT" in pause["detail"]
    assert assert_fault_seen(run.run_dir, verdict, "restart", "postgres")["healed"]
    latency = assert_fault_seen(run.run_dir, verdict, "latency", "postgres")
    assert 15.0 <= float(latency["detail"].split("delayed, ")[1].split(" ms")[0]) <= 25.0, latency["detail"]
    reset = assert_fault_seen(run.run_dir, verdict, "reset", "postgres")
    assert int(reset["detail"].split("cleared; ")[1].split(" connection")[0]) >= 8, reset["detail"]  # every agent's
    bandwidth = assert_fault_seen(run.run_dir, verdict, "bandwidth", "postgres")
    assert float(bandwidth["detail"].split("waited ")[1].split(" s")[0]) > 0, bandwidth["detail"]
    # a paused server answers nothing: no call completed while it was stopped
    ops = read_history(run.run_dir).ops
    paused = window(run.run_dir, "pause")
    assert not [op for op in ops if paused["start"] + 0.05 < op["complete_ts"] < paused["end"] - 0.05
                and op["invoke_ts"] > paused["start"]]
    assert "f1 stop postgres" in run.proc.stdout and "fault.f1(stop postgres).recovery_s" in run.proc.stdout
    assert run.verdict["figures"]["credits"]["ok"] > 100
    # the run directory alone gives the same verdict, recovery figures included
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(run.run_dir)], cwd=ROOT,
                           capture_output=True, text=True, check=False, timeout=120)
    assert again.returncode == run.code, again.stdout + again.stderr
    assert f"{stop['recovery']['first_ok_s']:.2f} s" in again.stdout and "f2 pause postgres" in again.stdout


def test_a_crashed_server_is_not_hammered_and_calls_resume_within_the_gate(durable: dict[str, str],
                                                                          tmp_path: Path) -> None:
    agents, threshold, open_s = 8, 3, 0.5
    run = run_locust(["-u", str(agents), "-r", str(agents), "-t", "10s", *STRESS, "--breaker-failures",
                      str(threshold), "--breaker-open-s", str(open_s), "--nemesis", "crash postgres at 2s for 1.5s"],
                     report=True, reports=tmp_path, database_url=clean(durable["DATABASE_URL"]))
    assert run.code in (0, 3, 4), run.output()
    verdict = run.verdict
    no_false_check(verdict)
    crash = assert_fault_seen(run.run_dir, verdict, "crash", "postgres")
    assert "SIGKILL" in crash["detail"]
    counters = verdict["counters"]
    assert counters["breaker_opened"] >= agents and counters["breaker_skipped"] > 0 and counters["breaker_closed"] > 0
    # no agent hammers the dead server: per agent, at most the threshold plus one trial per half-open period
    # (with no breaker each agent retries its connect as fast as it is refused: hundreds per second)
    down_s = crash["end"] - crash["start"] + crash["spec"]["lag_s"] + 1.0
    assert counters["connect_failures"] + counters.get("calls_fail", 0) <= agents * (threshold + down_s / open_s + 2)
    # calls resume within the recovery gate once it serves again
    assert crash["recovery"]["first_ok_s"] <= 2.0
    gate = next(g for g in verdict["gates"] if g["scope"] == f"fault.{crash['fault_id']}(crash postgres)")
    assert gate["met"] is True, gate


def test_a_known_bad_strategy_is_caught_under_every_server_and_proxy_fault(durable: dict[str, str],
                                                                           tmp_path: Path) -> None:
    schedule = ("stop postgres at 1s for 0.5s; pause postgres at 2s for 0.5s; latency postgres 20ms±5ms at 3s "
                "for 0.5s; reset postgres at 3.8s for 0.4s; bandwidth postgres 100kbit at 4.5s for 0.4s; "
                "restart postgres at 5.2s; crash postgres at 6s for 0.4s")
    run = run_locust(["-u", "16", "-r", "16", "-t", "8s", "--profile", "stress", "--accounts", "1", "--strategy",
                      "naive", "--nemesis", schedule], report=True, reports=tmp_path,
                     database_url=clean(durable["DATABASE_URL"]))
    assert run.code == 1, run.output()
    assert run.check("credits.lost_updates")["valid"] is False
    faults = read_faults(run.run_dir)
    assert sorted(f["kind"] for f in faults) == sorted(["stop", "pause", "latency", "reset", "bandwidth", "restart",
                                                         "crash"]), faults
    assert all(f["healed"] and f["spec"].get("applied", True) for f in faults), faults


def test_latency_resets_bandwidth_and_a_pause_of_redis_keep_the_queue_truthful(stack: dict[str, str],
                                                                               database_url: str,
                                                                               tmp_path: Path) -> None:
    run = run_locust(["-u", "10", "-r", "10", "-t", "7s", "--profile", "stress", "--queue-consumers", "3",
                      "--queue-rate-per-agent", "5", "--queue-capacity", "200", "--nemesis",
                      "latency redis 30ms±10ms at 1.2s for 1s; reset redis at 2.7s for 0.8s; bandwidth redis 64kbit "
                      "at 4s for 0.8s; pause redis at 5.2s for 0.8s"],
                     report=True, reports=tmp_path, database_url=database_url, services=stack,
                     locustfile="locustfiles/jobqueue.py")
    assert run.code in (0, 3, 4), run.output()
    verdict = run.verdict
    no_false_check(verdict)
    # the queue's own throughput is not level (rate limits, a filling queue): its recovery may not be measurable,
    # the first ok call after each fault always is (the gates say when throughput was not back)
    seen = {kind: assert_fault_seen(run.run_dir, verdict, kind, "redis", recovered=False)
            for kind in ("latency", "reset", "bandwidth", "pause")}
    assert all(f["recovery"]["first_ok_s"] is not None for f in seen.values()), seen
    chunks = int(seen["latency"]["detail"].split("cleared; ")[1].split(" chunk")[0])
    mean_ms = float(seen["latency"]["detail"].split("delayed, ")[1].split(" ms")[0])
    assert chunks > 10 and 20.0 <= mean_ms <= 40.0, seen["latency"]["detail"]
    assert int(seen["reset"]["detail"].split("cleared; ")[1].split(" connection")[0]) > 0, seen["reset"]["detail"]
    assert float(seen["bandwidth"]["detail"].split("waited ")[1].split(" s")[0]) > 0, seen["bandwidth"]["detail"]
    assert "SIGSTOP" in seen["pause"]["detail"]
    assert verdict["figures"]["queue"]["ok"] > 100


def test_a_killed_worker_is_seen_gone_and_its_lost_history_makes_the_verdict_unknown(database_url: str,
                                                                                    tmp_path: Path) -> None:
    # the master counts a killed worker missing after about 3 s of silent heartbeats; then the others go on
    # (a known-bad strategy under a worker kill is in make chaos)
    run = run_locust(["-u", "8", "-r", "8", "-t", "7s", "--profile", "stress", "--accounts", "1", "--strategy",
                      "pessimistic", *distributed(2), "--enable-rebalancing", "--nemesis",
                      "worker_kill worker2 at 1.5s"], report=True, reports=tmp_path, database_url=database_url)
    assert run.code == 3, run.output()
    verdict = run.verdict
    no_false_check(verdict)
    kill = assert_fault_seen(run.run_dir, verdict, "worker_kill", "worker2", recovered=False)
    assert "SIGKILL of worker2" in kill["detail"] and "counted it missing" in kill["detail"]
    assert kill["recovery"]["first_ok_s"] is not None  # the other worker's agents went on
    assert verdict["lost_workers"] and verdict["history"]["incomplete"]


def test_abort_on_unreachable_stops_every_worker_in_2s_heals_and_says_why(database_url: str, tmp_path: Path) -> None:
    # the stop comes at 3 s so that agents have made calls first, even on a busy machine where two workers take
    # more than a second to start theirs
    run = run_locust(["-u", "6", "-r", "6", "-t", "60s", *distributed(2), "--nemesis", "stop postgres at 3s for 60s",
                      "--abort-on", "unreachable postgres for 1.5s; error-rate>0.99 for 30s"],
                     report=True, reports=tmp_path, database_url=database_url)
    assert run.seconds < 45, run.output()  # not the 60 s asked for
    assert run.code == 4, run.output()
    verdict = run.verdict
    no_false_check(verdict)
    abort = json.loads((run.run_dir / "abort.json").read_text())
    assert abort["by"] == "abort-on" and "postgres has not answered" in abort["reason"]
    assert abort["stopped_s"] < 2.0, abort  # every worker stopped and delivered within 2 s
    ops = read_history(run.run_dir).ops
    assert ops and all(op["invoke_ts"] < abort["at"] + 2.0 for op in ops)  # no call started after the stop's 2 s
    assert len(verdict["history"]["processes"]) == 2 and not verdict["history"]["incomplete"]
    stop = window(run.run_dir, "stop")
    assert stop["healed"] and stop["end"] < stop["start"] + 30  # healed by the stop, not at its scheduled end
    assert (run.run_dir / "final" / "credits.json").is_file()  # the final state was captured after healing
    gate = next(g for g in verdict["gates"] if g["scope"] == "run" and g["gate"] == "completed")
    assert gate["met"] is False and "postgres has not answered" in gate["note"]
    assert "RUN STOPPED EARLY (abort-on)" in run.proc.stdout


def test_abort_on_a_broken_invariant_stops_the_run_and_the_checks_show_it(database_url: str, tmp_path: Path) -> None:
    run = run_locust(["-u", "16", "-r", "16", "-t", "60s", "--profile", "stress", "--accounts", "1", "--strategy",
                      "check_then_act", "--initial-balance", "400", "--amount-min", "5", "--amount-max", "10",
                      "--tool-think-ms", "2", "--abort-on", "invariant"], report=True, reports=tmp_path,
                     database_url=database_url)
    assert run.code == 1 and run.seconds < 45, run.output()
    abort = json.loads((run.run_dir / "abort.json").read_text())
    assert "negative balance: account 1" in abort["reason"], abort
    assert run.check("credits.no_negative")["valid"] is False


def test_the_web_uis_stop_now_button_stops_the_run_heals_the_fault_and_judges(database_url: str,
                                                                             tmp_path: Path) -> None:
    import os
    import signal

    from playwright.sync_api import sync_playwright

    from tests.conftest import LOCUST
    from tests.test_webui import _reload_row, _row, wait_until

    port, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))}
    env.pop("PROMETHEUS_URL", None)
    env["DATABASE_URL"] = database_url
    proc = subprocess.Popen([LOCUST, "-f", "locustfiles/credits.py", "--web-host", "127.0.0.1", "--web-port", port,
                             "--reports-dir", str(tmp_path), "--metrics-port", metrics, "--loglevel", "WARNING",
                             "--nemesis", "pause postgres at 1.5s for 120s"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})

                def loaded() -> bool:
                    try:
                        page.goto(base + "/")
                        return page.locator("#toolclash-stop-now").count() == 1
                    except Exception:  # noqa: BLE001 - the server is still starting
                        return False

                wait_until("the web UI with its stop button", loaded)
                page.fill("input[name=userCount]", "6")
                page.fill("input[name=spawnRate]", "6")
                page.get_by_role("button", name="Start").click()
                page.get_by_role("tab", name="Consistency").click()
                run_dir = wait_until("the run directory", lambda: next(iter(tmp_path.iterdir()), None))
                wait_until("the pause in effect", lambda: any(f["end"] is None for f in read_faults(run_dir)))
                # Prometheus sees the fault, and the agents' breakers (a paused server fails no connection)
                active = 'toolclash_fault_active{kind="pause",target="postgres"} 1.0'
                scraped = wait_until("the fault on /metrics", lambda: next((t for t in [_scrape(metrics)]
                                                                            if active in t), None))
                assert 'toolclash_breaker_agents{state="closed"} 6.0' in scraped, scraped[-3000:]
                wait_until("the tab's faults row", lambda: _row(page, "faults active") == ("1", "pause postgres"))
                breakers = _row(page, "circuit breakers")
                assert breakers is not None and "closed 6" in breakers[1], breakers
                page.locator("#toolclash-stop-now").click()
                wait_until("the button's answer", lambda: "judging" in page.locator("#toolclash-stop-now")
                           .inner_text(), 10)
                verdict_row = wait_until("the verdict row", lambda: (v := _reload_row(page, base, "verdict"))
                                         and v[0] not in ("RUN UNDER WAY", "JUDGING") and v, 90)
                stop_row = wait_until("the emergency stop row", lambda: _reload_row(page, base, "emergency stop"))
            finally:
                browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    # valid data, but the run did not run its course
    assert verdict_row[0] == "SLA MISSED" and "exit code 4" in verdict_row[1], verdict_row
    assert stop_row[0] == "STOPPED EARLY", stop_row
    abort = json.loads((run_dir / "abort.json").read_text())
    assert abort["by"] == "stop-now" and "web UI" in abort["reason"] and abort["stopped_s"] < 2.0, abort
    pause = window(run_dir, "pause")
    assert pause["healed"] and pause["end"] < pause["start"] + 60 and "SIGCONT" in pause["detail"], pause
    verdict = json.loads((run_dir / "checks.json").read_text())
    no_false_check(verdict)
    assert verdict["aborted"]["reason"] == abort["reason"]


def _scrape(port: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()
