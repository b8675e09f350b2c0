"""The register scenario under load: a clean run is valid; the planted fault and a claim stronger than the level
used are caught, with the cycles named; the verdict is reproduced from the run directory alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from checks import register as rc
from tests.conftest import ROOT, run_locust

LOAD = ["-u", "8", "-r", "8", "-t", "4s", "--profile", "stress", "--sync", "1"]
LOCUSTFILE = "locustfiles/register.py"


def test_serializable_is_valid_with_conflicts_retried(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "serializable"], reports=tmp_path, database_url=database_url,
                     locustfile=LOCUSTFILE)
    assert run.code in (0, 4), run.output()
    iso = run.check("register.isolation")
    assert iso["valid"] is True and iso["counts"]["expected"] == "serializable", iso
    assert iso["counts"]["transactions"] > 100 and not iso["counts"]["allowed"], iso
    assert run.check("register.log")["valid"] is True
    fig = run.verdict["figures"]["register"]
    assert fig["retries_by_cause"].get("serialization", 0) > 0, fig  # contention was real and retried
    if run.code == 4:
        assert [g for g in run.verdict["gates"] if not g["met"]] and "NO" in run.proc.stdout


def test_read_committed_judged_as_serializable_names_its_cycles(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "read_committed", "--expect-isolation", "serializable"],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    iso = run.check("register.isolation")
    assert iso["valid"] is False and iso["counts"]["expected"] == "serializable"
    assert {"G-single", "G2-item"} <= set(iso["counts"]["prohibited"]), iso["counts"]
    cycle = next(e for e in iso["evidence"] if e["anomaly"] in ("G-single", "G2-item"))["cycle"]
    assert len(cycle) >= 2 and all(s["op_id"] and s["edge"] in ("ww", "wr", "rw") and s["because"] for s in cycle)
    assert "rw" in {s["edge"] for s in cycle}
    assert "register.isolation" in run.proc.stdout and "FALSE" in run.proc.stdout
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(run.run_dir)], cwd=ROOT,
                           capture_output=True, text=True, check=False)
    assert again.returncode == 1, again.stdout + again.stderr


def test_autocommit_fault_shows_write_cycles_and_dirty_reads(database_url: str, tmp_path: Path) -> None:
    run = run_locust([*LOAD, "--strategy", "serializable", "--fault", "autocommit", "--register-abort-rate", "0.2"],
                     reports=tmp_path, database_url=database_url, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    iso = run.check("register.isolation")
    assert iso["valid"] is False
    banned = iso["counts"]["prohibited"]
    assert banned.get("G1a", 0) > 0 and (banned.get("G0", 0) + banned.get("G1c", 0)) > 0, banned
    log = run.check("register.log")
    assert log["valid"] is False and log["counts"]["failed_but_logged"] > 0, log["counts"]


def test_write_log_check_on_a_tiny_history() -> None:
    def op(n: int, outcome: str, txn: list[list[object]], reason: str | None = None) -> dict[str, object]:
        return {"run_id": "t", "op_id": f"p-{n}", "process": "p", "agent": "p-a1", "tool": "txn",
                "strategy": "serializable", "args": {"txn": [[f, k, None] for f, k, _ in txn], "abort": False},
                "invoke_ts": 1.0 + n, "complete_ts": 1.1 + n, "outcome": outcome, "attempts": 1, "error_class": None,
                "reason": reason, "result": {"txn": txn} if outcome == "ok" else {}}

    ops = [op(1, "ok", [["w", 1, "p-1:0"]]), op(2, "fail", [["w", 1, "p-2:0"]], reason="aborted-by-agent"),
           op(3, "ok", [["r", 1, "p-2:0"]])]
    final = {"isolation": {"level": "serializable", "expect": ""}, "registers": [[1, "p-2:0"]],
             "register_log": [[1, 1, "p-1:0", "p-1"], [2, 1, "p-2:0", "p-2"]]}
    res = {r.name: r for r in rc.check_all(ops, final)}
    assert res["register.log"].valid is False and res["register.log"].counts["failed_but_logged"] == 1
    assert res["register.isolation"].valid is False and res["register.isolation"].counts["prohibited"] == {"G1a": 1}
