"""The queue scenario against real Redis and PostgreSQL: admission, rate limits, priorities, leases, every planted
fault caught with named evidence, a consumer killed mid-job, and Redis restarted mid-run.

Most cases drive the tool directly (deterministic, fast) and judge the result with the same checks a run uses;
short headless Locust runs show the whole path: the correct strategy exits 0 with backpressure visible,
``check_then_push`` exits 1, a durable Redis SIGKILLed and restarted mid-run loses nothing acknowledged and the
verdict names the restart, an unreachable Redis is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from checks import UNKNOWN, CheckResult
from checks import queue as cq
from tests.conftest import LOCUST, ROOT, SERVICE_VARS, run_locust
from tests.test_stack import private_dir
from toolclash.backend import Backend
from toolclash.retry import RetryPolicy
from toolclash.settings import Settings, SettingsError
from toolclash.stack import Stack
from toolclash.tools import Call
from toolclash.tools import queue as q

LOCUSTFILE = "locustfiles/jobqueue.py"


def options(**overrides: Any) -> Any:
    return Settings.from_mapping(overrides, ["queue"]).options_of("queue")


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Harness:
    """One run of the scenario driven in-process: agents' tools, their history records, the checks."""

    def __init__(self, backend: Backend, opts: Any, fault: str = "none") -> None:
        self.backend, self.opts, self.fault = backend, opts, fault
        self.ops: list[dict[str, Any]] = []
        self._closers: list[Any] = []
        self._n = 0
        admin = backend.pg("admin")
        self._closers.append(admin)
        self.admin = admin
        q.reset(admin, backend=backend, **vars(opts))

    def tool(self, agent: str, *, pg: bool = False) -> q.QueueTool:
        client = q.redis_client(self.backend.url("REDIS_URL"))
        self._closers.append(client)
        conn = self.backend.pg(agent) if pg else None
        if conn is not None:
            self._closers.append(conn)
        return q.QueueTool(client, conn, agent=agent, opts=self.opts, fault=self.fault, rng=random.Random(1))

    def call(self) -> Call:
        self._n += 1
        return Call(op_id=f"t-{self._n}", policy=RetryPolicy(), rng=random.Random())

    def submit(self, tool: q.QueueTool, prio: int = 1) -> Call:
        call = self.call()
        t0 = time.time()
        tool.submit(call, prio)
        self.ops.append({"run_id": "t", "op_id": call.op_id, "process": "t", "agent": tool.agent, "tool": "submit",
                         "strategy": "lua", "args": {"priority": prio}, "invoke_ts": t0, "complete_ts": time.time(),
                         "outcome": call.outcome, "attempts": 1, "error_class": call.error_class,
                         "reason": call.reason, "result": dict(call.result)})
        return call

    def job(self, job_id: str) -> list[Any] | None:
        raw = self.tool("probe").redis.hget(q.K.jobs, job_id)
        return None if raw is None else q.parse_job(raw.decode())

    def effects(self, job_id: str) -> list[tuple[Any, ...]]:
        with self.admin.cursor() as cur:
            cur.execute("SELECT delivery, consumer FROM toolclash.queue_effects WHERE job_id = %s ORDER BY seq",
                        (job_id,))
            rows = cur.fetchall()
        self.admin.rollback()
        return rows

    def verdict(self) -> dict[str, CheckResult]:
        final = q.snapshot(self.admin, self.backend)
        self.final = final
        return {r.name: r for r in cq.check_all(self.ops, final)}

    def close(self) -> None:
        for c in self._closers:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - teardown
                pass


@pytest.fixture
def harness(stack: dict[str, str], database_url: str) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(fault: str = "none", urls: dict[str, str] | None = None, **overrides: Any) -> Harness:
        backend = Backend({**stack, "DATABASE_URL": database_url, **(urls or {})}, run_id=f"t{len(made)}")
        h = Harness(backend, options(**overrides), fault)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


# ------------------------------------------------------------------------------------------ admission


def test_admission_is_bounded_and_a_retried_job_id_is_admitted_once(harness: Callable[..., Harness]) -> None:
    h = harness(queue_capacity=3, queue_rate_per_agent=100, queue_full_retry_ms=150)
    tools = [h.tool(f"a{i}") for i in range(5)]
    calls = [h.submit(t) for t in tools]
    assert [c.outcome for c in calls] == ["ok", "ok", "ok", "fail", "fail"]
    assert [c.result["occupancy"] for c in calls[:3]] == [1, 2, 3]
    assert calls[3].reason == "queue-full" and calls[3].result["retry_after_ms"] == 150
    again = Call(op_id=calls[0].op_id, policy=RetryPolicy(), rng=random.Random())
    tools[0].submit(again, 1)  # the same job id again (a client retry): admitted once
    assert again.outcome == "ok" and again.result["duplicate"] is True
    redis = tools[0].redis
    assert redis.zcard(q.K.ready) == 3 and int(redis.get(q.K.hwm)) == 3
    res = h.verdict()
    assert res["queue.capacity"].valid is True and res["queue.capacity"].counts["hwm"] == 3


