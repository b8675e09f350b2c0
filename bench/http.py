"""HTTP phase of ``make bench``: toolclash's HTTP agents against a plain Locust ``FastHttpUser``, same endpoint.

The example platform (``examples/platform``, ``correct`` variant, gunicorn with one gevent worker) runs on a
private PostgreSQL. Each round, for 1 process and for ``--processes 2``, two runs of ``--clients`` users (50)
with no think time send the same deduction (``POST /accounts/<1..accounts>/deduct``, JSON body, a fresh
idempotency key):

* toolclash — ``locustfiles/credits.py --target examples/platform/http.toml`` (operation records, checks,
  verdict);
* plain — ``bench/http_plain.py``, a ``FastHttpUser`` and nothing else.

Both are measured the same way, from the platform's own ledger: calls/s = ledger rows whose ``created_at``
lies in the steady window [first row + ramp, first row + duration − 1 s], and client CPU per call = CPU seconds of the
Locust process tree over that window (``bench.cpu``) / rows in it. The overhead is toolclash's CPU per call over
the plain one's − 1, and its throughput drop 1 − calls/s ratio (target: ≤ 15 % each). The platform is reset
between runs. ``python -m bench.http`` runs this phase alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from typing import Any

from bench.children import clean_env, run_child
from bench.cpu import CpuSampler
from bench.phase import ROOT, BenchError, Context, Phase, Row, num, private_stack, row, run_alone
from bench.runners import last_lines, locust_bin, verdict_of
from toolclash import db

TARGET_OVERHEAD = 0.15
TARGET_FILE = "examples/platform/http.toml"
STOP_TIMEOUT_S = 3
PROCESSES = (1, 2)


def reset_platform(url: str, accounts: int) -> None:
    req = urllib.request.Request(f"{url}/admin/reset", data=json.dumps(
        {"accounts": accounts, "initial_balance": 1_000_000_000}).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        if resp.status != 200:
            raise BenchError(f"the platform's reset answered {resp.status}")


def ledger_window(database_url: str, *, duration: float, ramp: float) -> dict[str, Any]:
    """Rows of the platform's ledger in [first + ramp, first + duration − 1 s] (server clock = this machine's;
    the last second is left out: Locust's run time began a little before the first row, and its processes
    stopping must not fall inside the CPU window)."""
    conn = db.connect(database_url, timeout=10, application_name="bench:http")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT EXTRACT(EPOCH FROM min(created_at))::float8, count(*) FROM platform.ledger")
            first, total = cur.fetchone() or (None, 0)
            if not total:
                return {"rows": 0, "rate": 0.0}
            start, end = first + ramp, first + duration - 1.0
            cur.execute("SELECT count(*) FROM platform.ledger WHERE created_at >= to_timestamp(%s) "
                        "AND created_at < to_timestamp(%s)", (start, end))
            inside = int((cur.fetchone() or (0,))[0])
        conn.rollback()
    finally:
        db.close_quietly(conn)
    return {"rows_total": int(total), "rows": inside, "window_start": start, "window_end": end,
            "rate": inside / (end - start)}


def one_run(kind: str, processes: int, *, urls: dict[str, str], args: argparse.Namespace, ctx: Context,
            round_no: int = 1) -> dict[str, Any]:
    platform, database = urls["PLATFORM_URL"], urls["PLATFORM_DATABASE_URL"]
    reset_platform(platform, args.accounts)
    run_id = f"http-{kind}-{processes}p-r{round_no}"
    common = ["--headless", "-u", str(args.clients), "-r", str(args.clients), "-t", f"{args.duration}s",
              "--stop-timeout", str(STOP_TIMEOUT_S), "--accounts", str(args.accounts), "--loglevel", "WARNING"]
    if processes > 1:
        common += ["--processes", str(processes)]
    if kind == "toolclash":
        argv = [str(locust_bin()), "-f", "locustfiles/credits.py", "--target", TARGET_FILE, "--profile", "stress",
                "--initial-balance", "1000000000", "--reports-dir", str(ctx.workdir), "--run-id", run_id, *common]
    else:
        argv = [str(locust_bin()), "-f", "bench/http_plain.py", "--host", platform, *common]
    ctx.say(f"http: {kind}, {processes} process(es), {args.clients} users, {args.duration} s")
    sampler = CpuSampler(None)
    try:
        child = run_child(argv, env=clean_env({"PLATFORM_URL": platform}), cwd=ROOT, log=ctx.workdir / f"{run_id}.log",
                          timeout=args.duration + STOP_TIMEOUT_S + 120, on_start=sampler.start)
    finally:
        sampler.stop()
    out: dict[str, Any] = {"kind": kind, "processes": processes, "round": round_no, "exit_code": child.returncode,
                           "log": str(child.log)}
    window = ledger_window(database, duration=args.duration, ramp=args.ramp)
    out.update(calls_per_s=round(window["rate"], 1), ledger=window)
    if window["rows"] == 0:
        out["error"] = f"no call reached the platform (exit {child.returncode}): {last_lines(child.output())}"
        return out
    cpu = sampler.window(window["window_start"], window["window_end"], tps=window["rate"], cores=ctx.cores)
    out["cpu"] = cpu
    out["client_us_per_call"] = cpu["client_us_per_tx"] if cpu else None
    if kind == "toolclash":
        verdict = verdict_of(ctx.workdir / run_id)
        if verdict is None:
            out["error"] = f"no verdict written (exit {child.returncode}): {last_lines(child.output())}"
        else:
            out["verdict_exit_code"] = verdict["exit_code"]
            out["checks_valid"] = all(c["valid"] is True for c in verdict["checks"])
            if not out["checks_valid"]:
                out["error"] = "the correct platform's verdict is not valid"
    elif child.returncode not in (0, 1):
        out["error"] = f"the plain run failed (exit {child.returncode}): {last_lines(child.output())}"
    return out


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    ctx.say.phase(f"http: toolclash's HTTP agents vs a plain FastHttpUser, {args.clients} users, 1 and 2 processes")
    runs: list[dict[str, Any]] = []
    out = ctx.keep({"runs": runs, "target_overhead": TARGET_OVERHEAD, "comparisons": {}})
    with private_stack(("postgres", "platform"), ctx.say, "PostgreSQL and the example platform") as (urls, _):
        for round_no in range(1, args.rounds + 1):
            for processes in PROCESSES:
                for kind in ("plain", "toolclash"):  # alternating, so that drift hits both alike
                    runs.append(one_run(kind, processes, urls=urls, args=args, ctx=ctx, round_no=round_no))
    for processes in PROCESSES:
        out["comparisons"][str(processes)] = compare([r for r in runs if r["processes"] == processes])
    return out


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    fig: dict[str, Any] = {}
    for kind in ("plain", "toolclash"):
        mine = [r for r in runs if r["kind"] == kind and "error" not in r]
        fig[kind] = {"calls_per_s": _median([r["calls_per_s"] for r in mine]),
                     "client_us_per_call": _median([r["client_us_per_call"] for r in mine])}
    plain, tc = fig["plain"], fig["toolclash"]
    if plain["client_us_per_call"] and tc["client_us_per_call"]:
        fig["cpu_overhead"] = tc["client_us_per_call"] / plain["client_us_per_call"] - 1
    if plain["calls_per_s"] and tc["calls_per_s"]:
        fig["throughput_drop"] = 1 - tc["calls_per_s"] / plain["calls_per_s"]
    return fig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    return None


def rows(out: dict[str, Any]) -> list[Row]:
    table: list[Row] = []
    target = f"<= {TARGET_OVERHEAD:.0%}"
    for processes, fig in (out.get("comparisons") or {}).items():
        plain, tc = fig.get("plain", {}), fig.get("toolclash", {})
        table.append(row(f"http {processes}p: calls/s toolclash vs plain",
                         f"{num(tc.get('calls_per_s'))} vs {num(plain.get('calls_per_s'))}"))
        table.append(row(f"http {processes}p: client µs/call toolclash vs plain",
                         f"{num(tc.get('client_us_per_call'))} vs {num(plain.get('client_us_per_call'))}"))
        if "cpu_overhead" in fig:
            table.append(row(f"http {processes}p: client CPU overhead per call", f"{fig['cpu_overhead']:+.1%}",
                             target, fig["cpu_overhead"] <= TARGET_OVERHEAD))
        if "throughput_drop" in fig:
            table.append(row(f"http {processes}p: throughput drop", f"{fig['throughput_drop']:+.1%}", target,
                             fig["throughput_drop"] <= TARGET_OVERHEAD))
    return table


def errors(out: dict[str, Any]) -> list[str]:
    return [f"http {r['kind']} {r['processes']}p: {r['error']}" for r in out.get("runs", []) if "error" in r]


PHASE = Phase(name="http", help="skip the HTTP phase (bench/http.py)", run=run, rows=rows, errors=errors,
              add_arguments=add_arguments, steps=lambda args: 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds of each run (default 20)")
    parser.add_argument("--clients", type=int, default=50, help="Locust users (default 50)")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts (default 1000)")
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds left out at the start (default 3)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, alternating; medians count (default 1)")
    return run_alone(PHASE, parser.parse_args(argv), "http")


if __name__ == "__main__":
    sys.exit(main())
