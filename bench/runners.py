"""The load runs of the bench: pgbench, the psycopg2 + gevent floor and a locustfile, as child processes.

The credit transaction is the ``pessimistic`` strategy of :mod:`toolclash.tools.credits`: ``BEGIN``;
``SELECT balance, version … FOR UPDATE``; ``UPDATE … SET balance = <read balance − amount>,
version = version + 1``; ledger ``INSERT`` with the balance before and after; ``COMMIT``. Five
round trips on each side, one account drawn uniformly from ``accounts``, amount 1..10. Between runs the
schema is reset by the scenario's own ``reset`` hook, as a run does.
"""

from __future__ import annotations

import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from bench.children import ChildResult, LineCounter, LogTail, clean_env, run_child
from bench.cpu import CpuSampler
from bench.phase import ROOT, BenchError
from toolclash import db
from toolclash.backend import Backend
from toolclash.columnar import batches
from toolclash.history import OK, history_files, read_history
from toolclash.run import read_json
from toolclash.scenario import get as scenario

LOCUSTFILE = "locustfiles/credits.py"
STRATEGY = "pessimistic"
AMOUNT_MIN, AMOUNT_MAX = 1, 10  # the credits scenario's defaults (--amount-min/--amount-max)
STOP_TIMEOUT_S = 5

PGBENCH_SCRIPT = """\
-- the `pessimistic` credit deduction of toolclash/tools/credits.py, as pgbench runs it
\\set aid random(1, {accounts})
\\set amt random({amount_min}, {amount_max})
\\set nonce random(1, 9000000000000000000)
BEGIN;
SELECT balance, version FROM toolclash.credit_accounts WHERE id = :aid FOR UPDATE \\gset
UPDATE toolclash.credit_accounts SET balance = :balance - :amt, version = version + 1 WHERE id = :aid;
INSERT INTO toolclash.credit_ledger (op_id, account_id, amount, balance_before, balance_after, agent) \
VALUES ('pgb-' || :client_id || '-' || :nonce, :aid, :amt, :balance, :balance - :amt, 'pgbench');
END;
"""

Say = Callable[[str], None]


# ------------------------------------------------------------------------------------------ database


def _backend(url: str, who: str = "bench") -> Backend:
    return Backend({"DATABASE_URL": url}, who)