def test_rate_limits_per_agent_and_global_with_a_retry_after_hint(harness: Callable[..., Harness]) -> None:
    h = harness(queue_rate_per_agent=2, queue_rate_global=3, queue_rate_window_s=0.3)
    a, b, c = h.tool("a"), h.tool("b"), h.tool("c")
    assert [h.submit(a).outcome, h.submit(a).outcome] == ["ok", "ok"]
    limited = h.submit(a)
    assert limited.reason == "rate-limited-agent" and 0 < limited.result["retry_after_ms"] <= 300
    assert h.submit(b).outcome == "ok"
    glob = h.submit(c)
    assert glob.reason == "rate-limited-global"
    time.sleep(max(limited.result["retry_after_ms"], glob.result["retry_after_ms"]) / 1000 + 0.01)
    assert h.submit(a).outcome == "ok"  # the hint was honest: the window slid
    res = h.verdict()
    assert res["queue.rate_limit"].valid is True and res["queue.rate_limit"].counts["admissions"] == 4


def _phase_us(tool: q.QueueTool, window_us: int) -> int:
    """Where the Redis server's clock is within the current fixed window."""
    secs, micros = tool.redis.time()
    return int((secs * 1_000_000 + micros) % window_us)


def test_fixed_window_fault_admits_twice_the_limit_across_a_boundary(harness: Callable[..., Harness]) -> None:
    for fault in ("fixed_window", "none"):
        h = harness(fault, queue_rate_per_agent=2, queue_rate_window_s=0.4)
        a = h.tool("a")
        wait_until(lambda c=a: _phase_us(c, 400_000) > 330_000, what="the end of a rate window")
        first = [h.submit(a).outcome for _ in range(2)]
        wait_until(lambda c=a: _phase_us(c, 400_000) < 200_000, what="the next window")
        second = [h.submit(a).outcome for _ in range(2)]
        rl = h.verdict()["queue.rate_limit"]
        assert first == ["ok", "ok"]
        if fault == "fixed_window":
            assert second == ["ok", "ok"]
            assert rl.valid is False and rl.evidence[0]["who"] == "a" and rl.evidence[0]["admissions_in_window"] == 3
        else:
            assert second == ["fail", "fail"] and rl.valid is True


def test_one_redis_round_trip_each_for_submit_claim_and_ack(harness: Callable[..., Harness]) -> None:
    h = harness()
    producer, consumer = h.tool("s"), h.tool("c", pg=True)
    sent: list[Any] = []
    for tool in (producer, consumer):
        original = tool.redis.execute_command

        def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            sent.append(args[0])
            return _original(*args, **kwargs)

        tool.redis.execute_command = counted
    h.submit(producer)
    job = consumer.claim()
    assert job is not None
    consumer.execute(h.call(), job, stall=False)
    assert sent == ["EVALSHA", "EVALSHA", "EVALSHA"]  # reset loaded the scripts: no NOSCRIPT round trip


@pytest.mark.parametrize(("overrides", "flag"), [({"queue_priority_mix": "10,60"}, "--queue-priority-mix"),
                                                 ({"queue_capacity": 0}, "--queue-capacity"),
                                                 ({"queue_stall_rate": 1.5}, "--queue-stall-rate")])
def test_a_bad_option_is_one_line_naming_the_flag(overrides: dict[str, Any], flag: str) -> None:
    with pytest.raises(SettingsError, match=flag) as excinfo:
        options(**overrides)
    assert "\n" not in str(excinfo.value)


# ------------------------------------------------------------------------------------------ priorities


