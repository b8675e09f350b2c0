"""The Hermitage matrix under load: each isolation workload at READ COMMITTED, REPEATABLE READ and SERIALIZABLE on
the real PostgreSQL, the anomalies the dependency graph found, against the published matrix.

``make test`` runs the fast subset (the register workload at each level, a few seconds each); ``make isolation``
(``TOOLCLASH_ISOLATION_MATRIX=full``) runs all three workloads, writes ``matrix.md`` and ``matrix.json`` to
``reports/isolation-<time>/`` and the table to docs/isolation.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_locust

LEVELS = ("read_committed", "repeatable_read", "serializable")
LEVEL_NAMES = {"read_committed": "READ COMMITTED", "repeatable_read": "REPEATABLE READ",
               "serializable": "SERIALIZABLE"}
ROWS = {"lost-update": "P4 lost update", "G-single": "G-single (read skew)", "G2-item": "G2-item (write skew)",
        "G0": "G0 write cycle", "G1a": "G1a aborted read", "G1b": "G1b intermediate read",
        "G1c": "G1c cyclic information flow"}
EXPECTED = {"read_committed": {"lost-update", "G-single", "G2-item"}, "repeatable_read": {"G2-item"},
            "serializable": set()}
"""PostgreSQL's row of the published Hermitage matrix: what appears at each level (everything else never does)."""
STRESS = ["--profile", "stress", "--sync", "1", "-t", "4s"]
WORKLOADS: dict[str, tuple[str, list[str]]] = {
    "register": ("locustfiles/register.py", ["-u", "8", "-r", "8", "--register-keys", "3"]),
    "budget": ("locustfiles/budget.py", ["-u", "4", "-r", "4"]),
    "transfers": ("locustfiles/transfers.py", ["-u", "6", "-r", "6", "--tool-think-ms", "2"]),
}
FULL = os.environ.get("TOOLCLASH_ISOLATION_MATRIX") == "full"
DOC = ROOT / "docs" / "isolation.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


def measure(workloads: list[str], reports: Path, database_url: str) -> dict[str, Any]:
    """Run each workload at each level; per run, the anomalies its isolation check counted and its retries."""
    runs: dict[str, Any] = {}
    for workload in workloads:
        locustfile, args = WORKLOADS[workload]
        for level in LEVELS:
            run = run_locust([*args, *STRESS, "--strategy", level], reports=reports, database_url=database_url,
                             locustfile=locustfile, run_id=f"{workload}-{level}")
            check = run.check(f"{workload}.isolation")
            fig = run.verdict["figures"][workload]
            runs[f"{workload}/{level}"] = {
                "workload": workload, "level": level, "exit_code": run.code, "valid": check["valid"],
                "anomalies": {k: n for k, n in check["counts"]["anomalies"].items() if n},
                "transactions": check["counts"]["transactions"], "calls": fig["calls"],
                "retries_40001": fig["retries_by_cause"].get("serialization", 0), "run_dir": str(run.run_dir),
                "seconds": round(run.seconds, 1)}
    return runs


def matrix(runs: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """anomaly → level → workload → count (only where it appeared)."""
    out: dict[str, dict[str, dict[str, int]]] = {row: {level: {} for level in LEVELS} for row in ROWS}
    for r in runs.values():
        for anomaly, n in r["anomalies"].items():
            if anomaly in out:
                out[anomaly][r["level"]][r["workload"]] = n
    return out


def render(runs: dict[str, Any], when: str) -> str:
    m = matrix(runs)
    workloads = sorted({r["workload"] for r in runs.values()})
    lines = [f"Measured {when} on PostgreSQL, workloads: {', '.join(workloads)} ({STRESS[-1]} of load each, "
             "`--sync 1`). A cell names the workloads whose dependency graph showed the anomaly, with counts.", "",
             "| anomaly | " + " | ".join(LEVEL_NAMES[lv] for lv in LEVELS) + " |",
             "| --- | " + " | ".join("---" for _ in LEVELS) + " |"]
    for row, label in ROWS.items():
        cells = []
        for level in LEVELS:
            seen = m[row][level]
            cells.append("**appears**: " + ", ".join(f"{w} {n}" for w, n in sorted(seen.items())) if seen else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    retries = {lv: sum(r["retries_40001"] for r in runs.values() if r["level"] == lv) for lv in LEVELS}
    txns = {lv: sum(r["transactions"] for r in runs.values() if r["level"] == lv) for lv in LEVELS}
    lines.append("| 40001 retries | " + " | ".join(str(retries[lv]) for lv in LEVELS) + " |")
    lines.append("| committed transactions checked | " + " | ".join(str(txns[lv]) for lv in LEVELS) + " |")
    return "\n".join(lines) + "\n"


def update_doc(table: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    new, n = re.subn(re.escape(BEGIN) + r".*?" + re.escape(END), f"{BEGIN}\n{table}{END}", text, flags=re.S)
    assert n == 1, f"{DOC} has no {BEGIN} … {END} block"
    DOC.write_text(new, encoding="utf-8")


@pytest.mark.timeout(1200)
def test_hermitage_matrix(database_url: str, tmp_path: Path) -> None:
    workloads = list(WORKLOADS) if FULL else ["register"]
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = ROOT / "reports" / f"isolation-{dt.datetime.now():%Y%m%d-%H%M%S}" if FULL else tmp_path
    runs = measure(workloads, out, database_url)
    table = render(runs, when)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.md").write_text(table, encoding="utf-8")
    (out / "matrix.json").write_text(json.dumps({"runs": runs, "matrix": matrix(runs)}, indent=2), encoding="utf-8")
    m = matrix(runs)
    observed = {lv: {row for row in ROWS if m[row][lv]} for lv in LEVELS}
    assert observed == EXPECTED, table
    for r in runs.values():  # what each level allows is counted, never failed
        assert r["valid"] is True, r
    assert all(r["retries_40001"] > 0 for r in runs.values() if r["level"] == "repeatable_read"), runs
    if FULL:
        update_doc(table)
        print(f"\n{table}\nwritten to {out / 'matrix.md'} and {DOC}")