def reset_credits(url: str, *, accounts: int, initial_balance: int) -> None:
    """Reset the credits scenario as a run does (its ``reset`` hook: schema, empty, seed *accounts*),
    then CHECKPOINT so that every load run starts alike."""
    credits = scenario("credits")
    opts = credits.options_from({"accounts": accounts, "initial_balance": initial_balance,
                                 "amount_min": AMOUNT_MIN, "amount_max": AMOUNT_MAX})
    ctx = credits.context(_backend(url), opts, strategy=STRATEGY)
    conn = ctx.backend.pg("admin")
    try:
        credits.reset(ctx, conn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
    finally:
        db.close_quietly(conn)


def _query_one(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    conn = _backend(url).pg("admin")
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]
    finally:
        db.close_quietly(conn)


def ledger_rows(url: str, agent: str) -> int:
    """Ledger rows written by *agent* (pgbench's, to compare with the transactions it reports)."""
    return int(_query_one(url, "SELECT count(*) FROM toolclash.credit_ledger WHERE agent = %s", (agent,)))


def server_version(url: str) -> str:
    return str(_query_one(url, "SHOW server_version"))


def _libpq_env(url: str, appname: str) -> dict[str, str]:
    """PG* variables for *url* (the password stays out of argv)."""
    parts = urlsplit(url)
    return {"PGHOST": parts.hostname or "127.0.0.1", "PGPORT": str(parts.port or 5432),
            "PGUSER": unquote(parts.username or ""), "PGPASSWORD": unquote(parts.password or ""),
            "PGDATABASE": unquote(parts.path.lstrip("/")), "PGAPPNAME": appname}


# ------------------------------------------------------------------------------------------- pgbench


def find_pgbench() -> Path:
    """pgbench of the server's major version: next to ``initdb`` (pg_config --bindir), else on PATH."""
    import shutil

    from toolclash.stack import StackError, find_pg_bindir

    try:
        cand = find_pg_bindir() / "pgbench"
        if cand.is_file():
            return cand
    except StackError:
        pass
    found = shutil.which("pgbench")
    if found:
        return Path(found)
    raise BenchError("pgbench not found; install it: apt-get install -y postgresql-contrib")


def pgbench_version(pgbench: Path) -> str:
    out = subprocess.run([str(pgbench), "--version"], capture_output=True, text=True, check=False, timeout=10)
    return out.stdout.strip()


_PGBENCH_FIGURES = {
    "transactions": (r"number of transactions actually processed: (\d+)", int),
    "failed": (r"number of failed transactions: (\d+)", int),
    "latency_avg_ms": (r"latency average = ([\d.]+) ms", float),
    "latency_stddev_ms": (r"latency stddev = ([\d.]+) ms", float),
    "initial_connection_ms": (r"initial connection time = ([\d.]+) ms", float),
    "tps": (r"tps = ([\d.]+) \(without initial connection time\)", float),
}


def parse_pgbench(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (pattern, conv) in _PGBENCH_FIGURES.items():
        m = re.search(pattern, text)
        if m:
            out[key] = conv(m.group(1))
    return out


def run_pgbench(url: str, *, workdir: Path, clients: int, threads: int, duration: int, accounts: int,
                ramp: float, postmaster: int | None, cores: int, say: Say) -> dict[str, Any]:
    pgbench = find_pgbench()
    script = workdir / "pessimistic.pgbench"
    script.write_text(PGBENCH_SCRIPT.format(accounts=accounts, amount_min=AMOUNT_MIN, amount_max=AMOUNT_MAX),
                      encoding="utf-8")
    argv = [str(pgbench), "-n", "-c", str(clients), "-j", str(threads), "-T", str(duration),
            "-P", "5", "-f", str(script)]
    say(f"pgbench: {' '.join(argv[1:])}  (protocol simple)")
    tail = LogTail()

    def tick(_elapsed: float, log: Path) -> None:
        for line in tail.new_lines(log):
            if line.startswith("progress:"):
                say(f"  pgbench {line}")

    sampler = CpuSampler(postmaster)
    launched = time.time()
    try:
        child = run_child(argv, env=clean_env(_libpq_env(url, "bench:pgbench")), log=workdir / "pgbench.log",
                          timeout=duration + 120, tick=tick, on_start=sampler.start)
    finally:
        sampler.stop()
    tick(0.0, child.log)
    text = child.output()
    figures = parse_pgbench(text)
    if child.returncode != 0 or "tps" not in figures:
        last = [ln for ln in text.splitlines() if ln.strip()][-3:]
        raise BenchError(f"pgbench failed (exit {child.returncode}): {' | '.join(last) or 'no output'}; "
                         f"see {child.log}")
    rows = ledger_rows(url, "pgbench")
    figures.update(argv=argv[1:], script=script.read_text(encoding="utf-8"), log=str(child.log),
                   exit_code=child.returncode, ledger_rows=rows, version=pgbench_version(pgbench),
                   seconds=round(child.seconds, 2),
                   cpu=sampler.window(launched + ramp, launched + duration, tps=figures["tps"], cores=cores))
    if rows != figures.get("transactions"):
        say(f"  note: pgbench reports {figures.get('transactions')} transactions, the ledger holds {rows} rows")
    return figures


# --------------------------------------------------------------------------------------------- floor


def run_floor(url: str, *, workdir: Path, clients: int, duration: int, accounts: int, ramp: float,
              postmaster: int | None, cores: int, say: Say, processes: int = 1) -> dict[str, Any]:
    """psycopg2 + gevent alone (``python -m bench.floor``), same transaction: the driver's price (in *processes*
    processes side by side, the clients shared out)."""
    argv = [sys.executable, "-m", "bench.floor", "--clients", str(clients), "--duration", str(duration),
            "--ramp", str(ramp), "--accounts", str(accounts), "--processes", str(processes)]
    say(f"floor: {' '.join(argv[1:])}")
    sampler = CpuSampler(postmaster)
    try:
        child = run_child(argv, env=clean_env({"DATABASE_URL": url}), cwd=ROOT,
                          log=workdir / ("floor.log" if processes == 1 else f"floor-p{processes}.log"),
                          timeout=duration + 60, on_start=sampler.start)
    finally:
        sampler.stop()
    lines = [ln for ln in child.output().splitlines() if ln.strip()]
    try:
        figures: dict[str, Any] = orjson.loads(lines[-1])
    except (IndexError, orjson.JSONDecodeError):
        raise BenchError(f"the floor run failed (exit {child.returncode}): {' | '.join(lines[-3:]) or 'no output'}; "
                         f"see {child.log}") from None
    if child.returncode != 0:
        raise BenchError(f"the floor run failed (exit {child.returncode}): {' | '.join(lines[-3:])}")
    figures.update(argv=argv[1:], log=str(child.log), seconds=round(child.seconds, 2),
                   cpu=sampler.window(figures["window_start"], figures["window_end"], tps=figures["tps"],
                                      cores=cores))
    return figures


# -------------------------------------------------------------------------------------------- Locust


def locust_bin() -> Path:
    path = Path(sys.executable).with_name("locust")
    if not path.exists():
        raise BenchError(f"{path} not found; run `make setup`")
    return path


def steady_window(ops: list[dict[str, Any]], *, duration: float, ramp: float) -> dict[str, Any]:
    """ok operations per second whose ``complete_ts`` falls in [t0 + ramp, min(t0 + duration, last ok)].

    ``t0`` is the first ``invoke_ts`` of the run (the first agent's first call).
    """
    if not ops:
        return {"tps": 0.0, "ok_in_window": 0, "window_s": 0.0}
    t0 = min(op["invoke_ts"] for op in ops)
    ok_ts = sorted(op["complete_ts"] for op in ops if op["outcome"] == OK)
    outcomes: dict[str, int] = {}
    for op in ops:
        outcomes[op["outcome"]] = outcomes.get(op["outcome"], 0) + 1
    start = t0 + ramp
    end = min(t0 + duration, ok_ts[-1]) if ok_ts else start
    window = end - start
    in_window = [t for t in ok_ts if start <= t < end]
    per_second = [0] * max(0, math.floor(window))
    for t in in_window:
        k = int(t - start)
        if k < len(per_second):
            per_second[k] += 1
    return {
        "tps": len(in_window) / window if window > 0 else 0.0,
        "ok_in_window": len(in_window), "window_s": round(window, 3), "ramp_s": ramp,
        "t0": t0, "window_start": start, "window_end": end,
        "last_ok_after_t0_s": round(ok_ts[-1] - t0, 3) if ok_ts else None,
        "ops_total": len(ops), "outcomes": outcomes,
        "per_second_ok": {"min": min(per_second), "median": statistics.median(per_second),
                          "max": max(per_second)} if per_second else None,
    }


def locust_stats_rate(run_dir: Path) -> dict[str, Any] | None:
    """Whole-run rate from Locust's own totals (spawn and stop included): a cross-check only."""
    path = run_dir / "locust_stats.json"
    if not path.is_file():
        return None
    total = orjson.loads(path.read_bytes()).get("total", {})
    n, failures = int(total.get("num_requests", 0)), int(total.get("num_failures", 0))
    start, last = total.get("start_time"), total.get("last_request_timestamp")
    span = (last - start) if isinstance(start, int | float) and isinstance(last, int | float) else 0.0
    return {"requests": n, "failures": failures, "span_s": round(span, 3),
            "ok_per_s": (n - failures) / span if span > 0 else None}


_AGGREGATED = re.compile(r"^\s+Aggregated\s+(\d+)\s+(\d+)\([^)]*\)\s*\|.*\|\s*([\d.]+)\s+([\d.]+)\s*$", re.M)


def locust_summary_rate(log_text: str) -> dict[str, Any] | None:
    """Whole-run rate from the last "Aggregated" row Locust printed (when locust_stats.json is missing)."""
    rows = _AGGREGATED.findall(log_text)
    if not rows:
        return None
    reqs, fails, rps, _fps = rows[-1]
    n, failures = int(reqs), int(fails)
    return {"requests": n, "failures": failures, "ok_per_s": float(rps) * (n - failures) / n if n else None,
            "source": "Locust's printed summary (locust_stats.json missing)"}


@dataclass
class LocustSpec:
    url: str
    users: int
    duration: int
    processes: int
    accounts: int
    initial_balance: int
    reports_dir: Path
    run_id: str
    ramp: float
    postmaster: int | None
    cores: int


def run_locust(spec: LocustSpec, *, say: Say, on_tick: Callable[[], None] | None = None,
               on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the credits locustfile per *spec*; *on_start(pid)* and *on_tick()* let a phase sample the processes."""
    argv = [str(locust_bin()), "-f", LOCUSTFILE, "--headless", "-u", str(spec.users), "-r", str(spec.users),
            "-t", f"{spec.duration}s", "--stop-timeout", str(STOP_TIMEOUT_S), "--strategy", STRATEGY,
            "--accounts", str(spec.accounts), "--profile", "stress", "--initial-balance", str(spec.initial_balance),
            "--reports-dir", str(spec.reports_dir), "--run-id", spec.run_id]
    if spec.processes > 1:  # a free master port: another Locust on this machine may hold the default 5557
        from toolclash.stack.process import free_port

        port = str(free_port())
        argv += ["--processes", str(spec.processes), "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                 "--master-port", port]
    run_dir = spec.reports_dir / spec.run_id
    say(f"locust: {' '.join(argv[1:])}")
    counter = LineCounter()

    def tick(elapsed: float, _log: Path) -> None:
        if on_tick is not None:
            on_tick()
        n = counter.update(sorted((run_dir / "history").glob("*.jsonl"))) + sum(
            b.num_rows for _, path in history_files(run_dir) if path.suffix == ".arrow" for b in batches(path))
        say(f"  locust {spec.run_id}: {elapsed:4.0f} s, {n} operations recorded so far")

    sampler = CpuSampler(spec.postmaster)

    def started(pid: int) -> None:
        sampler.start(pid)
        if on_start is not None:
            on_start(pid)

    try:
        child: ChildResult = run_child(argv, env=clean_env({"DATABASE_URL": spec.url}), cwd=ROOT,
                                       log=spec.reports_dir / f"{spec.run_id}.log",
                                       timeout=spec.duration + STOP_TIMEOUT_S + 180, tick=tick,
                                       on_start=started)
    finally:
        sampler.stop()
    out: dict[str, Any] = {"argv": argv[1:], "processes": spec.processes, "exit_code": child.returncode,
                           "timed_out": child.timed_out, "seconds": round(child.seconds, 2),
                           "log": str(child.log), "run_dir": str(run_dir)}
    verdict = verdict_of(run_dir)
    if verdict is None:
        out["error"] = (f"no verdict written (exit {child.returncode}{', timed out' if child.timed_out else ''}): "
                        f"{last_lines(child.output()) or 'no output'}")
        return out
    out["verdict_exit_code"] = verdict.get("exit_code")
    out["verdict_meaning"] = verdict.get("meaning")
    out["checks"] = {c["name"]: c["valid"] for c in verdict.get("checks", [])}
    out["gates"] = {f"{g['scope']}.{g['gate']}": {"figure": g["figure"], "met": g["met"]}
                    for g in verdict.get("gates", [])}
    out["history"] = verdict.get("history")
    history = read_history(run_dir)
    out["steady"] = steady_window(history.ops, duration=spec.duration, ramp=spec.ramp)
    steady = out["steady"]
    out["tps"] = steady["tps"]
    if "window_start" in steady:
        out["cpu"] = sampler.window(steady["window_start"], steady["window_end"], tps=steady["tps"],
                                    cores=spec.cores)
    out["locust_stats"] = locust_stats_rate(run_dir) or locust_summary_rate(child.output())
    figs = verdict.get("figures", {}).get("credits", {})
    out["latency_ms"] = {k: figs.get(k) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")}
    return out


def verdict_of(run_dir: Path) -> dict[str, Any] | None:
    """The verdict a locustfile run wrote (``checks.json``), or None when it wrote none."""
    path = run_dir / "checks.json"
    return read_json(path) if path.is_file() else None


def last_lines(text: str, n: int = 3) -> str:
    """The last *n* non-empty lines of a child's output, joined by `` | `` (for one-line errors)."""
    return " | ".join([ln for ln in text.splitlines() if ln.strip()][-n:])
