"""The cost of observability: throughput with the exporter on (scraped every second by a real Prometheus) versus
off, at 100 agents in one bench run, and the exporter's scrape time with every label set populated.

    python -m bench.observability [--duration 20] [--users 100] [--rounds 1]
    python -m bench --observability ...         # the same phase inside `make bench`

Runs alternate off/on per round on one private PostgreSQL (the atomic strategy on 1,000 accounts, stress
profile, like the throughput phase); each run's throughput is ok operations per second of the history's steady
window (bench.throughput.steady_window). Target: on/off ≥ 0.95. The history is always written (the verdict
needs it), so "off" means no exporter and no Prometheus scraping; per-call metric recording is always on.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from bench.children import clean_env
from bench.phase import ROOT, Context, Phase, Row, num, private_stack, row, run_alone
from bench.runners import last_lines, locust_bin, steady_window, verdict_of
from toolclash.history import read_history
from toolclash.metrics import METRICS, Registry, RegistryCollector, discover_port, exposition, verdict_gauges

TARGET_RATIO = 0.95
MODES = ("off", "exporter", "full")
"""off: no exporter; exporter: the exporter scraped every second; full: that plus Debian's postgres exporter
(what a run with PROMETHEUS_URL pointing at the embedded Prometheus does)."""


def populated_registry() -> tuple[Registry, dict[str, int], list[Any]]:
    """A registry with every metric and a generous label set: 8 tools × 7 strategies × 3 outcomes, 6 causes,
    10 SQLSTATEs, pools, priorities, 16 workers' CPU and memory, 40 checks and 120 gates."""
    reg = Registry()
    tools = [f"tool{i}" for i in range(8)]
    strategies = ["naive", "atomic", "pessimistic", "optimistic", "repeatable_read", "serializable", "check_then_act"]
    for tool in tools:
        for strategy in strategies:
            for outcome in ("ok", "fail", "unknown"):
                for i in range(20):
                    reg.record_call(tool, strategy, outcome, 0.0005 * (i + 1) ** 2, 2,
                                    {c: 1 for c in ("serialization", "deadlock", "lock_timeout", "version",
                                                    "pool_timeout", "redelivery")},
                                    [f"40{n:03d}" for n in range(10)], 0.001)
    for pool in ("app", "pgbouncer", "auth"):
        reg.observe("toolclash_pool_acquire_wait_seconds", (("pool", pool),), 0.01)
        for metric in ("toolclash_pool_size", "toolclash_pool_in_use", "toolclash_pool_waiting"):
            reg.set(metric, (("pool", pool),), 5.0)
    for prio in ("high", "normal", "low"):
        reg.set("toolclash_queue_depth", (("priority", prio),), 10.0)
        reg.set("toolclash_queue_capacity", (("priority", prio),), 100.0)
    for w in range(16):
        reg.set("toolclash_process_cpu_seconds_total", (("process", f"w{w}"),), 12.0, f"w{w}")
        reg.set("toolclash_process_resident_memory_bytes", (("process", f"w{w}"),), 8e7, f"w{w}")
    for tool in tools:
        reg.observe("toolclash_deadlock_detection_seconds", (("tool", tool),), 0.2)
        reg.observe("toolclash_lock_wait_seconds", (("tool", tool),), 0.02)
    counters = {f"{p}{e}": 5 for p in ("queue_", "pool_", "deadlock_", "lock_") for e in ("a", "b", "c", "d")}
    counters.update(commits=100, rollbacks=10)
    verdict = {"exit_code": 1, "checks": [{"name": f"s{i // 5}.check{i}", "valid": [True, False, "unknown"][i % 3]}
                                          for i in range(40)],
               "gates": [{"scope": f"s{i // 15}.stage{i % 5}", "gate": f"g{i % 3}", "met": i % 2 == 0}
                         for i in range(120)]}
    return reg, counters, verdict_gauges(verdict, {"prepared_xacts": [], "sessions": []})


def scrape_time(repeat: int = 50) -> dict[str, Any]:
    reg, counters, gauges = populated_registry()
    collector = RegistryCollector(reg, lambda: (counters, gauges))
    body = exposition(collector)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        exposition(collector)
        times.append(time.perf_counter() - start)
    return {"series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
            "bytes": len(body), "median_ms": round(statistics.median(times) * 1000, 3),
            "max_ms": round(max(times) * 1000, 3), "metrics": len(METRICS)}


