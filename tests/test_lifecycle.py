"""Bad input, graceful stop and the web UI: what a user meets around a run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import LOCUST, ROOT, run_locust


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll *condition* until it returns something truthy, or fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_sessions(url: str, run_id: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid, state FROM pg_stat_activity WHERE application_name LIKE %s",
                        (f"tc:{run_id}:%",))
            return cur.fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize(("args", "env_url", "needle"), [
    (["--strategy", "bogus"], None, "--strategy"),
    (["--bogus-option"], None, "unrecognized arguments"),
    (["--accounts", "0"], None, "--accounts must be greater than 0"),
    (["--amount-min", "9", "--amount-max", "2"], None, "--amount-min"),
    (["--profile", "turbo"], None, "--profile"),
    ([], "mysql://user:hunter2@127.0.0.1/db", "not a PostgreSQL URL"),
    ([], "postgresql://user:hunter2@127.0.0.1:1/db", "cannot connect"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args: list[str], env_url: str | None, needle: str,
                                                            tmp_path: Path) -> None:
    run = run_locust(["-u", "1", "-r", "1", "-t", "2s", *args], reports=tmp_path, database_url=env_url, timeout=60)
    assert run.code == 2, run.output()
    errors = [ln for ln in run.proc.stderr.splitlines() if needle in ln]
    assert len(errors) == 1, run.output()
    assert "Traceback" not in run.proc.stderr
    assert "hunter2" not in run.proc.stderr + run.proc.stdout  # secrets stay secret
    assert not run.run_dir.exists()  # no half-written report


def test_existing_run_id_is_refused(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    run = run_locust(["-u", "1", "-r", "1", "-t", "2s"], reports=tmp_path, database_url=database_url, run_id="taken")
    assert run.code == 2, run.output()
    assert "exists already" in run.proc.stderr
    assert list((tmp_path / "taken").iterdir()) == []


def test_ctrl_c_ends_the_run_with_a_complete_report_and_no_sessions(database_url: str, tmp_path: Path) -> None:
    """SIGINT mid-run (agents mid-call, no --stop-timeout): verdict written, every session closed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))}
    env["DATABASE_URL"] = database_url
    run_dir = tmp_path / "sigint"
    proc = subprocess.Popen(
        [LOCUST, "-f", "locustfiles/credits.py", "--headless", "-u", "20", "-r", "20", "-t", "60s",
         "--profile", "stress", "--accounts", "2", "--strategy", "pessimistic", "--reports-dir", str(tmp_path),
         "--run-id", "sigint", "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in (run_dir / "history").glob("*.arrow")), 30,
                 "the first history batch")
        assert len(run_sessions(database_url, "sigint")) >= 10  # the agents are connected and working
        proc.send_signal(signal.SIGINT)
        stopped_at = time.monotonic()
        out, err = proc.communicate(timeout=30)
        stop_seconds = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 4), f"{proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = json.loads((run_dir / "checks.json").read_text())
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
    assert verdict["history"]["incomplete"] == {}
    assert run_sessions(database_url, "sigint") == []  # nothing idle in transaction, nothing left at all
    assert "toolclash verdict" in out and (run_dir / "report.html").is_file()
    print(f"stopped {stop_seconds:.2f} s after SIGINT")


