"""A run's directory and the capture of its final state. Locust-free.

``reports/<run-id>/`` holds ``options.json`` (secrets masked), ``history/``, ``final/``,
``checks.json`` and Locust's own statistics. :func:`capture_final` snapshots what the checks
need from the live services, so ``python -m checks --run reports/<run-id>`` gives the same
verdict later with no server running.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import secrets
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

SCENARIOS: dict[str, str] = {
    # scenario name -> tool module; one registry line per scenario (the contract is below)
    "credits": "toolclash.tools.credits",
    "config": "toolclash.tools.config",
    "deadlock": "toolclash.tools.deadlock",
    "crossservice": "toolclash.tools.crossservice",
    "queue": "toolclash.tools.queue",
    "pool": "toolclash.tools.pool",
    "workspace": "toolclash.tools.workspace",
}
"""A scenario's tool module declares:

* ``NAME``, ``STRATEGIES``, ``DEFAULT_STRATEGY``, ``FAULTS``, ``OPTIONS`` and ``validate(opts)``;
* ``SERVICES`` (optional, default ``("postgres",)``): the stack services it needs (names of
  ``toolclash.stack.SERVICES``); the embedded stack starts those whose URL the user did not give;
* ``reset(conn, *, backend, **opts)``: create/empty/seed its schema (master only, once per run);
  ``conn`` is an admin connection to the main database, ``backend`` a :class:`Backend`;
* ``snapshot(conn, backend)``: the final state its checks need, as JSON-able data;
* optional ``preflight(backend)``: raise with a one-line message if one of its services is unusable;
* optional ``start(backend, opts, run_dir)``: start master-side helpers (a relay, projectors…)
  after ``reset``; returns a handle passed to ``finish``;
* optional ``finish(backend, opts, handle, deadline_s)``: after the load stopped and every worker
  delivered its history, before the snapshot (drain a queue, run recovery, stop helpers).
"""


class BackendError(RuntimeError):
    """A service the scenario needs is not configured (one-line message)."""


class Backend:
    """The services of one run: URLs by environment variable, and connections tagged with the run.

    Locust-free: the runtime, tests and the benchmark build one from the same URLs.
    """

    def __init__(self, urls: dict[str, str], run_id: str = "", connect_timeout_s: float = 10.0) -> None:
        self.urls = dict(urls)
        self.run_id = run_id
        self.connect_timeout_s = connect_timeout_s

    def url(self, env_var: str) -> str:
        try:
            return self.urls[env_var]
        except KeyError:
            raise BackendError(f"{env_var} is not set and the embedded stack did not start that service; "
                               f"set {env_var} or leave the scenario's services to the embedded stack") from None

    def pg(self, who: str = "admin", env_var: str = "DATABASE_URL") -> Any:
        """A new PostgreSQL connection to *env_var*'s server, named ``tc:<run>:<who>``."""
        from toolclash import db

        return db.connect(self.url(env_var), timeout=self.connect_timeout_s,
                          application_name=application_name(self.run_id, who))


def scenario_module(name: str) -> ModuleType:
    return importlib.import_module(SCENARIOS[name])


def services_of(names: list[str] | tuple[str, ...]) -> list[str]:
    """The stack services *names* need, in order, deduplicated."""
    return list(dict.fromkeys(s for name in names for s in getattr(scenario_module(name), "SERVICES", ("postgres",))))


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx``: sortable by time, unique across concurrent runs."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def application_name(run_id: str, who: str) -> str:
    """The ``application_name`` every session of a run carries (how leftovers are found)."""
    return f"tc:{run_id}:{who}"[:63]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                                 default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def create_run_dir(reports_dir: str | os.PathLike[str], run_id: str, meta: dict[str, Any]) -> Path:
    """Create ``<reports_dir>/<run_id>/`` with ``options.json``; refuses to reuse an existing run."""
    path = Path(reports_dir) / run_id
    path.mkdir(parents=True, exist_ok=False)
    (path / "history").mkdir()
    write_json(path / "options.json", {"run_id": run_id, "started_at": time.time(), **meta})
    return path


def server_facts(conn: Any, run_id: str, *, wait_s: float = 5.0) -> dict[str, Any]:
    """Sessions of the run still open (waiting up to *wait_s* for closing ones to go) and prepared xacts."""
    prefix = application_name(run_id, "")
    deadline = time.monotonic() + wait_s
    started = time.monotonic()
    with conn.cursor() as cur:
        while True:
            cur.execute(
                "SELECT pid, application_name, state, EXTRACT(EPOCH FROM now() - xact_start)::float8, query "
                "FROM pg_stat_activity WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (prefix.replace("_", r"\_") + "%",))
            rows = cur.fetchall()
            conn.rollback()
            if not rows or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        sessions = [dict(zip(("pid", "application_name", "state", "xact_age_s", "query"), r, strict=True))
                    for r in rows]
        cur.execute("SELECT gid, prepared, owner, database FROM pg_prepared_xacts")
        prepared = [dict(zip(("gid", "prepared", "owner", "database"), r, strict=True)) for r in cur.fetchall()]
        cur.execute("SHOW server_version")
        version = cur.fetchone()[0]
    conn.rollback()
    return {"sessions": sessions, "prepared_xacts": prepared, "server_version": version,
            "waited_s": round(time.monotonic() - started, 3)}


def capture_final(conn: Any, run_dir: Path, scenarios: list[str], run_id: str, backend: Backend | None = None) -> None:
    """Write ``final/<scenario>.json`` for each scenario and ``final/server.json``."""
    final = run_dir / "final"
    server = server_facts(conn, run_id)
    for name in scenarios:
        write_json(final / f"{name}.json", scenario_module(name).snapshot(conn, backend))
    write_json(final / "server.json", server)