def test_most_urgent_first_fifo_within_a_priority_and_the_ignore_priority_fault(
        harness: Callable[..., Harness]) -> None:
    order = [2, 1, 0, 2, 0]  # bulk, normal, critical, bulk, critical
    for fault in ("none", "ignore_priority"):
        h = harness(fault, queue_rate_per_agent=100, queue_inversion_tolerance_ms=20)
        tools = [h.tool(f"s{i}") for i in range(len(order))]
        jobs = [h.submit(t, p).op_id for t, p in zip(tools, order, strict=True)]
        time.sleep(0.05)  # everybody waits longer than the tolerance
        consumer = h.tool("c", pg=True)
        claimed = []
        while (job := consumer.claim()) is not None:
            claimed.append(job.job)
            consumer.execute(h.call(), job, stall=False)
        res = h.verdict()
        if fault == "none":
            assert claimed == [jobs[2], jobs[4], jobs[1], jobs[0], jobs[3]]
            assert res["queue.priority"].valid is True
        else:
            assert claimed == jobs
            pr = res["queue.priority"]
            assert pr.valid is False and pr.counts["inversions"] >= 2
            assert pr.evidence[0]["started"] == jobs[0] and pr.evidence[0]["its_priority"] == "critical"
        assert res["queue.accounting"].valid is True and res["queue.accounting"].counts["executed"] == 5


# ------------------------------------------------------------------------------------------ leases, effects


@pytest.mark.parametrize("fault", ["none", "non_idempotent_consumer"])
def test_a_stalled_consumer_loses_its_lease_and_the_effect_applies_once(
        fault: str, harness: Callable[..., Harness]) -> None:
    h = harness(fault, queue_lease_ms=150, queue_work_ms=0)
    job_id = h.submit(h.tool("s")).op_id
    slow, fast = h.tool("slow", pg=True), h.tool("fast", pg=True)
    first = slow.claim()
    assert first is not None and first.delivery == 1
    assert fast.claim() is None  # leased: nobody else gets it
    second = wait_until(fast.claim, timeout=5, what="the lease to expire")
    assert (second.job, second.delivery) == (job_id, 2) and fast.requeued == 1
    done = fast.execute(h.call(), second, stall=False)
    assert done.result["applied"] is True and done.result["ack"] == "ok"
    late = slow.execute(h.call(), first, stall=False)  # the stalled consumer comes back
    assert late.result["ack"] == "already-done"
    res = h.verdict()
    if fault == "none":
        assert late.result["applied"] is False and len(h.effects(job_id)) == 1
        assert res["queue.duplicates"].valid is True
    else:
        assert late.result["applied"] is True and h.effects(job_id) == [(2, "fast"), (1, "slow")]
        dup = res["queue.duplicates"]
        assert dup.valid is False and dup.evidence[0]["job"] == job_id
        assert [a["consumer"] for a in dup.evidence[0]["applied"]] == ["fast", "slow"]
    assert res["queue.accounting"].valid is True


VICTIM = """
import os, random, sys
from toolclash.retry import RetryPolicy
from toolclash.backend import Backend
from toolclash.settings import Settings, SettingsError
from toolclash.tools import Call, queue as q
opts = Settings.from_mapping({"queue_lease_ms": 300, "queue_work_ms": 60000}, ["queue"]).options_of("queue")
backend = Backend({k: os.environ[k] for k in ("DATABASE_URL", "REDIS_URL")}, "victim")
tool = q.QueueTool(q.redis_client(os.environ["REDIS_URL"]), backend.pg("victim"), agent="victim", opts=opts,
                   fault=sys.argv[1])
job = tool.claim()
print(job.job, flush=True)
tool.execute(Call(op_id="victim-1", policy=RetryPolicy(), rng=random.Random()), job, stall=False)
"""


@pytest.mark.parametrize("fault", ["none", "no_lease"])
def test_a_consumer_killed_mid_job_is_redelivered_and_executed_once(
        fault: str, harness: Callable[..., Harness]) -> None:
    h = harness(fault, queue_lease_ms=300, queue_drain_consumers=2)
    job_id = h.submit(h.tool("s")).op_id
    env = {**os.environ, **h.backend.urls, "PYTHONPATH": str(ROOT)}
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, fault], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == job_id  # claimed, now "working" for a minute
        record = h.job(job_id)
        assert record is not None and record[6] == "f" and record[5] == 1  # in flight, first delivery
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.communicate()
    summary = q.drain(h.backend, h.opts, timeout_s=3, fault=fault)
    res = h.verdict()
    if fault == "none":
        assert summary["executed"] == 1 and summary["left"] == 0
        record = h.job(job_id)
        assert record is not None and record[5] == 2 and record[6] == "d"  # delivered twice, done
        assert [r[1] for r in h.effects(job_id)] and len(h.effects(job_id)) == 1
        assert h.effects(job_id)[0][1].startswith("drain-")
        assert all(r.valid is True for r in res.values()), res
    else:
        assert summary["executed"] == 0 and h.effects(job_id) == []
        acc = res["queue.accounting"]
        assert acc.valid is False and acc.counts["lost"] == 1
        assert acc.evidence[0]["job"] == job_id and "neither queued nor leased" in acc.evidence[0]["what"]