def test_run_time_limit_stops_agents_mid_call_and_unknowns_are_resolved(database_url: str, tmp_path: Path) -> None:
    """-t without --stop-timeout kills agents mid-call: those calls are unknown, resolved by the ledger."""
    run = run_locust(["-u", "30", "-r", "30", "-t", "3s", "--profile", "stress", "--accounts", "1",
                      "--strategy", "pessimistic", "--tool-think-ms", "5"], reports=tmp_path,
                     database_url=database_url)
    assert run.code in (0, 4), run.output()
    ledger = run.check("credits.ledger")
    assert ledger["valid"] is True
    counts = ledger["counts"]
    assert counts["unknown_applied"] + counts["unknown_not_applied"] > 0, counts  # calls really were cut short
    assert run.check("server.sessions")["valid"] is True
    assert run_sessions(database_url, "t") == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, data: dict[str, str] | None = None) -> Any:
    body = None if data is None else "&".join(f"{k}={v}" for k, v in data.items()).encode()
    with urllib.request.urlopen(url, data=body, timeout=10) as resp:  # loopback only
        raw = resp.read().decode()
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def test_web_ui_shows_options_runs_and_serves_the_verdict(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))}
    env["DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        [LOCUST, "-f", "locustfiles/credits.py", "--web-host", "127.0.0.1", "--web-port", str(port),
         "--reports-dir", str(tmp_path), "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def index() -> str | None:
            try:
                return str(http(base + "/"))
            except OSError:
                return None
        page = wait_for(index, 30, "the web UI")
        for option in ("strategy", "accounts", "account_choice", "max_tries", "gate_p95_ms"):
            assert f'"{option}"' in page, option  # custom options are in the start form
        assert "hunter2" not in page
        started = http(base + "/swarm", {"user_count": "10", "spawn_rate": "10", "host": "",
                                         "strategy": "optimistic", "accounts": "2", "wait_min": "0",
                                         "wait_max": "0.01"})
        assert started["success"] is True, started
        wait_for(lambda: http(base + "/stats/requests")["total_rps"] > 0, 30, "requests to flow")
        http(base + "/stop", {})
        verdict = wait_for(lambda: http(base + "/toolclash/verdict")["verdict"], 30, "the verdict")
        assert verdict["exit_code"] in (0, 4)
        assert all(c["valid"] is True for c in verdict["checks"])
        options = json.loads((tmp_path / verdict["run_id"] / "options.json").read_text())
        assert options["settings"]["strategy"] == "optimistic"  # the form's choice was used
        assert verdict["figures"]["credits"]["ok"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 4)


def test_processes_hand_their_histories_to_the_master(database_url: str, tmp_path: Path) -> None:
    """--processes 2: each worker writes and closes its own history; the master's verdict counts them all."""
    port = str(free_port())
    run = run_locust(["-u", "12", "-r", "12", "-t", "4s", "--processes", "2", "--master-bind-host", "127.0.0.1",
                      "--master-bind-port", port, "--master-port", port, "--profile", "stress", "--accounts", "2",
                      "--strategy", "pessimistic"], reports=tmp_path, database_url=database_url)
    assert run.code in (0, 4), run.output()
    verdict = run.verdict
    assert len(verdict["history"]["processes"]) == 2, verdict["history"]
    assert verdict["history"]["incomplete"] == {}
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
    # Every completed call reached Locust's statistics on the master, once.
    stats = json.loads((run.run_dir / "locust_stats.json").read_text())
    fig = verdict["figures"]["credits"]
    assert stats["total"]["num_requests"] == fig["ok"] + fig["failed"] + fig["rejected"] > 0
    # The custom counters were summed from both workers' reports, nothing lost or counted twice.
    counters = verdict["counters"]
    assert counters["calls_ok"] == counters["commits"] == fig["ok"]
    assert counters["attempts"] == fig["attempts"]


def test_ramp_records_stages_and_a_missed_stage_gate_names_its_stage(database_url: str, tmp_path: Path) -> None:
    """The ramp (credit agents): every stage gets its own gates; a missed one exits 4 and is named; checks re-derive."""
    run = run_locust(["--stages", "2,12", "--stage-seconds", "3", "--stage-spawn-rate", "50", "--profile", "stress",
                      "--accounts", "1", "--strategy", "serializable", "--stage-gate-conflict-high", "0"],
                     reports=tmp_path, database_url=database_url, locustfile="tests/locustfiles/ramp_credits.py")
    assert run.code == 4, run.output()
    stages = json.loads((run.run_dir / "stages.json").read_text())
    assert [(s["stage"], s["users"]) for s in stages] == [(1, 2), (2, 12)]
    verdict = run.verdict
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
    missed = {g["scope"] + "." + g["gate"] for g in verdict["gates"] if not g["met"]}
    assert "credits.stage2(12).conflict_rate" in missed, missed
    assert "credits.stage2(12).conflict_rate" in run.proc.stdout
    per_stage = verdict["figures"]["credits.stage1(2)"]["calls"] + verdict["figures"]["credits.stage2(12)"]["calls"]
    assert per_stage == verdict["figures"]["credits"]["calls"]  # every operation lands in exactly one stage
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(run.run_dir)], cwd=ROOT,
                           capture_output=True, text=True, check=False)
    assert again.returncode == 4, again.stdout + again.stderr


