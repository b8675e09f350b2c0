"""Real services, started once per session; a clean schema per test; helpers to run Locust.

No mocks and no skips: if PostgreSQL's binaries are missing, the session fails with the
stack's one-line error (run `make setup`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from toolclash.stack import SERVICES, Stack
from toolclash.stack.process import free_port

ROOT = Path(__file__).resolve().parent.parent
LOCUST = str(Path(sys.executable).with_name("locust"))


SERVICE_VARS = tuple(cls.env_var for cls in SERVICES.values())


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    """Every service of the embedded stack, once for the whole session (free ports, temp dir, stopped at
    the end): ``{"DATABASE_URL": …, "REDIS_URL": …, …}``."""
    st = Stack(services=list(SERVICES))
    try:
        yield st.up()
    finally:
        st.down()


@pytest.fixture
def database_url(stack: dict[str, str]) -> str:
    """The session server's URL, with the project's schema dropped first (a clean schema per test)."""
    url = stack["DATABASE_URL"]
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS toolclash CASCADE")
        conn.commit()
    finally:
        conn.close()
    return url


@dataclass
class LocustRun:
    proc: subprocess.CompletedProcess[str]
    run_dir: Path
    seconds: float

    @property
    def code(self) -> int:
        return self.proc.returncode

    @property
    def verdict(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "checks.json").read_text())

    def check(self, name: str) -> dict[str, Any]:
        return next(c for c in self.verdict["checks"] if c["name"] == name)

    def output(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.proc.stdout[-4000:]}\n--- stderr\n{self.proc.stderr[-4000:]}"


def run_locust(args: list[str], *, reports: Path, database_url: str | None, run_id: str = "t",
               locustfile: str = "locustfiles/credits.py", timeout: float = 120,
               services: dict[str, str] | None = None, report: bool = False) -> LocustRun:
    """Run a headless Locust subprocess and return its result and run directory.

    *database_url* and *services* (e.g. the ``stack`` fixture's URLs) point it at the session's servers;
    a service not given is started by the run's own embedded stack. Without *report*, no ``report.html``
    (``--report none``: the plots cost a second or two per run, and only the report's own tests look at them).
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOCUST_", "TOOLCLASH_")) and k not in SERVICE_VARS}
    env.update(services or {})
    if database_url:
        env["DATABASE_URL"] = database_url
    if "--processes" in args and "--master-bind-port" not in args:  # the default 5557 may be another run's
        port = str(free_port())
        args = [*args, "--master-bind-port", port, "--master-port", port]
    if not report and "--report" not in args:
        args = [*args, "--report", "none"]
    cmd = [LOCUST, "-f", locustfile, "--headless", "--reports-dir", str(reports), "--run-id", run_id,
           "--loglevel", "WARNING", *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return LocustRun(proc, reports / run_id, time.monotonic() - start)
