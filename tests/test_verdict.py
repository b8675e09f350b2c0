"""The verdict of a run from its directory alone, its exit codes, ``python -m checks``, and the SLA figures.

Run directories are written by hand in ``tmp_path``: ``options.json``, ``history/<p>.jsonl`` with its
``<p>.done.json`` marker, ``final/credits.json`` and ``final/server.json`` — no server runs here.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from checks import EXIT_ANOMALY, EXIT_OK, EXIT_SLA, EXIT_UNKNOWN, EXIT_USAGE, UNKNOWN, gates
from checks.verdict import RunDirError, render
from checks.verdict import evaluate as evaluate_columns
from toolclash.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "t-verdict"


def op(process: str, n: int, outcome: str, account: int, amount: int, *, latency_ms: float = 10.0,
       reason: str | None = None, error_class: str | None = None, attempts: int = 1,
       retries: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``deduct`` record with every contract field filled."""
    invoke_ts = 1_700_000_000.0 + n
    result: dict[str, Any] = {"retries": retries} if retries else {}
    return {
        "run_id": RUN_ID, "op_id": f"{process}-{n}", "process": process, "agent": f"{process}-agent",
        "tool": "deduct", "strategy": "atomic", "args": {"account": account, "amount": amount},
        "invoke_ts": invoke_ts, "complete_ts": invoke_ts + latency_ms / 1000.0, "outcome": outcome,
        "attempts": attempts, "error_class": error_class, "reason": reason, "result": result,
    }


def row(seq: int, op_id: str, account: int, amount: int, before: int) -> dict[str, Any]:
    return {"seq": seq, "op_id": op_id, "account_id": account, "amount": amount, "balance_before": before,
            "balance_after": before - amount, "agent": op_id.rsplit("-", 1)[0] + "-agent"}


def clean_run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 2, "ok", 1, 5), op("p1", 3, "fail", 1, 900, reason="insufficient-funds")]
    final = {"credit_accounts": [{"id": 1, "balance": 85, "initial_balance": 100, "version": 2}],
             "credit_ledger": [row(1, "p1-1", 1, 10, 100), row(2, "p1-2", 1, 5, 90)]}
    return ops, final


def lost_update_run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ops = [op("p1", 1, "ok", 1, 10), op("p1", 2, "ok", 1, 5)]
    final = {"credit_accounts": [{"id": 1, "balance": 95, "initial_balance": 100, "version": 2}],
             "credit_ledger": [row(1, "p1-1", 1, 10, 100), row(2, "p1-2", 1, 5, 100)]}
    return ops, final


def evaluate(run: Path) -> dict[str, Any]:
    """The verdict of *run* (read as columns), checked against the verdict over Python records: the same."""
    fast = evaluate_columns(run)
    assert orjson.dumps(fast) == orjson.dumps(evaluate_columns(run, columnar=False))
    return fast


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))


