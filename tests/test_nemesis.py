"""The nemesis's pieces that need no server: the schedule's syntax, the record, recovery as the verdict measures
it, the fault bands on the report's plots, the circuit breaker, the emergency stop's conditions, and a bad
schedule refused with one line before any agent starts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from checks.faults import recovery, windows
from checks.report import write_report
from checks.verdict import evaluate, render
from tests.conftest import LOCUST, ROOT
from tests.faultkit import band_columns, report_images
from toolclash.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from toolclash.nemesis import NemesisError, parse, read_faults
from toolclash.nemesis.abort import AbortMonitor, parse_abort
from toolclash.nemesis.record import FaultLog

T0 = 1_800_000_000.0


def test_the_issues_examples_parse_into_windows() -> None:
    plan = parse("stop postgres at 5s for 3s; latency redis 100ms±20ms from 10s to 25s\n"
                 "loss worker2-postgres 10% from 30s to 40s  # between worker 2 and the database\n"
                 "partition worker1-master at 45s for 8s; crash redis at 1s for 1s every 5s times 3; "
                 "worker_kill worker2 at 3s; reset pgbouncer 50% at 1s for 2s; bandwidth clickhouse 64kbit at 1s "
                 "for 4s; restart auth at 2s; pause postgresql at 50s for 1s")
    stop, latency, loss, partition, crash, kill, reset, bandwidth, restart, pause = plan.faults
    assert (stop.kind, stop.target, stop.at_s, stop.for_s, stop.params["mode"]) == ("stop", "postgres", 5, 3, "fast")
    assert (latency.at_s, latency.for_s, latency.params) == (10, 15, {"delay_ms": 100, "jitter_ms": 20})
    assert (loss.ends, loss.params["share"], loss.for_s) == (("worker2", "postgres"), 0.1, 10)
    assert partition.ends == ("worker1", "master") and partition.for_s == 8
    assert [(crash.fault_id(k), at) for k, at in crash.starts()] == [("f5.1", 1), ("f5.2", 6), ("f5.3", 11)]
    assert kill.for_s == 0 and reset.params["share"] == 0.5 and bandwidth.params["rate_bytes_s"] == 8000
    assert (restart.target, restart.for_s, pause.target) == ("auth_postgres", 0, "postgres")
    assert plan.proxied() == ["redis", "pgbouncer", "clickhouse"]
    assert plan.losing_writes() == ["redis"]  # a crash of a non-durable Redis loses its data
    assert plan.hosts() == ["worker2", "worker1", "master"]


@pytest.mark.parametrize(("spec", "says"), [
    ("stop postgress at 5s for 3s", "unknown service 'postgress'"),
    ("stop postgres at 5s", "needs a duration"),
    ("latency redis at 1s for 2s", "latency needs a delay"),
    ("loss postgres-redis 10% at 1s for 1s", "at least one end must be a host"),
    ("crash postgres at 1s for 2s every 1s", "must be longer than the fault's duration"),
    ("stop postgres at 1s for 3s; crash postgres at 2s for 1s", "overlap on postgres"),
    ("worker_kill worker at 1s for 2s", "takes no duration"),
    ("pause redis from 5s to 2s", "must come after"),
    ("flood redis at 1s for 1s", "unknown fault kind"),
    ("loss worker1-postgres 150% at 1s for 1s", "at most 100%"),
])
def test_a_bad_schedule_says_what_in_one_line(spec: str, says: str) -> None:
    with pytest.raises(NemesisError) as err:
        parse(spec)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_bad_schedule_or_target_exits_2_with_one_line_before_any_agent(tmp_path: Path) -> None:
    schedule = tmp_path / "faults.txt"
    schedule.write_text("# a fault per line\nstop postgres at 1s for 1s\nlatency redis 10ms at 2s for 1s\n")
    for args, says in ((["--nemesis", "stop postgres at 1s", "--abort-on", "invariant"], "needs a duration"),
                       (["--nemesis-file", str(schedule)], "does not use redis")):
        proc = subprocess.run([LOCUST, "-f", "locustfiles/credits.py", "--headless", "-u", "1", "-t", "2s",
                               "--reports-dir", str(tmp_path), "--metrics-port", "0", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("toolclash:")]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(lines) == 1 and says in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["faults.txt"]  # no run directory was made


def test_settings_refuse_a_bad_abort_condition_and_an_unreadable_schedule(tmp_path: Path) -> None:
    from toolclash.nemesis import load
    from toolclash.option import SettingsError
    from toolclash.settings import Settings

    with pytest.raises(SettingsError, match="--abort-on 'errors>5': expected"):
        Settings.from_mapping({"abort_on": "errors>5"})
    with pytest.raises(NemesisError, match=r"--nemesis-file .*nope\.txt: cannot read it"):
        load("", str(tmp_path / "nope.txt"))


def test_the_record_is_rewritten_whole_and_read_back_in_order(tmp_path: Path) -> None:
    log = FaultLog(tmp_path)
    log.opened("f2", "pause", "redis", T0 + 5, {"text": "pause redis at 5s for 1s"}, "SIGSTOP")
    log.opened("f1", "stop", "postgres", T0 + 1, {"text": "stop postgres at 1s for 1s"}, "stopped")
    assert [r["end"] for r in read_faults(tmp_path)] == [None, None]  # open windows are on file at once
    log.closed("f1", T0 + 2, True, "stopped; end: serves again")
    log.not_applied("f3", "restart", "postgres", T0 + 7, {"text": "restart postgres at 7s"}, "not running")
    with (tmp_path / "faults.jsonl").open("a") as fh:
        fh.write('{"torn": ')
    faults = read_faults(tmp_path)
    assert [f["fault_id"] for f in faults] == ["f1", "f2", "f3"]
    assert faults[0]["healed"] is True and faults[0]["end"] == T0 + 2 and faults[1]["healed"] is False
    assert faults[2]["spec"]["applied"] is False and faults[2]["detail"].startswith("not applied")


def _ops(times: list[float]) -> list[dict]:
    return [{"op_id": f"p-{i}", "process": "p", "agent": "a", "tool": "deduct", "strategy": "atomic",
             "args": {"account": 1, "amount": 1}, "invoke_ts": t - 0.01, "complete_ts": t, "outcome": "ok",
             "attempts": 1, "error_class": None, "reason": None, "result": {}} for i, t in enumerate(times)]


def test_recovery_is_the_first_ok_and_the_moment_throughput_is_back() -> None:
    # 10 ok calls/s for 10 s, nothing during the fault (10 s .. 12 s), 2 calls/s for 1 s, then 10/s again
    times = [T0 + i / 10 for i in range(100)] + [T0 + 12.3, T0 + 12.8] + [T0 + 13 + i / 10 for i in range(50)]
    ok = sorted(times)
    fault = {"fault_id": "f1", "kind": "stop", "target": "postgres", "start": T0 + 10, "end": T0 + 12,
             "spec": {}, "healed": True, "detail": ""}
    rec = recovery(fault, ok, T0, ok[-1])
    assert rec["first_ok_s"] == pytest.approx(0.3)
    assert rec["baseline_ok_per_s"] == pytest.approx(10, rel=0.02) and rec["window_s"] == pytest.approx(1.0)
    # from the call at 12.8 s on, the next second holds 9 calls (0.9 of 10/s); from 12.3 s on it held only 2
    assert rec["throughput_s"] == pytest.approx(0.8)
    assert recovery({**fault, "end": None}, ok, T0, ok[-1])["note"] == "not healed"
    early = recovery({**fault, "start": T0 + 0.2}, ok, T0, ok[-1])
    assert early["throughput_s"] is None and "no throughput before the fault" in early["note"]
    never = recovery(fault, ok[:102], T0, ok[101])  # the run ended before throughput came back
    assert never["throughput_s"] is None and "before the run ended" in never["note"]


def _run_dir(root: Path, faults: list[dict]) -> Path:
    run = root / "run"
    (run / "history").mkdir(parents=True)
    times = [T0 + i / 10 for i in range(100)] + [T0 + 13 + i / 10 for i in range(50)]
    (run / "history" / "p.jsonl").write_text("".join(json.dumps(op) + "\n" for op in _ops(times)))
    (run / "history" / "p.done.json").write_text(json.dumps({"process": "p", "records": len(times)}))
    (run / "options.json").write_text(json.dumps({"run_id": "hand", "started_at": T0, "scenarios": ["credits"],
                                                  "settings": {"gate_recovery_s": 2.0}}))
    (run / "final").mkdir()
    (run / "final" / "credits.json").write_text(json.dumps({
        "credit_accounts": [{"id": 1, "balance": 850, "initial_balance": 1000, "version": 150}],
        "credit_ledger": [{"seq": i, "op_id": op["op_id"], "account_id": 1, "amount": 1, "balance_before": 1000 - i,
                           "balance_after": 999 - i, "agent": "a"} for i, op in enumerate(_ops(times))]}))
    if faults:
        (run / "faults.jsonl").write_text("".join(json.dumps(f) + "\n" for f in faults))
    return run


def test_the_verdict_names_each_fault_gates_its_recovery_and_the_report_shades_it(tmp_path: Path) -> None:
    faults = [{"fault_id": "f1", "kind": "crash", "target": "postgres", "start": T0 + 10, "end": T0 + 12.9,
               "spec": {"text": "crash postgres at 10s for 3s"}, "healed": True, "detail": "SIGKILL of postgres"}]
    run = _run_dir(tmp_path, faults)
    verdict = evaluate(run)
    assert [f["fault_id"] for f in verdict["faults"]] == ["f1"]
    gate = next(g for g in verdict["gates"] if g["scope"] == "fault.f1(crash postgres)")
    assert gate["gate"] == "recovery_s" and gate["met"] is True and gate["figure"] == pytest.approx(0.1, abs=0.05)
    assert next(c for c in verdict["checks"] if c["name"] == "faults.healed")["valid"] is True
    text = render(verdict)
    assert "f1 crash postgres" in text and "SIGKILL of postgres" in text
    (run / "checks.json").write_text(json.dumps(verdict))
    write_report(run)
    images = report_images(run)
    shaded = band_columns(images["Throughput and agents over time"])
    latency = band_columns(images["Latency percentiles over time"])
    assert shaded > 0 and latency > 0
    assert "<h2>Faults</h2>" in (run / "report.html").read_text()
    # the same run without its fault: no band anywhere
    clean = _run_dir(tmp_path / "clean", [])
    (clean / "checks.json").write_text(json.dumps(evaluate(clean)))
    write_report(clean)
    assert all(band_columns(png) == 0 for png in report_images(clean).values())
    # a fault twice as long draws a band about twice as wide
    (run / "faults.jsonl").write_text(json.dumps({**faults[0], "end": T0 + 15.8}) + "\n")
    (run / "checks.json").write_text(json.dumps(evaluate(run)))
    write_report(run)
    wider = band_columns(report_images(run)["Latency percentiles over time"])  # lines only: nothing covers the band
    assert 1.6 * latency < wider < 2.4 * latency


def test_a_fault_left_in_effect_makes_the_verdict_unknown_never_an_anomaly(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [{"fault_id": "f1", "kind": "partition", "target": "worker1-master", "start": T0 + 10,
                               "end": None, "spec": {}, "healed": False, "detail": "could not heal"},
                              {"fault_id": "f2", "kind": "restart", "target": "postgres", "start": T0 + 11,
                               "end": T0 + 11, "spec": {"applied": False}, "healed": True,
                               "detail": "not applied: postgres is not running"}])
    verdict = evaluate(run)
    assert verdict["exit_code"] == 3
    assert next(c for c in verdict["checks"] if c["name"] == "faults.healed")["valid"] == "unknown"
    applied = next(g for g in verdict["gates"] if g["scope"] == "fault.f2(restart postgres)")
    assert applied["gate"] == "applied" and applied["met"] is False and "not running" in applied["note"]
    assert windows(run, [])[0]["recovery"]["note"] == "not healed"


def test_a_breaker_opens_after_n_failures_half_opens_and_closes_on_success() -> None:
    now = [0.0]
    b = Breaker(3, 0.5, clock=lambda: now[0])
    assert [b.failure(), b.failure()] == ["", ""] and b.state == CLOSED
    assert b.failure() == "opened" and b.state == OPEN and b.allow() == (False, "")
    now[0] = 0.3
    assert b.wait_s() == pytest.approx(0.2)
    now[0] = 0.5
    assert b.allow() == (True, "half_open") and b.state == HALF_OPEN
    assert b.failure() == "opened" and b.allow() == (False, "")  # the trial failed: open again
    now[0] = 1.0
    assert b.allow() == (True, "half_open") and b.success() == "closed" and b.state == CLOSED
    assert b.failure() == "" and b.state == CLOSED  # the count starts again


def test_abort_conditions_parse_and_the_error_rate_holds_only_over_its_window() -> None:
    conds = parse_abort("error-rate>50% for 2s; unreachable postgres for 10s, invariant")
    assert [(c.kind, c.threshold, c.for_s, c.service) for c in conds] == [
        ("error_rate", 0.5, 2.0, ""), ("unreachable", 0.0, 10.0, "postgres"), ("invariant", 0.0, 0.0, "")]
    counters = {"calls_ok": 0, "calls_fail": 0, "calls_rejected": 0, "calls_unknown": 0, "connect_failures": 0}
    fired: list[str] = []
    mon = AbortMonitor(conds[:1], urls={}, counters=lambda: counters, trigger=fired.append)
    mon.started = 0.0
    t = 0.0
    for _ in range(8):  # 4 s of healthy calls
        counters["calls_ok"] += 10
        t += 0.5
        assert mon.step(t) is None
    reasons = []
    for _ in range(4):  # 2 s of failures: the condition holds once every second of the window is above 50 %
        counters["connect_failures"] += 10
        counters["calls_fail"] += 20
        counters["calls_rejected"] += 10  # insufficient funds: correct answers, not errors
        t += 0.5
        reasons.append(mon.step(t))
    assert reasons[:2] == [None, None]  # 1 s of failures is not 2 s
    reason = reasons[-1]
    assert reason is not None and "error-rate>50% for 2s" in reason and "in the last 2 s" in reason
    counters["calls_ok"] += 1000  # one healthy second breaks the streak
    assert mon.step(t + 0.5) is None
