"""Several hosts for real: a master and two workers in their own network namespaces, PostgreSQL on a veth address.

The lab is a bridge in the root namespace holding the backend's address, plus one namespace per host joined to it
by a veth pair. Addresses come from 198.18.0.0/15 (reserved for benchmarks); the namespaces have no default route,
so no traffic can leave them. Everything the test made is removed when it ends. Needs root (``ip netns``): the
project's tests run as root on its CI machine; without root the test fails with that reason, it is not skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LOCUST, ROOT
from toolclash.stack import Stack

MASTER_PORT = 5557
RAMP = "tests/locustfiles/ramp_credits.py"
"""The ramp with credit agents: the namespaces reach PostgreSQL only (mixed.py needs every service)."""

pytestmark = pytest.mark.xdist_group("netns")
"""One test of the namespaces at a time (each builds its own lab; their subnets come from the process id)."""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Lab:
    backend: str
    hosts: dict[str, tuple[str, str]]
    """host name -> (namespace, address)"""

    def run(self, host: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        ns = self.hosts[host][0]
        return subprocess.Popen(["ip", "netns", "exec", ns, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the multi-host test needs root and iproute2 (ip netns): run `make test` as root")
    tag = f"{os.getpid() % 100000}"
    subnet = f"198.18.{os.getpid() % 250 + 1}"
    bridge = f"tcbr{tag}"
    made_ns: list[str] = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        hosts: dict[str, tuple[str, str]] = {}
        for n, host in enumerate(("master", "worker1", "worker2"), start=2):
            ns, outside, inside = f"tc{tag}{host[0]}{host[-1]}", f"tcv{tag}{n}", f"tcp{tag}{n}"
            ip("netns", "add", ns)
            made_ns.append(ns)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", ns)
            ip("link", "set", outside, "master", bridge, "up")
            ip("-n", ns, "addr", "add", f"{subnet}.{n}/24", "dev", inside)
            ip("-n", ns, "link", "set", inside, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            hosts[host] = (ns, f"{subnet}.{n}")
        yield Lab(f"{subnet}.1", hosts)
    finally:
        for ns in made_ns:  # deleting a namespace deletes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


@pytest.fixture
def remote_database(lab: Lab) -> Iterator[str]:
    """A private PostgreSQL that also listens on the lab's backend address (password required from there)."""
    stack = Stack(services=("postgres",), listen=[lab.backend])
    try:
        stack.up()
        urls = [note for note in stack.status()["postgres"]["notes"] if lab.backend in note]
        assert urls, "the stack does not say how other hosts connect"
        state = json.loads((stack.state_dir / "stack.json").read_text())["services"]["postgres"]
        yield f"postgresql://toolclash:{state['password']}@{lab.backend}:{state['port']}/toolclash"
    finally:
        stack.down()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOCUST_", "TOOLCLASH_")) and not k.endswith("_URL")}
    env.update(extra)
    return env


def _distributed_run(lab: Lab, database_url: str, reports: Path, run_id: str, *, stage_seconds: str,
                     kill_worker: bool = False, strategy: str = "pessimistic", extra: tuple[str, ...] = (),
                     stages: str = "2,6") -> tuple[int, str, str, list[subprocess.Popen[str]]]:
    master_addr = lab.hosts["master"][1]
    master = lab.run("master", [
        LOCUST, "-f", RAMP, "--master", "--master-bind-host", master_addr,
        "--master-bind-port", str(MASTER_PORT), "--expect-workers", "2", "--headless",
        "--stages", stages, "--stage-seconds", stage_seconds, "--stage-spawn-rate", "20", "--stop-timeout", "3",
        "--strategy", strategy, "--accounts", "3", "--reports-dir", str(reports), "--run-id", run_id,
        "--loglevel", "WARNING", *extra], _env(DATABASE_URL=database_url))
    workers = [lab.run(host, [LOCUST, "-f", RAMP, "--worker", "--master-host", master_addr,
                              "--master-port", str(MASTER_PORT), "--loglevel", "WARNING"], _env())
               for host in ("worker1", "worker2")]
    try:
        if kill_worker:
            history = reports / run_id / "history"
            deadline = time.monotonic() + 60
            victim_pid = workers[1].pid  # `ip netns exec` execs locust: this is the worker's own pid
            while time.monotonic() < deadline:  # the victim has shipped records: it is mid-run
                if any(p.stat().st_size > 0 for p in history.glob(f"*-{victim_pid}-w*.arrow")):
                    break
                time.sleep(0.1)
            else:
                pytest.fail("worker 2 shipped no history within 60 s")
            os.kill(victim_pid, signal.SIGKILL)
        out, err = master.communicate(timeout=120)
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.terminate()
        for proc in (master, *workers):  # reap every process and close its pipes, whatever happened
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            except ValueError:  # already communicated (the master, normally)
                pass
    return master.returncode, out, err, workers


