"""Bench phase of the nemesis: how fast each scenario recovers from each fault kind, and what the proxy costs.

* **recovery** — for credits (faults on PostgreSQL), queue (on Redis) and crossservice (on the auth
  PostgreSQL): one Locust run each with every fault kind of a server and of the proxy (crash, restart, stop,
  pause, latency, reset, bandwidth), each ``--fault-repeats`` times for ``--fault-s`` seconds with
  ``--fault-gap-s`` between; from each run's verdict, per kind, the median and the largest time from the
  fault's end to the first ok call and to throughput back at 0.9 of the minute before (``checks.faults``).
  The run's own embedded stack is durable (the nemesis crashes it). A verdict that finds an anomaly under
  faults with a correct strategy is an error of the bench: it would be a false alarm;
* **proxy cost** — the credits load (``--clients`` agents, no think time, ``--duration`` s) on a private
  PostgreSQL, directly and through the proxy with no fault active, alternating ``--rounds`` times: P50 and
  P95 of the calls, and the CPU of the Locust process per call (the proxy's own CPU per call beside it).

``python -m bench.faults [--duration S] [--fault-repeats N]`` runs this phase alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any
from urllib.parse import urlsplit

from bench.children import clean_env, run_child
from bench.cpu import _TICKS, tree_ticks
from bench.phase import (
    ROOT,
    Context,
    Phase,
    Row,
    non_negative_float,
    num,
    positive_int,
    private_stack,
    row,
    run_alone,
)
from bench.runners import LocustSpec, last_lines, locust_bin, reset_credits, run_locust, verdict_of
from toolclash.nemesis.scheduler import with_address
from toolclash.stack.proxy import ProxyProcess

KINDS = ("crash", "restart", "stop", "pause", "latency", "reset", "bandwidth")
PARAMS = {"latency": "50ms±10ms ", "bandwidth": "200kbit "}
WARMUP_S = 4.0
TAIL_S = 4.0

SCENARIOS: dict[str, dict[str, Any]] = {
    "credits": {"locustfile": "locustfiles/credits.py", "service": "postgres",
                "args": ["-u", "8", "--wait-min", "0.01", "--wait-max", "0.02", "--accounts", "200",
                         "--strategy", "pessimistic"]},
    "queue": {"locustfile": "locustfiles/jobqueue.py", "service": "redis",
              "args": ["-u", "10", "--queue-consumers", "4", "--wait-min", "0.02", "--wait-max", "0.05",
                       "--queue-capacity", "500"]},
    "crossservice": {"locustfile": "locustfiles/crossservice.py", "service": "auth_postgres",
                     "args": ["-u", "8", "--wait-min", "0.01", "--wait-max", "0.02"]},
}


def schedule(service: str, repeats: int, fault_s: float, gap_s: float) -> tuple[str, float]:
    """Every kind on *service*, *repeats* times, one after the other; (the ``--nemesis`` text, run seconds)."""
    faults, t = [], WARMUP_S
    for _ in range(repeats):
        for kind in KINDS:
            duration = "" if kind == "restart" else f" for {fault_s:g}s"
            faults.append(f"{kind} {service} {PARAMS.get(kind, '')}at {t:g}s{duration}")
            t += fault_s + gap_s
    return "; ".join(faults), t + TAIL_S


def _stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "median": round(statistics.median(values), 3) if values else None,
            "max": round(max(values), 3) if values else None}


def recovery_run(name: str, args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    sc = SCENARIOS[name]
    spec, seconds = schedule(sc["service"], args.fault_repeats, args.fault_s, args.fault_gap_s)
    run_id = f"faults-{name}"
    users = sc["args"][1]
    argv = [str(locust_bin()), "-f", sc["locustfile"], "--headless", "-r", users, "-t", f"{int(seconds + 0.999)}s",
            "--stop-timeout", "3", "--metrics-port", "0", "--reports-dir", str(ctx.workdir), "--run-id", run_id,
            "--loglevel", "WARNING", *sc["args"], "--nemesis", spec]
    ctx.say(f"faults: {name}, {len(KINDS)} kinds x {args.fault_repeats} on {sc['service']}, {seconds:.0f} s")
    child = run_child(argv, env=clean_env({}), cwd=ROOT, log=ctx.workdir / f"{run_id}.log", timeout=seconds + 300)
    run_dir = ctx.workdir / run_id
    verdict = verdict_of(run_dir)
    out: dict[str, Any] = {"service": sc["service"], "seconds": round(child.seconds, 1), "run_dir": str(run_dir)}
    if verdict is None:
        out["error"] = f"{name}: no verdict (exit {child.returncode}): {last_lines(child.output())}"
        return out
    out["exit_code"] = verdict["exit_code"]
    if verdict["exit_code"] == 1:
        out["error"] = (f"{name}: a correct strategy under faults was judged an anomaly: "
                        f"{[c['name'] for c in verdict['checks'] if c['valid'] is False]}")
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        windows = [f for f in verdict.get("faults") or [] if f["kind"] == kind]
        applied = [f for f in windows if f["spec"].get("applied", True) is not False]
        first = [f["recovery"]["first_ok_s"] for f in applied if f["recovery"]["first_ok_s"] is not None]
        back = [f["recovery"]["throughput_s"] for f in applied if f["recovery"]["throughput_s"] is not None]
        by_kind[kind] = {"windows": len(windows), "applied": len(applied), "first_ok_s": _stats(first),
                         "throughput_s": _stats(back),
                         "not_measured": sorted({f["recovery"]["note"] for f in applied
                                                 if f["recovery"]["throughput_s"] is None})}
    out["kinds"] = by_kind
    return out


def proxy_cost(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    ctx.say(f"faults: the proxy's cost, {args.clients} agents, {args.duration} s direct and through the proxy, "
            f"{args.rounds} round(s)")
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "proxy": []}
    with private_stack(("postgres",), ctx.say) as (urls, stack):
        direct_url = urls["DATABASE_URL"]
        postmaster = stack.status()["postgres"].get("pid")
        proxy = ProxyProcess().start()
        try:
            parts = urlsplit(direct_url)
            host, port = proxy.listen("postgres", parts.hostname or "127.0.0.1", parts.port or 5432)
            proxied_url = with_address(direct_url, host, port)
            for r in range(args.rounds):
                for how, url in (("direct", direct_url), ("proxy", proxied_url)):
                    reset_credits(direct_url, accounts=1000, initial_balance=10**12)
                    proxy_before = tree_ticks(proxy.pid or 0, reaped=False) / _TICKS
                    res = run_locust(LocustSpec(url=url, users=args.clients, duration=args.duration, processes=1,
                                                accounts=1000, initial_balance=10**12, reports_dir=ctx.workdir,
                                                run_id=f"proxy-{how}-{r + 1}", ramp=args.ramp,
                                                postmaster=int(postmaster) if postmaster else None,
                                                cores=ctx.cores), say=ctx.say)
                    proxy_s = tree_ticks(proxy.pid or 0, reaped=False) / _TICKS - proxy_before
                    if how == "proxy":
                        calls = (res.get("locust_stats") or {}).get("requests") or 0
                        res["proxy_cpu_us_per_call"] = round(proxy_s / calls * 1e6, 1) if calls else None
                    runs[how].append(res)
        finally:
            proxy.close()
    out: dict[str, Any] = {"clients": args.clients, "duration_s": args.duration, "runs": runs}
    errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
    if errors:
        out["errors"] = errors
        return out
    for how, rs in runs.items():
        out[how] = {
            "p50_ms": statistics.median(r["latency_ms"]["p50_ms"] for r in rs),
            "p95_ms": statistics.median(r["latency_ms"]["p95_ms"] for r in rs),
            "tps": statistics.median(r["tps"] for r in rs),
            "client_cpu_us_per_call": _median([(r.get("cpu") or {}).get("client_us_per_tx") for r in rs]),
        }
    out["proxy"]["proxy_cpu_us_per_call"] = _median([r.get("proxy_cpu_us_per_call") for r in runs["proxy"]])
    return out


def _median(values: list[Any]) -> float | None:
    found = [float(v) for v in values if v is not None]
    return round(statistics.median(found), 1) if found else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fault-repeats", type=positive_int, default=3, metavar="N",
                        help="faults phase: windows of each kind per scenario (default 3)")
    parser.add_argument("--fault-s", type=non_negative_float, default=1.0, metavar="S",
                        help="faults phase: seconds each fault lasts (default 1)")
    parser.add_argument("--fault-gap-s", type=non_negative_float, default=4.0, metavar="S",
                        help="faults phase: seconds between the end of a fault and the start of the next (default 4)")


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    out = ctx.keep({"recovery": {}})
    errors: list[str] = []
    for name in SCENARIOS:
        ctx.say.phase(f"faults: recovery of {name}")
        res = out["recovery"][name] = recovery_run(name, args, ctx)
        if "error" in res:
            errors.append(res["error"])
    ctx.say.phase("faults: the proxy's cost with no fault active")
    out["proxy_cost"] = proxy_cost(args, ctx)
    errors += out["proxy_cost"].get("errors", [])
    if errors:
        out["errors"] = errors
    return out


def rows(out: dict[str, Any]) -> list[Row]:
    table: list[Row] = []
    for name, res in (out.get("recovery") or {}).items():
        if "kinds" not in res:
            table.append(row(f"recovery {name}", "FAILED", str(res.get("error", "")), False))
            continue
        for kind, k in res["kinds"].items():
            first, back = k["first_ok_s"], k["throughput_s"]
            value = (f"first ok {num(first['median'], '.2f')}/{num(first['max'], '.2f')} s, back "
                     f"{num(back['median'], '.2f')}/{num(back['max'], '.2f')} s ({back['n']}/{k['applied']})")
            met = back["max"] <= 2.0 if back["max"] is not None and back["n"] == k["applied"] else False
            table.append(row(f"recovery {name} {kind} {res['service']} (median/max)", value, "<= 2 s", met))
    cost = out.get("proxy_cost") or {}
    if "direct" in cost and "proxy" in cost:
        d, p = cost["direct"], cost["proxy"]
        table.append(row(f"proxy cost, {cost['clients']} agents: P50 ms direct / proxy",
                         f"{num(d['p50_ms'], '.2f')} / {num(p['p50_ms'], '.2f')}"))
        table.append(row("  P95 ms direct / proxy", f"{num(d['p95_ms'], '.2f')} / {num(p['p95_ms'], '.2f')}"))
        table.append(row("  ok calls/s direct / proxy", f"{num(d['tps'])} / {num(p['tps'])}"))
        table.append(row("  client CPU us per call direct / proxy (+ proxy's own)",
                         f"{num(d['client_cpu_us_per_call'])} / {num(p['client_cpu_us_per_call'])} "
                         f"(+ {num(p['proxy_cpu_us_per_call'])})"))
    elif cost:
        table.append(row("proxy cost", "FAILED", "; ".join(cost.get("errors", []))[:80], False))
    return table


def notes(out: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    lines = ["faults: 'first ok' = fault's end to the first ok call; 'back' = to throughput at 0.9 of the minute "
             "before (n measured / windows applied); the end of a fault is when its healing was observed (a crashed "
             "durable PostgreSQL's crash recovery is inside the window, not the recovery)"]
    for name, res in (out.get("recovery") or {}).items():
        for kind, k in (res.get("kinds") or {}).items():
            for note in k["not_measured"]:
                lines.append(f"  {name} {kind}: not measured: {note}")
    return lines


PHASE = Phase(name="faults", help="skip the faults phase (recovery per fault kind for credits, queue and "
              "crossservice; the proxy's cost)", run=run, rows=rows, add_arguments=add_arguments,
              steps=lambda args: len(SCENARIOS) + 1, notes=notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=positive_int, default=15, help="seconds of each proxy-cost run (15)")
    parser.add_argument("--clients", type=positive_int, default=20, help="agents of the proxy-cost runs (20)")
    parser.add_argument("--rounds", type=positive_int, default=1, help="direct/proxy pairs (1)")
    parser.add_argument("--ramp", type=non_negative_float, default=2.0, help="seconds left out at the start (2)")
    add_arguments(parser)
    return run_alone(PHASE, parser.parse_args(argv), "faults")


if __name__ == "__main__":
    sys.exit(main())