def test_a_killed_worker_makes_the_verdict_unknown_and_is_named(database_url: str, tmp_path: Path) -> None:
    """SIGKILL one of two worker processes mid-run: the run still ends, exit 3, the lost process is named."""
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))}
    env["DATABASE_URL"] = database_url
    history = tmp_path / "killed" / "history"
    proc = subprocess.Popen(
        [LOCUST, "-f", "locustfiles/credits.py", "--headless", "-u", "10", "-r", "10", "-t", "8s", "--processes", "2",
         "--report", "none", "--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--master-port", port,
         "--profile", "stress", "--accounts", "2", "--strategy", "pessimistic", "--reports-dir", str(tmp_path),
         "--run-id", "killed", "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = wait_for(lambda: next((p for p in history.glob("*-w0.arrow") if p.stat().st_size > 0), None), 30,
                          "worker 0's first history batch")
        os.kill(int(victim.name.split("-")[-2]), signal.SIGKILL)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, f"{proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = json.loads((tmp_path / "killed" / "checks.json").read_text())
    lost = victim.name[: -len(".arrow")]
    assert lost in verdict["history"]["incomplete"]
    complete = next(c for c in verdict["checks"] if c["name"] == "history.complete")
    assert complete["valid"] == "unknown" and complete["evidence"][0]["process"] == lost
    assert not any(c["valid"] is False for c in verdict["checks"])  # a lost worker is doubt, never an anomaly
    assert lost in out


def test_web_ui_runs_the_ramp_shape_live_and_serves_per_stage_gates(stack: dict[str, str], database_url: str,
                                                                  tmp_path: Path) -> None:
    """mixed.py in the web UI with the class picker: start the ramp from the form, watch agents and counters
    move through /stats/requests and /toolclash/verdict, and get the verdict with every stage's gates."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))}
    env.update(stack)  # mixed.py needs every service
    env["DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        [LOCUST, "-f", "locustfiles/mixed.py", "--class-picker", "--web-host", "127.0.0.1", "--web-port", str(port),
         "--reports-dir", str(tmp_path), "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def index() -> str | None:
            try:
                return str(http(base + "/"))
            except OSError:
                return None
        page = wait_for(index, 30, "the web UI")
        for option in ("stages", "stage_seconds", "stage_spawn_rate", "stage_gate_conflict_high"):
            assert f'"{option}"' in page, option  # the ramp's options are in the start form
        assert "RampShape" in page
        started = http(base + "/swarm", {"user_classes": "CreditAgent", "shape_class": "RampShape", "host": "",
                                         "stages": "2,5", "stage_seconds": "3", "stage_spawn_rate": "50",
                                         "strategy": "pessimistic", "wait_min": "0", "wait_max": "0.05"})
        assert started["success"] is True and "RampShape" in started["message"], started
        seen: list[int] = []

        def ramped() -> bool:
            seen.append(http(base + "/stats/requests")["user_count"])
            return 5 in seen
        wait_for(ramped, 30, "the ramp to reach its second stage")
        # the agents came in stages: stage 1's two ran (3 s, polled every 0.1 s) before any third one came
        assert 2 in seen and max(seen[:seen.index(2) + 1]) == 2, str(seen)
        live = http(base + "/toolclash/verdict")
        assert live["active"] is True and live["counters"].get("commits", 0) > 0, live  # counters move live
        verdict = wait_for(lambda: http(base + "/toolclash/verdict")["verdict"], 30, "the shape to end the run")
        assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
        scopes = {g["scope"] for g in verdict["gates"]}
        assert {"credits.stage1(2)", "credits.stage2(5)"} <= scopes, scopes
        runs = [d.name for d in tmp_path.iterdir() if d.is_dir()]
        assert runs == [verdict["run_id"]], runs  # one run, opened once (no orphan directory of a first ramp tick)
        stages = json.loads((tmp_path / verdict["run_id"] / "stages.json").read_text())
        assert [(st["stage"], st["users"]) for st in stages] == [(1, 2), (2, 5)], stages
        assert stages[1]["start"] - stages[0]["start"] >= 2.5, stages  # stage 1 lasted its --stage-seconds (3)
        assert verdict["counters"]["commits"] == verdict["figures"]["credits"]["ok"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