def write_run(run: Path, ops: list[dict[str, Any]], final: dict[str, Any] | None, *,
              sessions: list[dict[str, Any]] | None = None, undone: tuple[str, ...] = (),
              extra_history: dict[str, list[dict[str, Any]]] | None = None, **settings: Any) -> Path:
    """Write a run directory the way a finished run leaves it (options, history + markers, final state)."""
    write_json(run / "options.json", {"run_id": RUN_ID, "scenarios": ["credits"],
                                      "settings": Settings.from_mapping({"run_id": RUN_ID, **settings}).public()})
    by_process: dict[str, list[dict[str, Any]]] = {}
    for o in ops:
        by_process.setdefault(o["process"], []).append(o)
    for process, records in (extra_history or {}).items():
        by_process.setdefault(process, []).extend(records)
    hdir = run / "history"
    hdir.mkdir(parents=True)
    write_json(run / "processes.json", {"run_id": RUN_ID, "processes": [
        {"key": p, "process": p, "role": "local", "history": True} for p in by_process]})
    for process, records in by_process.items():
        (hdir / f"{process}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        if process not in undone:
            write_json(hdir / f"{process}.done.json", {"process": process, "records": len(records)})
    if final is not None:
        write_json(run / "final" / "credits.json", final)
    write_json(run / "final" / "server.json", {"sessions": sessions or [], "prepared_xacts": [], "waited_s": 0.0,
                                               "servers": {"DATABASE_URL": {"prepared_xacts": [],
                                                                            "prepared_at_start": []}}})
    return run


def check(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in verdict["checks"] if c["name"] == name)


def gate(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in verdict["gates"] if g["gate"] == name)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


# --- evaluate + exit codes -------------------------------------------------------------------


def test_clean_run_exits_0(tmp_path: Path) -> None:
    verdict = evaluate(write_run(tmp_path / "run", *clean_run()))
    assert verdict["exit_code"] == EXIT_OK
    assert verdict["run_id"] == RUN_ID
    assert {c["name"]: c["valid"] for c in verdict["checks"]} == {
        "history.complete": True, "history.op_ids": True, "credits.conservation": True, "credits.no_negative": True,
        "credits.ledger": True, "credits.lost_updates": True, "server.sessions": True, "server.prepared": True}
    assert [(g["gate"], g["met"]) for g in verdict["gates"]] == [
        ("conflict_rate", True), ("p95_ms", True), ("success_rate", True), ("in_doubt_rate", True)]
    assert verdict["history"] == {"records": 3, "processes": {"p1": 3}, "incomplete": {}, "duplicate_op_ids": [],
                                  "listed": [{"key": "p1", "process": "p1", "role": "local", "history": True}]}
    assert verdict["figures"]["credits"]["rejected"] == 1


def test_anomaly_exits_1(tmp_path: Path) -> None:
    verdict = evaluate(write_run(tmp_path / "run", *lost_update_run()))
    assert verdict["exit_code"] == EXIT_ANOMALY
    lost = check(verdict, "credits.lost_updates")
    assert lost["valid"] is False
    assert [e["op_id"] for e in lost["evidence"]] == ["p1-1"]


def test_history_without_done_marker_exits_3(tmp_path: Path) -> None:
    verdict = evaluate(write_run(tmp_path / "run", *clean_run(), undone=("p1",)))
    assert verdict["exit_code"] == EXIT_UNKNOWN
    history = check(verdict, "history.complete")
    assert history["valid"] == UNKNOWN
    assert [e["process"] for e in history["evidence"]] == ["p1"]
    assert "p1" in verdict["history"]["incomplete"]


def test_missing_final_state_exits_3(tmp_path: Path) -> None:
    ops, _ = clean_run()
    verdict = evaluate(write_run(tmp_path / "run", ops, None))
    assert verdict["exit_code"] == EXIT_UNKNOWN
    assert check(verdict, "credits.final_state")["valid"] == UNKNOWN


def test_malformed_final_state_is_unknown_not_true(tmp_path: Path) -> None:
    ops, final = clean_run()
    final["credit_accounts"] = [{"id": 1}]  # the balance column is missing: the checks that need it crash
    verdict = evaluate(write_run(tmp_path / "run", ops, final))
    crashed = check(verdict, "credits.conservation")
    assert crashed["valid"] == UNKNOWN
    assert crashed["evidence"][0]["error"].startswith("KeyError")
    assert check(verdict, "credits.ledger")["valid"] is True  # judged on its own despite the crash next to it
    assert verdict["exit_code"] == EXIT_UNKNOWN


def test_gate_missed_exits_4(tmp_path: Path) -> None:
    verdict = evaluate(write_run(tmp_path / "run", *clean_run(), gate_p95_ms=0.001))
    assert verdict["exit_code"] == EXIT_SLA
    assert all(c["valid"] is True for c in verdict["checks"])
    p95 = gate(verdict, "p95_ms")
    assert p95["met"] is False
    assert p95["figure"] == pytest.approx(10.0, abs=1e-3)
    assert p95["threshold"] == 0.001


def test_anomaly_wins_over_unknown_and_gate(tmp_path: Path) -> None:
    verdict = evaluate(write_run(tmp_path / "run", *lost_update_run(), undone=("p1",), gate_p95_ms=0.001))
    assert check(verdict, "history.complete")["valid"] == UNKNOWN
    assert gate(verdict, "p95_ms")["met"] is False
    assert verdict["exit_code"] == EXIT_ANOMALY


def test_unknown_wins_over_gate(tmp_path: Path) -> None:
    verdict = evaluate(write_run(tmp_path / "run", *clean_run(), undone=("p1",), gate_p95_ms=0.001))
    assert gate(verdict, "p95_ms")["met"] is False
    assert verdict["exit_code"] == EXIT_UNKNOWN


def test_session_left_open_is_an_anomaly(tmp_path: Path) -> None:
    session = {"pid": 4242, "application_name": f"tc:{RUN_ID}:p1", "state": "idle in transaction",
               "xact_age_s": 3.5, "query": "UPDATE toolclash.credit_accounts SET balance = balance - 5"}
    verdict = evaluate(write_run(tmp_path / "run", *clean_run(), sessions=[session]))
    sessions = check(verdict, "server.sessions")
    assert sessions["valid"] is False
    assert sessions["counts"]["left_open"] == 1
    assert sessions["counts"]["by_state"] == {"idle in transaction": 1}
    assert sessions["evidence"][0]["pid"] == 4242
    assert verdict["exit_code"] == EXIT_ANOMALY


def test_lost_worker_with_applied_deductions_exits_3(tmp_path: Path) -> None:
    """p2 died before flushing: its deduction p2-1 is in the ledger and the balance, not in the history.

    The data is right and the history incomplete, so the verdict is unknown (3), not an anomaly (1).
    """
    ops = [op("p1", 1, "ok", 1, 10)]
    final = {"credit_accounts": [{"id": 1, "balance": 85, "initial_balance": 100, "version": 2}],
             "credit_ledger": [row(1, "p1-1", 1, 10, 100), row(2, "p2-1", 1, 5, 90)]}
    verdict = evaluate(write_run(tmp_path / "run", ops, final, undone=("p2",), extra_history={"p2": []}))
    assert check(verdict, "history.complete")["valid"] == UNKNOWN
    assert check(verdict, "credits.ledger")["valid"] == UNKNOWN
    assert [c["name"] for c in verdict["checks"] if c["valid"] is False] == []
    assert verdict["exit_code"] == EXIT_UNKNOWN


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"no options\.json"):
        evaluate(tmp_path)


