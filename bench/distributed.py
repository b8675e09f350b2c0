"""Distributed phase: the same 100 agents in one process, in a master + 2 workers, in a master + 4 workers.

Figures (issue "Distributed runs"):

* throughput of master + 2 workers versus one process, same agents, same server, same transaction;
* the master's share of the CPU the Locust processes used (the master runs no agents: it receives
  every operation record and every stats report);
* time from the end of ``-t`` to ``checks.json`` being written, with 4 workers (target < 5 s);
* operation records per second that the hand-off carried to the master with every record arriving (a
  backlog would show up as a longer delay above, or as an incomplete history).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench.phase import BenchError, Context, Phase, Row, num, positive_int, private_stack, row
from bench.runners import LocustSpec, reset_credits, run_locust
from toolclash.run import read_json

TARGET_VERDICT_DELAY_S = 5.0
INITIAL_BALANCE = 10**12


class ProcessCpu:
    """CPU seconds of a process tree (a Locust master and its forked workers), sampled while it runs."""

    def __init__(self) -> None:
        self.root: int | None = None
        self.last: dict[int, float] = {}
        self.tick = os.sysconf("SC_CLK_TCK")

    def start(self, pid: int) -> None:
        self.root = pid

    def sample(self) -> None:
        if self.root is None:
            return
        for pid in (self.root, *self._children(self.root)):
            cpu = self._cpu(pid)
            if cpu is not None:
                self.last[pid] = cpu

    def _children(self, parent: int) -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = self._stat(int(entry.name))
                if stat is not None and int(stat[1]) == parent:
                    out.append(int(entry.name))
        return out

    @staticmethod
    def _stat(pid: int) -> list[str] | None:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return text[text.rindex(")") + 2:].split()  # state, ppid, … (fields 3.. of proc(5))

    def _cpu(self, pid: int) -> float | None:
        stat = self._stat(pid)
        return None if stat is None else (int(stat[11]) + int(stat[12])) / self.tick  # utime + stime

    def master_share(self) -> float | None:
        total = sum(self.last.values())
        return None if not total or self.root is None else self.last.get(self.root, 0.0) / total


def run_all(*, url: str, workdir: Path, ts: str, users: int, duration: int, accounts: int, ramp: float,
            postmaster: int | None, cores: int, say: Any) -> dict[str, Any]:
    """Run the three configurations one after the other on the same server; return their figures."""
    out: dict[str, Any] = {"users": users, "duration_s": duration, "runs": {}}
    for procs in (1, 2, 4):
        label = f"p{procs}"
        say.phase(f"distributed: {users} agents, {'one process' if procs == 1 else f'master + {procs} workers'}, "
                  f"{duration} s")
        reset_credits(url, accounts=accounts, initial_balance=INITIAL_BALANCE)
        cpu = ProcessCpu()
        spec = LocustSpec(url=url, users=users, duration=duration, processes=procs, accounts=accounts,
                          initial_balance=INITIAL_BALANCE, reports_dir=workdir,
                          run_id=f"bench-{ts}-dist-{label}", ramp=ramp, postmaster=postmaster, cores=cores)
        res = run_locust(spec, say=say, on_tick=cpu.sample, on_start=cpu.start)
        if "error" in res:
            raise BenchError(f"distributed {label}: {res['error']}")
        run_dir = Path(res["run_dir"])
        started = float(read_json(run_dir / "options.json")["started_at"])
        t_end = started + duration
        verdict_at = (run_dir / "checks.json").stat().st_mtime
        records = 0
        for path in (run_dir / "history").glob("*.jsonl"):
            with open(path, "rb") as fh:
                records += sum(1 for _ in fh)
        history = res.get("history") or {}
        figures = {"tps": res["tps"], "exit_code": res["exit_code"], "records": records,
                   "records_per_s": round(records / duration, 1), "verdict_delay_s": round(verdict_at - t_end, 2),
                   "incomplete": history.get("incomplete"), "master_cpu_share": cpu.master_share()}
        out["runs"][label] = figures
        share = figures["master_cpu_share"]
        say(f"  {label}: {res['tps']:,.1f} ok/s, {records} records ({figures['records_per_s']:,.0f}/s), verdict "
            f"{figures['verdict_delay_s']:.2f} s after the end of -t"
            + ("" if share is None or procs == 1 else f", master {share:.0%} of the Locust processes' CPU"))
    p1, p2, p4 = (out["runs"][k]["tps"] for k in ("p1", "p2", "p4"))
    out["ratio_p2_vs_p1"] = p2 / p1 if p1 else None
    out["ratio_p4_vs_p1"] = p4 / p1 if p1 else None
    out["verdict_delay_p4_s"] = out["runs"]["p4"]["verdict_delay_s"]
    out["verdict_delay_target_met"] = out["verdict_delay_p4_s"] < TARGET_VERDICT_DELAY_S
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distributed-users", type=positive_int, default=100, metavar="N",
                        help="agents of the distributed phase (default 100)")


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    with private_stack(("postgres",), ctx.say, "PostgreSQL for the distributed phase") as (urls, stack):
        return run_all(url=urls["DATABASE_URL"], workdir=ctx.workdir, ts=ctx.ts, users=args.distributed_users,
                       duration=args.duration, accounts=args.accounts, ramp=args.ramp,
                       postmaster=stack.status()["postgres"]["pid"], cores=ctx.cores, say=ctx.say)


def rows(ds: dict[str, Any]) -> list[Row]:
    if "error" in ds:
        return [row("distributed", "FAILED")]
    out: list[Row] = []
    for label, fig in ds["runs"].items():
        who = "1 process" if label == "p1" else f"master + {label[1:]} workers"
        out.append(row(f"{ds['users']} agents, {who}: ok ops/s", num(fig["tps"])))
        out.append(row("  records/s handed to the master", num(fig["records_per_s"], ",.0f")))
        if fig.get("master_cpu_share") is not None and label != "p1":
            out.append(row("  master's share of Locust CPU", f"{fig['master_cpu_share']:.0%}"))
    out.append(row("  ratio master + 2 workers to 1 process", num(ds["ratio_p2_vs_p1"], ".2f") + "x"))
    out.append(row("verdict delay after -t, 4 workers (s)", num(ds["verdict_delay_p4_s"], ".2f"),
                   f"< {TARGET_VERDICT_DELAY_S}", ds["verdict_delay_target_met"]))
    return out


PHASE = Phase(name="distributed", help="skip the distributed phase (one process vs master + 2 and + 4 workers)",
              run=run, rows=rows, add_arguments=add_arguments, steps=lambda args: 3)