def test_master_and_two_workers_on_three_hosts_give_one_verdict(lab: Lab, remote_database: str,
                                                                tmp_path: Path) -> None:
    code, out, err, workers = _distributed_run(lab, remote_database, tmp_path, "hosts", stage_seconds="3")
    assert code in (0, 4), f"{code}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = json.loads((tmp_path / "hosts" / "checks.json").read_text())
    assert len(verdict["history"]["processes"]) == 2, verdict["history"]  # both workers' histories arrived
    assert verdict["history"]["incomplete"] == {}
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
    fig = verdict["figures"]["credits"]
    assert fig["ok"] > 0 and verdict["counters"]["commits"] == fig["ok"]
    stages = json.loads((tmp_path / "hosts" / "stages.json").read_text())
    assert [s["users"] for s in stages] == [2, 6]
    # Each history is a worker's own, named after its pid on its host (the master ran no agents).
    for worker in workers:
        assert any(f"-{worker.pid}-" in p for p in verdict["history"]["processes"]), verdict["history"]


def test_a_worker_killed_on_its_host_is_named_and_makes_the_verdict_unknown(lab: Lab, remote_database: str,
                                                                          tmp_path: Path) -> None:
    code, out, err, workers = _distributed_run(lab, remote_database, tmp_path, "lost", stage_seconds="6",
                                               kill_worker=True)
    assert code == 3, f"{code}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = json.loads((tmp_path / "lost" / "checks.json").read_text())
    lost = [p for p in verdict["history"]["incomplete"] if f"-{workers[1].pid}-" in p]
    assert lost, verdict["history"]
    assert verdict.get("lost_workers"), verdict.keys()
    assert not any(c["valid"] is False for c in verdict["checks"])  # a lost worker is doubt, never an anomaly
    assert lost[0] in out


# ------------------------------------------------------------------------- loss and partitions (--nemesis)


def _hosts(lab: Lab) -> str:
    return ",".join(f"{name}={ns}" for name, (ns, _addr) in lab.hosts.items())


STEADY = ("--wait-min", "0.01", "--wait-max", "0.02", "--accounts", "100")
"""A load that stays level for the whole run (with no think time at all, a few hot rows get slower as their dead
versions pile up, and throughput after a fault would be compared with a faster start)."""


def _faulty_run(lab: Lab, database_url: str, reports: Path, run_id: str, schedule: str,
                strategy: str = "pessimistic", load: tuple[str, ...] = STEADY) -> tuple[int, str, str]:
    # one stage of 4 agents: recovery is measured against the same load as before the fault, with 4 s or more
    # after the fault's end for throughput to come back (fewer left it unmeasured on a busy machine)
    code, out, err, _workers = _distributed_run(lab, database_url, reports, run_id, stages="4", stage_seconds="8",
                                                strategy=strategy, extra=(*load, "--nemesis", schedule,
                                                                          "--nemesis-hosts", _hosts(lab)))
    for ns, _addr in lab.hosts.values():  # healed and cleaned up: no rule of toolclash is left in any namespace
        rules = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-S"], capture_output=True, text=True,
                               check=True).stdout
        assert "toolclash:" not in rules, (ns, rules)
    return code, out, err


def _dropped(record: dict) -> int:
    return int(record["detail"].split("had dropped ")[1].split(" packet")[0])


def test_loss_between_a_worker_and_the_database_is_seen_healed_recorded_and_truthful(lab: Lab, remote_database: str,
                                                                                    tmp_path: Path) -> None:
    from tests.faultkit import assert_fault_seen, no_false_check

    code, out, err = _faulty_run(lab, remote_database, tmp_path, "loss", "loss worker2-postgres 30% at 2s for 1.5s")
    assert code in (0, 3, 4), f"{code}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = json.loads((tmp_path / "loss" / "checks.json").read_text())
    no_false_check(verdict)
    loss = assert_fault_seen(tmp_path / "loss", verdict, "loss", "worker2-postgres")
    assert _dropped(loss) > 0, loss["detail"]  # the rules dropped real packets of the run
    assert f"{lab.hosts['worker2'][0]}" in loss["detail"] and lab.backend in loss["detail"]


def test_a_partition_between_a_worker_and_the_master_is_seen_healed_recorded_and_truthful(
        lab: Lab, remote_database: str, tmp_path: Path) -> None:
    from tests.faultkit import assert_fault_seen, no_false_check

    code, out, err = _faulty_run(lab, remote_database, tmp_path, "part", "partition worker1-master at 1.5s for 2s")
    assert code in (0, 3, 4), f"{code}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = json.loads((tmp_path / "part" / "checks.json").read_text())
    no_false_check(verdict)
    part = assert_fault_seen(tmp_path / "part", verdict, "partition", "worker1-master")
    assert _dropped(part) > 0, part["detail"]  # heartbeats and reports between them were dropped
    assert len(verdict["history"]["processes"]) == 2  # both histories arrived once the partition healed