def test_a_drain_cut_short_by_its_deadline_leaves_jobs_queued_not_lost_nor_valid(harness: Callable[..., Harness]
                                                                                  ) -> None:
    """Jobs left queued when the drain gave up are not lost, but nobody showed them executed: unknown, naming them
    (a consumer that never executes jobs would leave the same state and must not pass)."""
    h = harness(queue_rate_per_agent=100, queue_work_ms=150, queue_drain_consumers=1)
    jobs = [h.submit(h.tool(f"s{i}")).op_id for i in range(6)]
    summary = q.drain(h.backend, h.opts, timeout_s=0.2)
    assert summary["timed_out"] is True and 1 <= summary["executed"] < 6
    assert summary["left"] == 6 - summary["executed"]
    acc = h.verdict()["queue.accounting"]
    assert acc.valid == "unknown" and acc.counts["queued_after_drain"] == summary["left"], acc
    assert acc.evidence_total == summary["left"] and "deadline" in acc.summary, acc
    assert acc.counts["executed"] == summary["executed"] and len(jobs) == 6
    assert h.final["redis"]["drain"] == summary  # the snapshot carries the drain's summary into the report


# ------------------------------------------------------------------------------------------ Redis restart


def _kill_redis(stack: Stack) -> None:
    pid = stack.status()["redis"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not stack.status()["redis"]["running"], what="redis to die")