def test_render_names_every_check_and_gate(tmp_path: Path) -> None:
    verdict = evaluate(write_run(tmp_path / "run", *lost_update_run()))
    text = render(verdict)
    for name in ("history.complete", "credits.lost_updates", "server.sessions", "credits.p95_ms"):
        assert name in text
    assert "FALSE" in text
    assert "p1-1" in text  # evidence under the failing check
    assert text.rstrip().endswith("exit code 1: a check found an anomaly: the data is wrong")


# --- python -m checks ------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "settings", "code"), [
    (clean_run, {}, EXIT_OK),
    (lost_update_run, {}, EXIT_ANOMALY),
    (clean_run, {"gate_p95_ms": 0.001}, EXIT_SLA),
])
def test_cli_exit_code_matches_evaluate(tmp_path: Path, make: Any, settings: dict[str, Any], code: int) -> None:
    run = write_run(tmp_path / "run", *make(), **settings)
    assert evaluate(run)["exit_code"] == code
    proc = run_cli("--run", str(run))
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith(f"toolclash verdict for run {RUN_ID}")
    assert "credits.conservation" in proc.stdout
    assert "credits.p95_ms" in proc.stdout
    assert f"exit code {code}:" in proc.stdout
    assert proc.stderr == ""
    assert not (run / "checks.json").exists()


def test_cli_write_stores_checks_json(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", *lost_update_run())
    proc = run_cli("--run", str(run), "--write")
    assert proc.returncode == EXIT_ANOMALY
    stored = orjson.loads((run / "checks.json").read_bytes())
    assert stored["exit_code"] == EXIT_ANOMALY
    assert stored == orjson.loads(orjson.dumps(evaluate(run)))


def test_cli_missing_run_dir_exits_2_with_one_line() -> None:
    proc = run_cli("--run", "/nonexistent")
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "/nonexistent" in lines[0]


def test_cli_bad_option_exits_2_with_one_line() -> None:
    proc = run_cli("--bogus")
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("python -m checks: ")


def test_cli_run_of_an_unregistered_scenario_exits_2_with_one_line(tmp_path: Path) -> None:
    """A run that names a scenario these checks do not know cannot be judged: exit 2, not a traceback (exit 1)."""
    run = write_run(tmp_path / "run", *clean_run())
    options = orjson.loads((run / "options.json").read_bytes())
    write_json(run / "options.json", {**options, "scenarios": ["credits", "jobs"]})
    proc = run_cli("--run", str(run))
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    assert len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]


