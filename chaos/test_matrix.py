"""The long fault matrix (``make chaos``, not run by ``make test`` or CI): every fault kind against each
scenario's main service, with a correct strategy (valid, unknown or an SLA miss, never an anomaly) and with a
known-bad one (the anomaly is still caught); every window seen in effect, healed, recorded, plotted, with its
recovery measured. Each case starts the run's own durable embedded stack (the nemesis crashes its servers).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import run_locust
from tests.faultkit import assert_fault_seen, no_false_check

KINDS = ("crash", "restart", "stop", "pause", "latency", "reset", "bandwidth")
PARAMS = {"latency": "30ms±10ms ", "bandwidth": "100kbit "}

SCENARIOS = {
    # scenario: (locustfile, service, common args, correct args, known-bad args, the check the bad one fails)
    "credits": ("locustfiles/credits.py", "postgres", ["-u", "12", "-r", "12", "--profile", "stress"],
                ["--strategy", "pessimistic", "--accounts", "100"], ["--strategy", "naive", "--accounts", "1"],
                "credits.lost_updates"),
    "queue": ("locustfiles/jobqueue.py", "redis", ["-u", "30", "-r", "30", "--profile", "stress",
                                                   "--queue-consumers", "4", "--queue-rate-per-agent", "10",
                                                   "--queue-capacity", "20"],
              [], ["--fault", "check_then_push"], "queue.capacity"),
    # a level load for the correct run (with no think time a few hot rows slow down as the run goes on, and the
    # throughput after a fault would be compared with a faster start)
    "crossservice": ("locustfiles/crossservice.py", "auth_postgres", ["-u", "8", "-r", "8"],
                     ["--mode", "2pc", "--xs-agents", "50", "--wait-min", "0.005", "--wait-max", "0.01"],
                     ["--mode", "2pc", "--profile", "stress", "--xs-agents", "4", "--fault", "relay_without_dedup",
                      "--relay-redeliver-rate", "0.3"], "crossservice.analytics"),
}


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize("correct", [True, False], ids=["correct", "known-bad"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_fault_kind_on_every_scenario(scenario: str, kind: str, correct: bool, tmp_path: Path) -> None:
    locustfile, service, common, good, bad, check = SCENARIOS[scenario]
    duration = "" if kind == "restart" else " for 1.5s"
    run = run_locust([*common, *(good if correct else bad), "-t", "8s", "--nemesis",
                      f"{kind} {service} {PARAMS.get(kind, '')}at 2.5s{duration}"],
                     reports=tmp_path, database_url=None, locustfile=locustfile, timeout=240)
    verdict = run.verdict
    if correct:
        no_false_check(verdict)
    else:
        assert run.code == 1, run.output()
        assert run.check(check)["valid"] is False
    assert_fault_seen(run.run_dir, verdict, kind, service, recovered=correct)


@pytest.mark.parametrize("correct", [True, False], ids=["correct", "known-bad"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_worker_kill_on_every_scenario(scenario: str, correct: bool, tmp_path: Path) -> None:
    locustfile, _service, common, good, bad, check = SCENARIOS[scenario]
    port = _free_port()
    run = run_locust([*common, *(good if correct else bad), "-t", "8s", "--processes", "2", "--master-bind-host",
                      "127.0.0.1", "--master-bind-port", port, "--master-port", port, "--enable-rebalancing",
                      "--nemesis", "worker_kill worker2 at 2s"],
                     reports=tmp_path, database_url=None, locustfile=locustfile, timeout=240)
    verdict = run.verdict
    if correct:
        no_false_check(verdict)
    else:
        assert run.code == 1, run.output()
        assert run.check(check)["valid"] is False
    assert_fault_seen(run.run_dir, verdict, "worker_kill", "worker2", recovered=False)