def test_redis_restart_mid_run_is_reported_truthfully(harness: Callable[..., Harness]) -> None:
    """Persistence on (AOF, fsync always): everything acknowledged survives a SIGKILL and the checks pass,
    naming the restart. Persistence off: the queue comes back empty and the checks say unknown, not true."""
    for durable in (True, False):
        state_dir = private_dir()
        redis_stack = Stack(state_dir, services=("redis",), durable=durable)
        try:
            url = redis_stack.up(timeout=60)["REDIS_URL"]
            h = harness(urls={"REDIS_URL": url}, queue_rate_per_agent=100, queue_lease_ms=200)
            before = [h.submit(h.tool(f"s{i}")) for i in range(6)]
            consumer = h.tool("c", pg=True)
            for _ in range(2):
                job = consumer.claim()
                assert job is not None
                consumer.execute(h.call(), job, stall=False)
            in_flight = consumer.claim()  # claimed when the server dies
            late = h.tool("s-outage")
            _kill_redis(redis_stack)
            outage = h.submit(late)
            assert outage.outcome == "unknown" and outage.reason == "redis-connection-lost"
            assert redis_stack.up(timeout=60)["REDIS_URL"] == url
            after = [h.submit(h.tool(f"t{i}")) for i in range(3)]
            assert all(c.outcome == "ok" for c in before + after)
            q.drain(h.backend, h.opts, timeout_s=3)
            res = h.verdict()
            acc = res["queue.accounting"]
            assert h.final["redis"]["server_run_id"] != h.final["meta"]["redis_run_id"]
            if durable:
                assert in_flight is not None and len(h.effects(in_flight.job)) == 1  # its lease expired, redone
                assert acc.valid is True and acc.counts["executed"] == 9 and "restarted" in acc.summary
                assert all(r.valid is True for r in res.values()), res
                assert cq.figures(h.ops, h.final)["queue_redis_restarted"] is True
            else:
                assert acc.valid == UNKNOWN and acc.counts["missing_after_restart"] == 3 + 1
                assert acc.counts.get("lost", 0) == 0 and "lost the run's data" in acc.summary
                assert res["queue.priority"].valid == UNKNOWN and res["queue.duplicates"].valid is True
        finally:
            redis_stack.down()
            shutil.rmtree(state_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ whole runs


def test_redis_killed_and_restarted_during_a_run_with_persistence(database_url: str, tmp_path: Any) -> None:
    """A headless run against a durable Redis that is SIGKILLed mid-run and restarted on the same port: agents see
    errors and in-doubt calls, nothing acknowledged is lost, and the verdict names the restart."""
    state_dir = private_dir()
    redis_stack = Stack(state_dir, services=("redis",), durable=True)
    try:
        url = redis_stack.up(timeout=60)["REDIS_URL"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_"))
               and k not in SERVICE_VARS}
        env.update(DATABASE_URL=database_url, REDIS_URL=url)
        cmd = [LOCUST, "-f", LOCUSTFILE, "--headless", "--reports-dir", str(tmp_path), "--run-id", "restart",
               "--report", "none", "--loglevel", "WARNING", "-u", "20", "-r", "20", "-t", "5s", "--profile", "stress",
               "--queue-consumers", "4", "--queue-capacity", "20", "--queue-lease-ms", "300"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            probe = q.redis_client(url)
            wait_until(lambda: probe.hlen(q.K.jobs) >= 40, timeout=60, what="the run to admit jobs")
            probe.close()
            _kill_redis(redis_stack)
            assert redis_stack.up(timeout=60)["REDIS_URL"] == url
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode in (0, 4), f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
        verdict = json.loads((tmp_path / "restart" / "checks.json").read_text())
        checks = {c["name"]: c for c in verdict["checks"]}
        assert all(c["valid"] is True for c in checks.values()), checks
        assert "restarted" in checks["queue.accounting"]["summary"]
        assert verdict["figures"]["queue"]["queue_redis_restarted"] is True
        assert checks["queue.accounting"]["counts"]["executed"] >= 40  # admitted before the crash, kept, executed
    finally:
        redis_stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)



def test_a_run_exits_0_with_backpressure_visible_and_drains(stack: dict[str, str], database_url: str,
                                                             tmp_path: Any) -> None:
    # 27 submitters allowed 10 jobs/s each against 3 consumers of ~20 jobs/s: the queue must fill and push back
    run = run_locust(["-u", "30", "-r", "30", "-t", "4s", "--profile", "stress", "--queue-consumers", "3",
                      "--queue-rate-per-agent", "10", "--queue-capacity", "20", "--queue-lease-ms", "300",
                      "--queue-stall-rate", "0.05"],
                     reports=tmp_path, database_url=database_url, services=stack, locustfile=LOCUSTFILE)
    assert run.code == 0, run.output()
    verdict = run.verdict
    assert all(c["valid"] is True for c in verdict["checks"]), verdict["checks"]
    fig = verdict["figures"]["queue"]
    assert fig["queue_rejections"].get("queue-full", 0) > 0 and fig["queue_hwm"] == 20, fig
    assert "fail: queue-full" in run.proc.stdout + run.proc.stderr  # Locust's own summary shows the backpressure
    assert fig["queue_final_ready"] == 0 and fig["queue_final_inflight"] == 0 and fig["queue_drain"]["left"] == 0
    waits = fig["queue_wait_by_priority"]
    assert waits["critical"]["p95_ms"] < waits["bulk"]["p95_ms"], waits
    assert run.check("queue.accounting")["counts"]["executed"] == fig["queue_admissions"]
    assert verdict["counters"]["queue_admitted"] == fig["queue_admissions"]


def test_check_then_push_overfills_the_queue_and_exits_1(stack: dict[str, str], database_url: str,
                                                          tmp_path: Any) -> None:
    run = run_locust(["-u", "40", "-r", "40", "-t", "3s", "--profile", "stress", "--queue-consumers", "4",
                      "--queue-rate-per-agent", "10", "--queue-capacity", "20", "--fault", "check_then_push"],
                     reports=tmp_path, database_url=database_url, services=stack, locustfile=LOCUSTFILE)
    assert run.code == 1, run.output()
    cap = run.check("queue.capacity")
    assert cap["valid"] is False and cap["counts"]["hwm"] > 20
    assert cap["evidence"][0]["source"] == "admission reply" and cap["evidence"][0]["job"]
    assert "queue.capacity" in run.proc.stdout and "FALSE" in run.proc.stdout
    # the servers are the session's, but the verdict needs none of them: the run directory alone gives it again
    again = subprocess.run([sys.executable, "-m", "checks", "--run", str(run.run_dir)], cwd=ROOT,
                           capture_output=True, text=True, check=False)
    assert again.returncode == 1 and "occupancy exceeded capacity 20" in again.stdout, again.stdout + again.stderr


def test_unreachable_redis_is_one_line_and_exit_2(database_url: str, tmp_path: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = run_locust(["-u", "2", "-r", "2", "-t", "2s"], reports=tmp_path, database_url=database_url,
                     services={"REDIS_URL": f"redis://:secret@127.0.0.1:{port}/0"}, locustfile=LOCUSTFILE)
    assert run.code == 2, run.output()
    lines = [line for line in run.proc.stderr.splitlines() if line.startswith("toolclash:")]
    assert len(lines) == 1 and "REDIS_URL" in lines[0] and "secret" not in run.proc.stderr, run.output()
    assert "Traceback" not in run.proc.stderr
    assert SERVICE_VARS  # the conftest strips every service variable the test did not pass