# --- SLA figures and gates -------------------------------------------------------------------

THRESHOLDS = {"gate_conflict_rate": 0.05, "gate_p95_ms": 2000.0, "gate_success_rate": 0.999,
              "gate_in_doubt_rate": 0.001}


def test_conflict_rate_is_retries_over_attempts() -> None:
    ops = [op("p1", 1, "ok", 1, 1, attempts=3, retries={"serialization": 2}),
           op("p1", 2, "ok", 1, 1, attempts=2, retries={"deadlock": 1}),
           op("p1", 3, "fail", 1, 1, attempts=4, retries={"serialization": 4}, reason="retries-exhausted",
              error_class="SerializationFailure"),
           op("p1", 4, "ok", 1, 1)]
    fig = gates.figures(ops)
    assert fig["attempts"] == 10
    assert fig["conflicts"] == 7
    assert fig["retries_by_cause"] == {"serialization": 6, "deadlock": 1}
    assert fig["conflict_rate"] == pytest.approx(0.7)
    assert fig["success_rate"] == pytest.approx(3 / 4)


def test_business_rejections_are_not_failures() -> None:
    ops = [op("p1", 1, "ok", 1, 1), op("p1", 2, "ok", 1, 1),
           op("p1", 3, "fail", 1, 10**6, reason="insufficient-funds")]
    fig = gates.figures(ops)
    assert (fig["ok"], fig["failed"], fig["rejected"], fig["calls"]) == (2, 0, 1, 3)
    assert fig["success_rate"] == 1.0
    failing = gates.figures([*ops, op("p1", 4, "fail", 1, 1, reason="retries-exhausted")])
    assert failing["success_rate"] == pytest.approx(2 / 3)


def test_interrupted_and_unknown_calls_are_left_out() -> None:
    ops = [op("p1", 1, "ok", 1, 1, latency_ms=10),
           op("p1", 2, "fail", 1, 1, latency_ms=90_000, reason="interrupted", error_class="interrupted"),
           op("p1", 3, "unknown", 1, 1, latency_ms=80_000, reason="interrupted-during-commit",
              error_class="interrupted")]
    fig = gates.figures(ops)
    assert (fig["ok"], fig["failed"], fig["unknown"], fig["calls"]) == (1, 0, 1, 3)
    assert fig["success_rate"] == 1.0
    assert fig["max_ms"] == pytest.approx(10.0, abs=1e-3)
    assert fig["p95_ms"] == pytest.approx(10.0, abs=1e-3)


def test_p95_is_nearest_rank() -> None:
    ops = [op("p1", n, "ok", 1, 1, latency_ms=float(n)) for n in range(1, 21)]
    fig = gates.figures(ops)
    # nearest rank: ceil(0.95 * 20) = 19th value; linear interpolation would give 19.05
    assert fig["p95_ms"] == pytest.approx(19.0, abs=1e-3)
    assert fig["p50_ms"] == pytest.approx(10.0, abs=1e-3)
    assert fig["p99_ms"] == pytest.approx(20.0, abs=1e-3)
    assert gates.percentile([float(v) for v in range(1, 101)], 95) == 95.0
    assert gates.percentile([7.0], 95) == 7.0
    assert math.isnan(gates.percentile([], 95))


