"""Target files checked before any agent starts (one line: file, key, fix; exit 2), the HTTP outcome map, and the
checks saying "not checked: needs …" for what a platform's final state does not offer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from checks.config import check_all as config_checks
from checks.credits import check_all as credits_checks
from tests.conftest import ROOT, run_locust
from toolclash.settings import Settings
from toolclash.stack.process import free_port
from toolclash.targets import TargetError
from toolclash.targets.spec import HttpOp

HTTP = (ROOT / "examples" / "platform" / "http.toml").read_text()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "my-platform.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(autouse=True)
def platform_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLATFORM_URL", "http://127.0.0.1:9")


@pytest.mark.parametrize(("change", "key", "fix"), [
    (("/accounts/{account}/deduct", "/accounts/{acount}/deduct"), "credits.deduct.path",
     "unknown placeholder {acount}; use one of {op_id}, {agent}, {account}, {amount}"),
    (('id = "id", balance = "balance", initial_balance', 'id = "id", initial_balance'),
     "credits.final.accounts.columns", "missing mapping for balance; add balance = "),
    (('fail = { 402 = "insufficient-funds"', 'fail = { 503 = "busy", 402 = "insufficient-funds"'),
     "credits.deduct.fail.503", "leaves the call in doubt; it is never a definite fail"),
    (("ok = [200]  ", "ok = [200, 201, 302]  "), "credits.deduct.ok", "302 is not a success status"),
    (("[credits.deduct]", "[credits.deduce]"), "credits.deduce", "unknown key"),
    (('base_url = "{env:PLATFORM_URL}"', 'base_url = "{env:NO_SUCH_VARIABLE_SET}"'), "base_url",
     "environment variable NO_SUCH_VARIABLE_SET is not set"),
    (('idempotency_header = "Idempotency-Key"', 'idempotency_header = ""'), "tries", "needs the op id as an "
                                                                                    "idempotency key"),
])
def test_a_bad_file_is_one_line_naming_file_key_and_fix(change: tuple[str, str], key: str, fix: str,
                                                        tmp_path: Path) -> None:
    old, new = change
    assert old in HTTP
    path = write(tmp_path, HTTP.replace(old, new, 1))
    with pytest.raises(TargetError) as err:
        Settings.from_mapping({"target": path}, ["credits"])
    message = str(err.value)
    assert "\n" not in message and message.startswith(path), message
    assert key in message and fix in message, message


def test_a_missing_scenario_section_and_a_missing_file(tmp_path: Path) -> None:
    only_credits = HTTP[:HTTP.index("# ----------------------------------------------------------------------------"
                                    "-- config")]
    with pytest.raises(TargetError, match=r"my-platform.toml: config: missing; add a \[config\] table"):
        Settings.from_mapping({"target": write(tmp_path, only_credits)}, ["config"])
    with pytest.raises(TargetError, match="cannot read it"):
        Settings.from_mapping({"target": str(tmp_path / "nope.toml")}, ["credits"])
    with pytest.raises(TargetError, match="cannot import no_such_client_module"):
        Settings.from_mapping({"target": "python:no_such_client_module"}, ["credits"])


def test_a_fault_is_refused_with_a_target(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leave --fault at none"):
        Settings.from_mapping({"target": write(tmp_path, HTTP), "fault": "ack_before_commit"}, ["credits"])


def test_the_resolved_file_travels_to_workers(tmp_path: Path) -> None:
    path = write(tmp_path, HTTP)
    settings = Settings.from_mapping({"target": path}, ["credits"])
    values = settings.values()
    Path(path).unlink()  # a worker on another host has no such file
    again = Settings.from_mapping(values, ["credits"])
    assert again.target_spec.base_url == "http://127.0.0.1:9"
    assert "target_data" not in settings.public() and settings.public()["target_spec"]["kind"] == "http"
    assert again.strategy_for("credits") == "http"


def test_the_status_map() -> None:
    op = HttpOp("POST", "/x", {}, None, frozenset({200}), {402: "insufficient-funds"}, "error",
                {"overdrawn": "insufficient-funds"})
    assert op.outcome(200, {}) == ("ok", "")
    assert op.outcome(402, None) == ("fail", "insufficient-funds")
    assert op.outcome(409, {"error": "overdrawn"}) == ("fail", "insufficient-funds")
    assert op.outcome(400, None) == ("fail", "http-400")
    for status in (500, 502, 503, 504, 202):  # the platform may have applied it: in doubt, never fail
        assert op.outcome(status, None)[0] == "unknown", status


def test_an_unreachable_platform_exits_2_before_any_agent_starts(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = run_locust(["--target", write(tmp_path, HTTP), "-u", "2", "-r", "2", "-t", "2s"], reports=tmp_path,
                     database_url=None, services={"PLATFORM_URL": url})
    assert run.code == 2, run.output()
    lines = [ln for ln in run.proc.stderr.splitlines() if ln.startswith("toolclash:")]
    assert len(lines) == 1 and "Traceback" not in run.proc.stderr, run.output()
    assert re.search(r"my-platform\.toml: base_url: http://127\.0\.0\.1:\d+ is unreachable .*; start the platform "
                     r"or fix base_url", lines[0]), lines
    assert not run.run_dir.exists()  # no run directory, no history: no agent started


# ------------------------------------------------------------------------------- checks degrade honestly


def op(op_id: str, outcome: str, **args: object) -> dict[str, object]:
    return {"op_id": op_id, "tool": "deduct" if "account" in args else "update_config", "outcome": outcome,
            "args": args, "agent": "a1", "attempts": 1, "reason": None}


def test_credits_checks_say_what_a_final_state_lacks() -> None:
    ops = [op("p-1", "ok", account=1, amount=5), op("p-2", "unknown", account=1, amount=3)]
    balances_only = {"credit_accounts": [{"id": 1, "balance": 95, "initial_balance": 100}],
                     "columns": {"credit_accounts": ["id", "balance", "initial_balance"]}}
    got = {r.name: r for r in credits_checks(ops, balances_only)}
    assert got["credits.conservation"].valid is True  # 100 - 5 = 95: the in-doubt call did not apply
    assert got["credits.ledger"].valid == "unknown"
    assert got["credits.ledger"].summary.startswith("not checked: needs a ledger keyed by op id")
    assert got["credits.lost_updates"].summary.startswith("not checked: needs ledger columns balance_before")
    # the in-doubt call could explain the difference: unknown, never valid and never an anomaly
    moved = {**balances_only, "credit_accounts": [{"id": 1, "balance": 92, "initial_balance": 100}]}
    assert {r.name: r.valid for r in credits_checks(ops, moved)}["credits.conservation"] == "unknown"
    # a ledger without before/after: missing and phantom effects op by op, a call applied twice
    ledger = {**moved, "credit_ledger": [{"op_id": "p-1", "account_id": 1, "amount": 5},
                                         {"op_id": "p-2", "account_id": 1, "amount": 3},
                                         {"op_id": "p-2", "account_id": 1, "amount": 3}],
              "columns": {**balances_only["columns"], "credit_ledger": ["op_id", "account_id", "amount"]}}
    got = {r.name: r for r in credits_checks(ops, ledger)}
    assert got["credits.ledger"].valid is False and got["credits.ledger"].counts["applied_more_than_once"] == 1
    assert got["credits.lost_updates"].valid == "unknown"
    none = {r.name: r for r in credits_checks(ops, {"columns": {}})}
    assert none["credits.conservation"].valid == "unknown" and none["credits.no_negative"].valid == "unknown"


def test_config_checks_say_what_a_final_state_lacks() -> None:
    ops = [op("p-1", "ok", record=1, field="f01", value="a1#1")]
    final = {"config_records": [{"id": 1, "doc": {"f01": "a1#1"}}],
             "config_writes": [{"op_id": "p-1", "record_id": 1, "field": "f01", "value": "a1#1", "seq": 1}],
             "columns": {"config_records": ["id", "doc"], "config_writes": ["op_id", "record_id", "field", "value",
                                                                            "seq"]}}
    got = {r.name: r for r in config_checks(ops, final)}
    assert got["config.write_log"].valid is True and got["config.final_document"].valid is True
    assert got["config.version"].summary == "not checked: needs records column(s) version"
    assert got["config.lost_updates"].summary == "not checked: needs writes column(s) doc_after"
    no_log = {r.name: r for r in config_checks(ops, {"config_records": final["config_records"],
                                                     "columns": {"config_records": ["id", "doc"]}})}
    assert all(no_log[n].valid == "unknown" for n in ("config.write_log", "config.final_document"))
