"""Verdicts you can trust in every corner: a lost process, an outside writer, a tampered run directory.

* a worker frozen before its first history batch (SIGSTOP as its agents start, SIGKILL after the verdict): the
  verdict is unknown, never valid and never an anomaly, though its rows and sessions are in the database;
* the main job (``make run``'s mixed ramp, shortened) ends with every check valid;
* the tamper suite: one clean run directory of the mixed ramp, built once for the module, copied per corruption
  (a ledger row deleted, a row nobody recorded, a balance moved by 1, a prepared transaction left, an op recorded
  twice, a process's history deleted …); each is caught by the right check with the right exit code, re-judged
  with :func:`checks.verdict.evaluate` from the files alone;
* an outside writer corrupts the database during a clean run: exit 1, naming the check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from checks.verdict import evaluate
from tests.conftest import LOCUST, ROOT, LocustRun, run_locust
from tests.test_crossservice import _clean
from tests.test_lifecycle import free_port, wait_for
from toolclash.history import history_files, iter_records

pytestmark = pytest.mark.xdist_group("trust")
"""Under pytest-xdist, one worker runs this module: its module-scoped servers and runs are made once."""


def _verdict(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "checks.json").read_text())


def _check(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in verdict["checks"] if c["name"] == name)


def _env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))}
    env["DATABASE_URL"] = database_url
    return env


# ------------------------------------------------------------------------------------------ a lost worker


def test_a_worker_frozen_before_its_first_batch_makes_the_verdict_unknown_never_an_anomaly(
        database_url: str, tmp_path: Path) -> None:
    """Worker 1 is stopped (SIGSTOP) as soon as its agents' sessions appear, before its history's first batch
    (sent 0.5 s after it starts): the master has no file of it. Before processes.json this run exited 0 ("every
    process delivered its history") or 1 (its committed rows counted as phantoms, its frozen sessions as leaks)."""
    port = str(free_port())
    history = tmp_path / "lost" / "history"
    proc = subprocess.Popen(
        [LOCUST, "-f", "locustfiles/credits.py", "--headless", "-u", "10", "-r", "20", "-t", "5s", "--processes", "2",
         "--report", "none", "--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--master-port", port,
         "--profile", "stress", "--accounts", "10", "--strategy", "atomic", "--reports-dir", str(tmp_path),
         "--run-id", "lost", "--loglevel", "WARNING"],
        cwd=ROOT, env=_env(database_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = psycopg2.connect(database_url)
    watcher.autocommit = True
    frozen: int | None = None
    try:
        def worker1_session() -> str | None:
            with watcher.cursor() as cur:
                cur.execute("SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s LIMIT 1",
                            ("tc:lost:%-w1-a%",))
                row = cur.fetchone()
            return row[0] if row else None

        deadline = time.monotonic() + 60
        name = None
        while name is None and time.monotonic() < deadline:  # a tight poll: the window is under 0.5 s
            name = worker1_session()
        assert name is not None, "worker 1's agents never connected"
        process = name.split(":", 2)[2].rsplit("-a", 1)[0]  # tc:<run>:<host>-<pid>-w1-a<n>
        frozen = int(process.rsplit("-", 2)[1])
        os.kill(frozen, signal.SIGSTOP)
        assert not any(p.exists() for p in (history / f"{process}.jsonl", history / f"{process}.arrow")), \
            "the first batch arrived before the worker was stopped"
        wait_for(lambda: (tmp_path / "lost" / "checks.json").is_file(), 120, "the verdict")
        os.kill(frozen, signal.SIGKILL)  # only now: its sessions stayed open (and its rows committed) until capture
        frozen = None
        out, err = proc.communicate(timeout=60)
    finally:
        watcher.close()
        if frozen is not None:
            os.kill(frozen, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, f"{proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = _verdict(tmp_path / "lost")
    listed = json.loads((tmp_path / "lost" / "processes.json").read_text())["processes"]
    assert sorted(e["role"] for e in listed) == ["master", "worker", "worker"], listed
    assert process in {e["process"] for e in listed}  # the worker said its name when it connected
    complete = _check(verdict, "history.complete")
    assert complete["valid"] == "unknown" and complete["evidence"][0]["process"] == process, complete
    assert "no history of it arrived" in complete["evidence"][0]["why"]
    assert not [c for c in verdict["checks"] if c["valid"] is False], verdict["checks"]  # doubt, never an anomaly
    sessions = _check(verdict, "server.sessions")  # its frozen sessions are not blamed on the backend
    assert sessions["valid"] == "unknown" and sessions["counts"]["of_processes_with_incomplete_history"] > 0, sessions
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(tmp_path / "lost")],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 3, again.stdout + again.stderr  # python -m checks reads processes.json too


# ------------------------------------------------------------------------------------------ the main job, clean

MIXED = ["--stages", "6,12", "--stage-seconds", "4", "--stage-spawn-rate", "50", "--wait-min", "0.05",
         "--wait-max", "0.3", "--workspaces", "2", "--facts-rows", "20000", "--scan-rows", "5000",
         "--stop-timeout", "2", "--queue-priority-mix", "40,40,20"]
"""``make run`` shortened: two stages of 4 s instead of five of 12 s (6 agents: the deadlock cycle, the queue's two
consumers and one more; 12: every agent kind), shorter think time (the normal profile's 0.5–1.5 s would leave a
handful of calls in 8 s), 2 workspaces (events share streams), a small fact table, and more critical jobs (at
the default 10 % a few seconds of submissions can start no critical job, and its wait gate then has no figure)."""
MAY_MISS = {
    "p95_ms": "a 2-core machine shared with other test runs can stretch a scope's P95 past 2 s: the scopes of a "
              "stage hold only a few dozen calls, so one slow call moves their P95",
    "detection_p99_ms": "deadlock detection waits for the server's deadlock_timeout timers, which a loaded machine "
                        "fires late; with a handful of cycles the p99 is the single slowest one",
    "lag_p95_ms": "the projectors run beside every other agent kind on 2 shared cores",
}
"""The gates a clean run of the main job may miss here, and why; any other missed gate fails the test."""
SCENARIOS = ("credits", "config", "deadlock", "crossservice", "queue", "pool", "workspace")


@pytest.fixture(scope="module")
def main_job(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> LocustRun:
    """One clean run of the main job for the module (the clean-run test and the tamper suite's source)."""
    _clean(stack)
    run = run_locust(MIXED, reports=tmp_path_factory.mktemp("mixed"), database_url=None, services=stack,
                     locustfile="locustfiles/mixed.py", run_id="clean", timeout=300)
    print(f"main job: {run.seconds:.1f} s, exit {run.code}")
    return run


def test_the_main_job_ramp_ends_with_every_check_valid(main_job: LocustRun) -> None:
    run = main_job
    assert run.code in (0, 4), run.output()
    verdict = run.verdict
    assert all(c["valid"] is True for c in verdict["checks"]), [c for c in verdict["checks"] if c["valid"] is not True]
    stages = json.loads((run.run_dir / "stages.json").read_text())
    assert [(s["stage"], s["users"]) for s in stages] == [(1, 6), (2, 12)], stages
    for name in SCENARIOS:  # every agent kind really worked
        assert verdict["figures"][name]["ok"] > 0, (name, verdict["figures"][name])
    missed = [g for g in verdict["gates"] if not g["met"]]
    for g in missed:
        assert g["gate"] in MAY_MISS, f"{g['scope']}.{g['gate']} missed: {g}"
        print(f"accepted: {g['scope']}.{g['gate']} = {g['figure']} (threshold {g['threshold']}): {MAY_MISS[g['gate']]}")
    assert (run.code == 4) == bool(missed), run.output()
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(run.run_dir)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, check=False)
    assert again.returncode == run.code, again.stdout + again.stderr


# ------------------------------------------------------------------------------------------ the tamper suite


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _save(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


def _final(run: Path, name: str) -> Path:
    return run / "final" / f"{name}.json"


def _records(run: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The history file (the main job runs in one process) and its records."""
    ((_process_name, path),) = history_files(run)
    return path, list(iter_records(path))


def _rewrite(run: Path, records: list[dict[str, Any]], *, marker: bool = True) -> None:
    """Rewrite the history with *records* (as JSON lines, which are read like the columnar file they replace);
    with *marker*, its done marker says that count (a complete history)."""
    path, _ = _records(run)
    path.unlink()
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if marker:
        _save(path.with_suffix(".done.json"), {"process": path.stem, "records": len(records)})


def _first(records: list[dict[str, Any]], tool: str, outcome: str = "ok") -> dict[str, Any]:
    return next(r for r in records if r["tool"] == tool and r["outcome"] == outcome)


def _process(run: Path) -> str:
    return _records(run)[0].stem


def credits_ledger_row_deleted(run: Path) -> None:
    f = _load(_final(run, "credits"))
    f["credit_ledger"].pop(0)
    _save(_final(run, "credits"), f)


def credits_row_nobody_recorded(run: Path) -> None:
    f = _load(_final(run, "credits"))
    last = max(f["credit_ledger"], key=lambda r: r["seq"])
    f["credit_ledger"].append({**last, "seq": last["seq"] + 1, "op_id": "outsider-1", "agent": "outsider-a1",
                               "amount": 1, "balance_before": last["balance_after"],
                               "balance_after": last["balance_after"] - 1})
    _save(_final(run, "credits"), f)


def credits_balance_moved_by_one(run: Path) -> None:
    f = _load(_final(run, "credits"))
    f["credit_accounts"][0]["balance"] += 1
    _save(_final(run, "credits"), f)


def credits_account_missing(run: Path) -> None:
    f = _load(_final(run, "credits"))
    f["credit_accounts"].pop()
    _save(_final(run, "credits"), f)


def config_field_changed(run: Path) -> None:
    f = _load(_final(run, "config"))
    field = f["config_writes"][-1]["field"]
    f["config_records"][0]["doc"][field] = "tampered"
    _save(_final(run, "config"), f)


def config_log_row_deleted(run: Path) -> None:
    f = _load(_final(run, "config"))
    f["config_writes"].pop(0)
    _save(_final(run, "config"), f)


def config_version_bumped(run: Path) -> None:
    f = _load(_final(run, "config"))
    f["config_records"][0]["version"] += 1
    _save(_final(run, "config"), f)


def deadlock_write_deleted(run: Path) -> None:
    f = _load(_final(run, "deadlock"))
    f["writes"].pop(0)
    _save(_final(run, "deadlock"), f)


def deadlock_server_counted_more(run: Path) -> None:
    f = _load(_final(run, "deadlock"))
    f["server"]["deadlocks_delta"] += 100
    _save(_final(run, "deadlock"), f)


def deadlock_transaction_left_open(run: Path) -> None:
    f = _load(_final(run, "deadlock"))
    f["open_transactions"].append({"pid": 4242, "user": "tc_deadlock_p0", "state": "idle in transaction",
                                   "application_name": f"tc:clean:{_process(run)}-a1", "xact_age_s": 3.0})
    _save(_final(run, "deadlock"), f)


def crossservice_grant_deleted(run: Path) -> None:
    f = _load(_final(run, "crossservice"))
    f["grants"] = [g for g in f["grants"] if g["op_id"] != f["debits"][0]["op_id"]]
    _save(_final(run, "crossservice"), f)


def crossservice_balance_moved_by_one(run: Path) -> None:
    f = _load(_final(run, "crossservice"))
    f["accounts"][0]["balance"] -= 1
    _save(_final(run, "crossservice"), f)


def crossservice_event_counted_twice(run: Path) -> None:
    f = _load(_final(run, "crossservice"))
    event = f["clickhouse_events"][0]
    f["clickhouse_events"].append({**event, "event_id": event["event_id"] + ":again"})
    _save(_final(run, "crossservice"), f)


def crossservice_prepared_left(run: Path) -> None:
    f = _load(_final(run, "crossservice"))
    f["prepared_main"].append({"gid": f"xs:{f['debits'][0]['op_id']}:m", "prepared": time.time()})
    _save(_final(run, "crossservice"), f)


def queue_effect_deleted(run: Path) -> None:
    f = _load(_final(run, "queue"))
    f["effects"].pop(0)
    _save(_final(run, "queue"), f)


def queue_effect_applied_twice(run: Path) -> None:
    f = _load(_final(run, "queue"))
    row = f["effects"][0]
    f["effects"].append([max(r[0] for r in f["effects"]) + 1, row[1] + ":2", row[2], row[3] + 1, row[4], row[5]])
    _save(_final(run, "queue"), f)


def queue_limits_missing(run: Path) -> None:
    f = _load(_final(run, "queue"))
    f["meta"]["config"] = {}
    _save(_final(run, "queue"), f)


def queue_over_capacity(run: Path) -> None:
    f = _load(_final(run, "queue"))
    f["redis"]["hwm"] = int(f["meta"]["config"]["queue_capacity"]) + 1
    _save(_final(run, "queue"), f)


def pool_wrong_aggregate(run: Path) -> None:
    _, records = _records(run)
    _first(records, "analyze")["result"]["rows"] += 1
    _rewrite(run, records)


def pool_connection_still_in_use(run: Path) -> None:
    f = _load(_final(run, "pool"))
    f["pool_states"][0]["result"]["in_use"] = 1
    _save(_final(run, "pool"), f)


def pool_call_in_doubt(run: Path) -> None:
    _, records = _records(run)
    call = _first(records, "analyze")
    call.update(outcome="unknown", reason="connection-lost-during-commit", error_class="OperationalError")
    _rewrite(run, records)


def workspace_event_deleted(run: Path) -> None:
    f = _load(_final(run, "workspace"))
    f["events"].pop()
    _save(_final(run, "workspace"), f)


def workspace_read_model_changed(run: Path) -> None:
    f = _load(_final(run, "workspace"))
    f["files"][0]["size"] += 1
    _save(_final(run, "workspace"), f)


def workspace_seq_swapped(run: Path) -> None:
    f = _load(_final(run, "workspace"))
    by_stream: dict[int, list[dict[str, Any]]] = {}
    for e in f["events"]:
        by_stream.setdefault(e["stream_id"], []).append(e)
    a, b = next(evs for evs in by_stream.values() if len(evs) >= 2)[:2]
    a["seq"], b["seq"] = b["seq"], a["seq"]
    _save(_final(run, "workspace"), f)


def op_recorded_twice(run: Path) -> None:
    _, records = _records(run)
    op = _first(records, "grant_tool_access")
    records.append({**op, "outcome": "fail", "reason": "connection-lost"})  # the same op id, now also a fail
    _rewrite(run, records)


def history_deleted(run: Path) -> None:
    path, _ = _records(run)
    path.unlink()
    path.with_suffix(".done.json").unlink()


def history_tail_lost(run: Path) -> None:
    """The history is cut after its last deadlock victim's predecessor: the tail held victims (40P01)."""
    path, records = _records(run)
    last_victim = max(i for i, r in enumerate(records) if any(t.get("sqlstate") == "40P01"
                                                                for t in (r.get("result") or {}).get("tries", [])))
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:last_victim]))  # the marker says more


def processes_unlisted(run: Path) -> None:
    (run / "processes.json").unlink()


def prepared_left_on_a_server(run: Path) -> None:
    f = _load(_final(run, "server"))
    f["servers"]["DATABASE_URL"]["prepared_xacts"].append({"gid": "stray-tx", "prepared": "now", "owner": "app",
                                                           "database": "toolclash"})
    _save(_final(run, "server"), f)


def session_left_open(run: Path) -> None:
    f = _load(_final(run, "server"))
    f["sessions"].append({"pid": 4242, "application_name": f"tc:clean:{_process(run)}-a1",
                          "state": "idle in transaction", "xact_age_s": 3.0, "query": "SELECT 1"})
    _save(_final(run, "server"), f)


def session_of_a_lost_worker(run: Path) -> None:
    roster = _load(run / "processes.json")
    roster["processes"].append({"key": "w-ghost", "process": "ghost-9-w1", "role": "worker", "history": True})
    _save(run / "processes.json", roster)
    f = _load(_final(run, "server"))
    f["sessions"].append({"pid": 4242, "application_name": "tc:clean:ghost-9-w1-a1", "state": "active",
                          "xact_age_s": 3.0, "query": "UPDATE …"})
    _save(_final(run, "server"), f)


def unnamed_worker_and_a_stray_row(run: Path) -> None:
    roster = _load(run / "processes.json")
    roster["processes"].append({"key": "host_0123abcd", "process": None, "role": "worker", "history": True})
    _save(run / "processes.json", roster)
    credits_row_nobody_recorded(run)  # its effects cannot be told from an outsider's


F, U = False, "unknown"
TAMPER: list[tuple[Any, dict[str, Any], int]] = [
    (credits_ledger_row_deleted, {"credits.ledger": F}, 1),
    (credits_row_nobody_recorded, {"credits.ledger": F}, 1),
    (credits_balance_moved_by_one, {"credits.conservation": F}, 1),
    (credits_account_missing, {"credits.conservation": F}, 1),
    (config_field_changed, {"config.final_document": F}, 1),
    (config_log_row_deleted, {"config.write_log": F}, 1),
    (config_version_bumped, {"config.version": F}, 1),
    (deadlock_write_deleted, {"deadlock.atomic_rounds": F}, 1),
    (deadlock_server_counted_more, {"deadlock.server_count": F}, 1),
    (deadlock_transaction_left_open, {"deadlock.no_open_transaction": F}, 1),
    (crossservice_grant_deleted, {"crossservice.atomic": F}, 1),
    (crossservice_balance_moved_by_one, {"crossservice.credits": F}, 1),
    (crossservice_event_counted_twice, {"crossservice.analytics": F}, 1),
    (crossservice_prepared_left, {"crossservice.prepared": F}, 1),
    (queue_effect_deleted, {"queue.accounting": F}, 1),
    (queue_effect_applied_twice, {"queue.duplicates": F}, 1),
    (queue_limits_missing, {"queue.capacity": U, "queue.rate_limit": U, "queue.priority": U}, 3),
    (queue_over_capacity, {"queue.capacity": F}, 1),
    (pool_wrong_aggregate, {"pool.aggregates": F}, 1),
    (pool_connection_still_in_use, {"pool.client_idle": F}, 1),
    (pool_call_in_doubt, {"pool.accounted": U}, 3),
    (workspace_event_deleted, {"workspace.commands_events": F}, 1),
    (workspace_read_model_changed, {"workspace.projection": F}, 1),
    (workspace_seq_swapped, {"workspace.sequence": F}, 1),
    (op_recorded_twice, {"history.op_ids": U}, 3),
    (history_deleted, {"history.complete": U}, 3),
    (history_tail_lost, {"history.complete": U, "deadlock.server_count": U, "deadlock.server_log": U}, 3),
    (processes_unlisted, {"history.complete": U}, 3),
    (prepared_left_on_a_server, {"server.prepared": F}, 1),
    (session_left_open, {"server.sessions": F}, 1),
    (session_of_a_lost_worker, {"history.complete": U, "server.sessions": U}, 3),
    (unnamed_worker_and_a_stray_row, {"history.complete": U, "credits.ledger": U}, 3),
]
"""(corruption, the checks that must say so, the exit code). A corruption of the history can only make checks
unknown; one of a scenario's final state leaves every other scenario's checks valid."""


def _copy(main_job: LocustRun, tmp_path: Path) -> Path:
    run = tmp_path / "clean"
    shutil.copytree(main_job.run_dir, run, ignore=shutil.ignore_patterns("checks.json", "report.html", "locust*"))
    return run


def test_the_untouched_copy_stays_valid(main_job: LocustRun, tmp_path: Path) -> None:
    verdict = evaluate(_copy(main_job, tmp_path))
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
    assert verdict["exit_code"] == main_job.code


@pytest.mark.parametrize(("corrupt", "expected", "code"), TAMPER, ids=[t[0].__name__ for t in TAMPER])
def test_each_corruption_is_caught_by_the_right_check(corrupt: Any, expected: dict[str, Any], code: int,
                                                      main_job: LocustRun, tmp_path: Path) -> None:
    run = _copy(main_job, tmp_path)
    corrupt(run)
    verdict = evaluate(run)
    got = {c["name"]: c["valid"] for c in verdict["checks"]}
    for name, valid in expected.items():
        assert got[name] == valid, (name, _check(verdict, name))
    assert verdict["exit_code"] == code, [c for c in verdict["checks"] if c["valid"] is not True]
    if code == 3:  # a lost or broken history, or missing data: doubt, never an anomaly
        assert not [n for n, v in got.items() if v is False], got
    else:
        touched = {name.split(".")[0] for name in expected}
        others = {n: v for n, v in got.items() if n.split(".")[0] not in touched and v is not True}
        assert others == {}, others  # the untouched scenarios stay valid


def test_python_m_checks_reads_a_tampered_directory_the_same_way(main_job: LocustRun, tmp_path: Path) -> None:
    run = _copy(main_job, tmp_path)
    history_deleted(run)
    proc = subprocess.run([sys.executable, "-m", "checks", "--run", str(run)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "history.complete" in proc.stdout and "no history of it arrived" in proc.stdout


# ------------------------------------------------------------------------------------------ an outside writer


def test_an_outside_writer_during_a_clean_run_is_caught(database_url: str, tmp_path: Path) -> None:
    """Mid-run, a writer that is not an agent takes one credit from account 1 and deletes one ledger row: exit 1,
    credits.conservation and credits.ledger false, naming the account and the op."""
    proc = subprocess.Popen(
        [LOCUST, "-f", "locustfiles/credits.py", "--headless", "-u", "8", "-r", "8", "-t", "4s", "--profile",
         "stress", "--accounts", "3", "--strategy", "pessimistic", "--reports-dir", str(tmp_path), "--run-id",
         "outside", "--loglevel", "WARNING", "--report", "none"],
        cwd=ROOT, env=_env(database_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deleted: str | None = None
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in (tmp_path / "outside" / "history").glob("*.*")), 60,
                 "the first history batch")
        conn = psycopg2.connect(database_url)
        try:
            with conn.cursor() as cur:
                cur.execute("UPDATE toolclash.credit_accounts SET balance = balance - 1 WHERE id = 1")
                cur.execute("DELETE FROM toolclash.credit_ledger WHERE seq = (SELECT min(seq) FROM "
                            "toolclash.credit_ledger) RETURNING op_id")
                deleted = cur.fetchone()[0]
            conn.commit()
        finally:
            conn.close()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, f"{proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = _verdict(tmp_path / "outside")
    conservation = _check(verdict, "credits.conservation")
    assert conservation["valid"] is False and any(e["account"] == 1 for e in conservation["evidence"]), conservation
    ledger = _check(verdict, "credits.ledger")
    assert ledger["valid"] is False and any(e.get("op_id") == deleted for e in ledger["evidence"]), ledger
    assert "credits.conservation" in out and "credits.ledger" in out and "FALSE" in out