def test_gates_against_thresholds_at_the_boundaries() -> None:
    fig = {"conflict_rate": 0.05, "p95_ms": 1999.0, "success_rate": 0.999, "in_doubt_rate": 0.001}
    met = {g["gate"]: g["met"] for g in gates.sla_gates(fig, THRESHOLDS, "credits")}
    # conflict rate and P95 must be strictly below; success rate at least the threshold; in doubt at most
    assert met == {"conflict_rate": False, "p95_ms": True, "success_rate": True, "in_doubt_rate": True}
    fig = {"conflict_rate": 0.0499, "p95_ms": 2000.0, "success_rate": 0.998, "in_doubt_rate": 0.0011}
    met = {g["gate"]: g["met"] for g in gates.sla_gates(fig, THRESHOLDS, "credits")}
    assert met == {"conflict_rate": True, "p95_ms": False, "success_rate": False, "in_doubt_rate": False}


def test_an_infinite_figure_misses_its_gate_and_says_so() -> None:
    """A recovery that never came (infinite) is written as null in checks.json: the note says what it was."""
    missed = gates.gate("deadlock", "cascade_recovery_s", math.inf, "<", 2.0)
    assert missed["met"] is False and missed["note"].startswith("infinite")
    assert gates.gate("deadlock", "cascade_recovery_s", 1.5, "<", 2.0)["note"] == ""


def test_no_data_means_no_gate_is_met() -> None:
    out = gates.sla_gates(gates.figures([]), THRESHOLDS, "credits")
    assert [g["gate"] for g in out] == ["conflict_rate", "p95_ms", "success_rate", "in_doubt_rate"]
    for g in out:
        assert g["met"] is False
        assert g["figure"] is None
        assert g["note"] == "no completed calls to measure"
        assert g["scope"] == "credits"


def test_in_doubt_calls_are_gated_per_scope_and_per_stage_never_dropped(tmp_path: Path) -> None:
    """Before, an ``unknown`` outcome vanished from every gate: a run whose calls were all in doubt met the SLA.
    Now the in-doubt share is its own gate, per scenario and per stage; calls cut short by the stop are counted
    apart and named in the gate's note."""
    ops, final = clean_run()
    ops += [op("p1", 4, "unknown", 1, 7, reason="connection-lost-during-commit", error_class="OperationalError"),
            op("p1", 5, "unknown", 1, 3, reason="interrupted-during-commit", error_class="interrupted"),
            op("p1", 6, "ok", 1, 1)]
    final["credit_accounts"][0]["balance"] = 84
    final["credit_ledger"].append(row(3, "p1-6", 1, 1, 85))
    run = write_run(tmp_path / "run", ops, final)  # neither in-doubt call applied: the ledger says so
    write_json(run / "stages.json", [{"stage": 1, "users": 2, "start": 1_700_000_000.5, "end": 1_700_000_003.5},
                                     {"stage": 2, "users": 4, "start": 1_700_000_003.5, "end": 1_700_000_009.0}])
    verdict = evaluate(run)
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]  # the data is right
    assert verdict["exit_code"] == EXIT_SLA
    fig = verdict["figures"]["credits"]
    assert (fig["unknown"], fig["in_doubt"], fig["cut_short"]) == (2, 1, 1)
    doubt = {g["scope"]: g for g in verdict["gates"] if g["gate"] == "in_doubt_rate"}
    assert doubt["credits"]["figure"] == pytest.approx(1 / 4) and doubt["credits"]["met"] is False
    assert "1 cut short by the stop" in doubt["credits"]["note"]
    assert doubt["credits.stage1(2)"]["met"] is True and doubt["credits.stage2(4)"]["met"] is False
    assert "credits.stage2(4).in_doubt_rate" in render(verdict)


def test_progress_names_each_step_and_its_rate(tmp_path: Path) -> None:
    """On a long verdict the user sees each step with its operations, and its rate when it ends."""
    run = write_run(tmp_path / "run", *clean_run())
    done = run_cli("--run", str(run), "--progress")
    assert done.returncode == EXIT_OK, done.stderr
    steps = [ln.split("] ", 1)[1] for ln in done.stderr.splitlines() if ln.startswith("python -m checks: [")]
    assert steps[0] == "reading the history"
    assert any(s.startswith("read 3 operations from 1 process(es) in ") for s in steps), steps
    assert "checking credits: 3 operations" in steps
    assert any(s.startswith("checking credits: done in ") and s.endswith("ops/s") for s in steps), steps
    assert steps[-1] == "judged"