def _run(url: str, prometheus: str, mode: str, *, users: int, duration: int, reports: Path, run_id: str,
         ramp: float) -> dict[str, Any]:
    argv = [str(locust_bin()), "-f", "locustfiles/credits.py", "--headless", "-u", str(users), "-r", str(users),
            "-t", f"{duration}s", "--stop-timeout", "5", "--strategy", "atomic", "--accounts", "1000",
            "--profile", "stress", "--initial-balance", str(10**12), "--reports-dir", str(reports),
            "--run-id", run_id, "--loglevel", "WARNING"]
    env = {"DATABASE_URL": url}
    if mode == "full":  # the exporter where Prometheus scrapes it every second, and the postgres exporter
        env["PROMETHEUS_URL"] = prometheus
    elif mode == "exporter":  # the exporter alone, scraped every second
        argv += ["--metrics-port", str(discover_port(prometheus))]
    else:
        argv += ["--metrics-port", "0"]
    proc = subprocess.run(argv, cwd=ROOT, env=clean_env(env), capture_output=True, text=True,
                          timeout=duration + 240, check=False)
    run_dir = reports / run_id
    verdict = verdict_of(run_dir)
    if verdict is None:
        raise RuntimeError(f"{run_id}: no verdict (exit {proc.returncode}): {last_lines(proc.stdout + proc.stderr)}")
    steady = steady_window(read_history(run_dir).ops, duration=duration, ramp=ramp)
    return {"run_id": run_id, "exit_code": proc.returncode, "tps": steady["tps"],
            "checks_valid": all(c["valid"] is True for c in verdict["checks"])}


def _prom(base: str, expr: str) -> float | None:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        result = orjson.loads(resp.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def measure(*, users: int = 100, duration: int = 20, rounds: int = 1, ramp: float = 2.0,
            say: Any = print) -> dict[str, Any]:
    out: dict[str, Any] = {"users": users, "duration": duration, "rounds": rounds, "target_ratio": TARGET_RATIO,
                           "runs": []}
    out["scrape"] = scrape_time()
    say(f"exporter scrape with every label set populated: {out['scrape']}")
    with tempfile.TemporaryDirectory(prefix="bench-obs-") as tmp, \
            private_stack(("postgres", "prometheus"), say, "PostgreSQL and Prometheus") as (env, _stack):
        reports = Path(tmp)
        for rnd in range(rounds):
            for mode in MODES:
                res = _run(env["DATABASE_URL"], env["PROMETHEUS_URL"], mode, users=users,
                           duration=duration, reports=reports, run_id=f"{mode}-{rnd}", ramp=ramp)
                res["mode"] = mode
                say(f"round {rnd + 1} observability {mode}: {res['tps']:.1f} ok ops/s (exit {res['exit_code']})")
                out["runs"].append(res)
        base = env["PROMETHEUS_URL"]
        out["prometheus_scrape_seconds"] = {
            "avg": _prom(base, 'avg_over_time(scrape_duration_seconds{job="toolclash"}[1h])'),
            "max": _prom(base, 'max_over_time(scrape_duration_seconds{job="toolclash"}[1h])'),
            "samples": _prom(base, 'max_over_time(scrape_samples_scraped{job="toolclash"}[1h])')}
    tps = {mode: statistics.median(r["tps"] for r in out["runs"] if r["mode"] == mode) for mode in MODES}
    pairs = {mode: [on["tps"] / off["tps"] for off, on in zip(
        [r for r in out["runs"] if r["mode"] == "off"], [r for r in out["runs"] if r["mode"] == mode], strict=True)
        if off["tps"]] for mode in MODES[1:]}
    out["tps"] = {mode: round(v, 1) for mode, v in tps.items()}
    out["ratio"] = {mode: round(statistics.median(v), 4) if v else None for mode, v in pairs.items()}
    out["met"] = {mode: v is not None and v >= TARGET_RATIO for mode, v in out["ratio"].items()}
    return out


def run(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    ctx.say.phase(f"observability: exporter off / on / full, 100 agents, {args.duration} s, {args.rounds} round(s)")
    return measure(duration=args.duration, rounds=args.rounds, say=ctx.say)


def rows(out: dict[str, Any]) -> list[Row]:
    if "error" in out:
        return [row("observability", "FAILED")]
    table = [row(f"observability {mode} ok ops/s ({out['users']} agents)", num(tps))
             for mode, tps in out["tps"].items()]
    table += [row(f"  ratio {mode} to off", num(ratio, ".3f"), f">= {TARGET_RATIO}", out["met"][mode])
              for mode, ratio in out["ratio"].items()]
    scrape = out["scrape"]
    table.append(row(f"exporter scrape, {scrape['series']} series: median / max ms",
                     f"{scrape['median_ms']} / {scrape['max_ms']}"))
    return table


PHASE = Phase(name="observability", flag="observability", opt_in=True, run=run, rows=rows,
              help="also measure throughput with the exporter on vs off and its scrape time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    alone = Phase(name="observability", help="", rows=rows,
                  run=lambda a, ctx: measure(users=a.users, duration=a.duration, rounds=a.rounds, say=ctx.say))
    return run_alone(alone, args, "observability")


if __name__ == "__main__":
    sys.exit(main())
