"""Your own platform as the system under test (``--target``): the example platform (examples/platform, gunicorn
over the embedded PostgreSQL) driven over HTTP, through SQL statements and through a client package; its
``racy`` variant caught, its ``correct`` one valid; calls in doubt after a timeout resolved through the ledger.

Each case is a short headless Locust run against the session stack's ``platform`` / ``platform_racy`` services.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_locust
from toolclash.history import read_history
from toolclash.stack.process import free_port

HTTP = "examples/platform/http.toml"
SQL = "examples/platform/sql.toml"
LOAD = ["-u", "10", "-r", "10", "-t", "3s", "--profile", "stress", "--stop-timeout", "3"]


def http_run(stack: dict[str, str], tmp_path: Path, args: list[str], *, racy: bool = False,
             locustfile: str = "locustfiles/credits.py", target: str = HTTP, run_id: str = "t",
             extra_env: dict[str, str] | None = None) -> Any:
    """A run whose agents call the example platform over HTTP (no DATABASE_URL: nothing else is started)."""
    url = stack["PLATFORM_RACY_URL" if racy else "PLATFORM_URL"]
    return run_locust(["--target", target, *args], reports=tmp_path, database_url=None, run_id=run_id,
                      locustfile=locustfile, services={"PLATFORM_URL": url, **(extra_env or {})})


def checks_of(run: Any) -> dict[str, Any]:
    return {c["name"]: c["valid"] for c in run.verdict["checks"]}


def locust_entries(run: Any) -> dict[str, dict[str, Any]]:
    stats = json.loads((run.run_dir / "locust_stats.json").read_text())
    return {f"{e['method']} {e['name']}": e for e in stats["entries"]}


# ------------------------------------------------------------------------------------------------ HTTP


def test_racy_platform_over_http_loses_updates_named_op_by_op(stack: dict[str, str], tmp_path: Path) -> None:
    run = http_run(stack, tmp_path, [*LOAD, "--accounts", "2"], racy=True)
    assert run.code == 1, run.output()
    lost = run.check("credits.lost_updates")
    assert lost["valid"] is False and lost["counts"]["lost_updates"] > 0, lost
    first = lost["evidence"][0]
    assert first["op_id"] and first["overwritten_by"] and first["outcome"] == "ok", first
    assert run.check("credits.conservation")["valid"] is False
    assert "credits.lost_updates" in run.proc.stdout and "FALSE" in run.proc.stdout


def test_correct_platform_over_http_is_valid_and_locust_shows_its_endpoint(stack: dict[str, str],
                                                                           tmp_path: Path) -> None:
    run = http_run(stack, tmp_path, [*LOAD, "--accounts", "2"])
    assert run.code in (0, 4), run.output()
    assert all(v is True for v in checks_of(run).values()), run.verdict["checks"]
    fig = run.verdict["figures"]["credits"]
    assert fig["ok"] > 50, fig
    # Locust's own statistics name the platform's endpoint; each request is reported once (not also as a tool call)
    entries = locust_entries(run)
    endpoint = entries["POST POST /accounts/{account}/deduct"]
    assert endpoint["num_requests"] >= fig["calls"] - fig["unknown"], (entries, fig)
    assert not any(name.startswith("deduct ") for name in entries), entries
    final = json.loads((run.run_dir / "final" / "credits.json").read_text())
    assert final["target"]["kind"] == "http" and "balance_before" in final["columns"]["credit_ledger"]


def test_balances_read_with_sql_only_give_an_honest_unknown(stack: dict[str, str], tmp_path: Path) -> None:
    """The final state read with SQL from the platform's own database (read only), balances only and no initial
    balance column: conservation holds against the balances read before the first call, and every check that
    needs the ledger says what it needs: the verdict is unknown (3), never valid."""
    text = (ROOT / HTTP).read_text()
    start, end = text.index("[credits.final]"), text.index("# ---------------------------------------------------"
                                                           "--------------------------- config")
    final = '''[credits.final]
source = "sql"
database_url = "{env:PLATFORM_DATABASE_URL}"

[credits.final.accounts]
query = "SELECT id, balance FROM platform.accounts"
columns = { id = "id", balance = "balance" }

'''
    target = tmp_path / "balances.toml"
    target.write_text(text[:start] + final + text[end:])
    run = http_run(stack, tmp_path, [*LOAD, "--accounts", "2"], target=str(target),
                   extra_env={"PLATFORM_DATABASE_URL": stack["PLATFORM_DATABASE_URL"]})
    assert run.code == 3, run.output()
    got = {c["name"]: c for c in run.verdict["checks"]}
    # (a call cut short at stop may still have applied: without a ledger that can only make it unknown)
    assert got["credits.conservation"]["valid"] in (True, "unknown") and got["credits.no_negative"]["valid"] is True
    assert got["credits.conservation"]["counts"]["accounts"] == 2
    for name in ("credits.ledger", "credits.lost_updates"):
        assert got[name]["valid"] == "unknown" and got[name]["summary"].startswith("not checked: needs"), got[name]
    final_state = json.loads((run.run_dir / "final" / "credits.json").read_text())
    assert final_state["columns"]["credit_accounts"] == ["id", "balance", "initial_balance"]  # read at the start


def test_config_over_http_racy_loses_updates_correct_is_valid_across_workers(stack: dict[str, str],
                                                                               tmp_path: Path) -> None:
    racy = http_run(stack, tmp_path, LOAD, racy=True, locustfile="locustfiles/config.py", run_id="racy")
    assert racy.code == 1, racy.output()
    lost = racy.check("config.lost_updates")
    assert lost["valid"] is False and lost["evidence"][0]["overwritten_by"], lost
    # master + 2 workers: the target travels with the run's settings (workers read no file of their own)
    ok = http_run(stack, tmp_path, [*LOAD, "--processes", "2"], locustfile="locustfiles/config.py", run_id="ok")
    assert ok.code in (0, 4), ok.output()
    assert all(v is True for v in checks_of(ok).values()), ok.verdict["checks"]
    assert len(ok.verdict["history"]["processes"]) == 2, ok.verdict["history"]


def test_a_call_retried_after_a_timeout_is_in_doubt_and_the_ledger_resolves_it(stack: dict[str, str],
                                                                              tmp_path: Path) -> None:
    """Every 3rd write answers 1.5 s late (after committing); the client gives up after 0.4 s and sends it again
    with the same idempotency key: the retry gets the stored answer, or times out too and stays unknown."""
    port = free_port()
    env = {**os.environ, "PLATFORM_DATABASE_URL": stack["DATABASE_URL"]}
    proc = subprocess.Popen([sys.executable, "-m", "examples.platform", "--port", str(port), "--workers", "1",
                             "--delay-ms", "1500", "--delay-every", "3"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        target = tmp_path / "slow.toml"
        target.write_text((ROOT / HTTP).read_text().replace("timeout_s = 5", "timeout_s = 0.4"))
        run = run_locust(["--target", str(target), "-u", "6", "-r", "6", "-t", "4s", "--profile", "stress",
                          "--stop-timeout", "3", "--accounts", "3"], reports=tmp_path, database_url=None,
                         services={"PLATFORM_URL": f"http://127.0.0.1:{port}"})
    finally:
        proc.terminate()
        proc.wait(10)
    assert run.code in (0, 4), run.output()
    assert all(v is True for v in checks_of(run).values()), run.verdict["checks"]
    ops = read_history(run.run_dir).ops
    retried = [op for op in ops if (op.get("result") or {}).get("after_in_doubt") == "timeout"]
    in_doubt = [op for op in ops if op["outcome"] == "unknown" and op["reason"].startswith("timeout")]
    assert retried, "no call was retried after a timeout"
    assert in_doubt, "no call stayed in doubt"
    ledger = run.check("credits.ledger")["counts"]
    assert ledger["unknown_applied"] >= len([op for op in in_doubt if op["attempts"] == 2]) > 0, ledger


def wait_http(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the example platform did not start (exit {proc.poll()})") from None
            time.sleep(0.1)


# ------------------------------------------------------------------------------------------------- SQL


@pytest.mark.parametrize("locustfile", ["locustfiles/credits.py", "locustfiles/config.py"])
def test_sql_target_is_valid(locustfile: str, database_url: str, tmp_path: Path) -> None:
    run = run_locust(["--target", SQL, *LOAD], reports=tmp_path, database_url=database_url, locustfile=locustfile)
    assert run.code in (0, 4), run.output()
    assert all(v is True for v in checks_of(run).values()), run.verdict["checks"]
    assert run.verdict["figures"][Path(locustfile).stem]["ok"] > 20


def test_sql_target_that_reads_then_writes_loses_updates(database_url: str, tmp_path: Path) -> None:
    """The same statements a racy service would send: read the balance, write the absolute value back."""
    text = (ROOT / SQL).read_text()
    start = text.index("[[credits.deduct.steps]]")
    end = text.index("[credits.final]")
    racy = '''[[credits.deduct.steps]]
sql = "SELECT balance FROM platform.accounts WHERE id = {account}"
returns = ["balance_before"]
empty = "no-such-account"

[[credits.deduct.steps]]
sql = """UPDATE platform.accounts SET balance = {balance_before} - {amount}
         WHERE id = {account} AND {balance_before} >= {amount} RETURNING balance"""
returns = ["balance_after"]
empty = "insufficient-funds"

[[credits.deduct.steps]]
sql = """INSERT INTO platform.ledger (idempotency_key, account_id, amount, balance_before, balance_after, agent)
         VALUES ({op_id}, {account}, {amount}, {balance_before}, {balance_after}, {agent})"""

'''
    target = tmp_path / "racy.toml"
    target.write_text(text[:start] + racy + text[end:])
    run = run_locust(["--target", str(target), *LOAD, "--accounts", "1"], reports=tmp_path, database_url=database_url)
    assert run.code == 1, run.output()
    assert run.check("credits.lost_updates")["valid"] is False
    assert run.check("credits.lost_updates")["evidence"][0]["overwritten_by"]


# ---------------------------------------------------------------------------------------- Python client


def test_python_client_package_by_module_and_by_entry_point(stack: dict[str, str], tmp_path: Path) -> None:
    # an entry point of the group toolclash.targets, as `pip install` of the package would declare it
    dist = tmp_path / "site" / "platform_client-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: platform-client\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[toolclash.targets]\nexample-config = platform_client.config\n")
    path = os.pathsep.join([str(ROOT / "examples" / "client"), str(tmp_path / "site")])
    racy = run_locust(["--target", "python:platform_client.credits", *LOAD, "--accounts", "2"], reports=tmp_path,
                      database_url=None, run_id="racy",
                      services={"PLATFORM_URL": stack["PLATFORM_RACY_URL"], "PYTHONPATH": path})
    assert racy.code == 1, racy.output()
    assert racy.check("credits.lost_updates")["valid"] is False
    ok = run_locust(["--target", "python:example-config", *LOAD], reports=tmp_path, database_url=None, run_id="ok",
                    locustfile="locustfiles/config.py",
                    services={"PLATFORM_URL": stack["PLATFORM_URL"], "PYTHONPATH": path})
    assert ok.code in (0, 4), ok.output()
    assert all(v is True for v in checks_of(ok).values()), ok.verdict["checks"]
    assert json.loads((ok.run_dir / "options.json").read_text())["settings"]["strategies"] == {"config": "python"}
