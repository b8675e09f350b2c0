"""A run's lifecycle, Locust-free: services, preflight, run directory, reset, helpers, final state.

The Locust plugin, the tests and the benchmark drive a run the same way::

    urls, stack = provide_services(settings)       # the embedded stack starts what was not given by URL
    preflight(settings, urls)                      # every server answers, each scenario's own preflight
    run = Run.open(settings, urls, process=…)      # run id, reports/<run-id>/options.json, reset, start hooks
    run.roster.join(…)                             # a master lists each worker that takes part (processes.json)
    …                                              # agents call tools; histories land in run.dir/history
    run.close()                                    # finish hooks, then final/<scenario>.json and final/server.json

``reports/<run-id>/`` then holds everything the checks need: ``python -m checks --run reports/<run-id>``
gives the verdict with no server running.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import orjson

from toolclash import db
from toolclash.backend import Backend, application_name
from toolclash.columnar import JSON_OPTIONS
from toolclash.columnar import write_final as write_final_columns
from toolclash.history import Roster
from toolclash.option import mask_url
from toolclash.scenario import Context, Scenario, get
from toolclash.settings import Settings

log = logging.getLogger("toolclash")

FINISH_DEADLINE_S = 15.0
"""How long each scenario's ``finish`` hook may take (drain a queue, let projectors catch up …)."""


class RunError(RuntimeError):
    """The run cannot start (one-line message: what and how to fix)."""


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx``: sortable by time, unique across concurrent runs."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(data, option=JSON_OPTIONS, default=str))
    os.replace(tmp, path)


def write_final(path: Path, data: Any) -> None:
    """Write a scenario's final state: the JSON, and a columnar copy of its big tables for the fast checks
    (:func:`toolclash.columnar.write_final`)."""
    if not write_final_columns(path, data):
        write_json(path, data)


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def create_run_dir(reports_dir: str | os.PathLike[str], run_id: str, meta: dict[str, Any]) -> Path:
    """Create ``<reports_dir>/<run_id>/`` with ``options.json``; refuses to reuse an existing run."""
    path = Path(reports_dir) / run_id
    path.mkdir(parents=True, exist_ok=False)
    (path / "history").mkdir()
    write_json(path / "options.json", {"run_id": run_id, "started_at": time.time(), **meta})
    return path


# ------------------------------------------------------------------------------------------ services


def scenario_of(settings: Settings, name: str) -> Scenario:
    """The scenario *name* as this run drives it: its own hooks, or with ``--target`` the target's
    (:func:`toolclash.targets.lifecycle.apply`)."""
    sc = get(name)
    if settings.target_spec is None:
        return sc
    from toolclash.targets.lifecycle import apply

    return apply(settings.target_spec, sc)


def service_var(name: str) -> str:
    """The environment variable that carries the URL of the embedded stack's service *name*."""
    from toolclash.stack import SERVICES

    return SERVICES[name].env_var


def provide_services(settings: Settings, *, stack_dir: str | None = None, durable: bool = False
                     ) -> tuple[dict[str, str], Any]:
    """The URL of every service the run's scenarios need: the user's where given, else the embedded stack's
    (*durable*: servers that keep every acknowledged write through a crash, for a nemesis that crashes them).

    Returns ``(urls by environment variable, the started Stack or None)``; :class:`RunError` when the stack
    cannot start (it is stopped again).
    """
    urls = settings.service_urls()
    services = dict.fromkeys(s for name in settings.scenarios for s in scenario_of(settings, name).services)
    needed = [name for name in services if service_var(name) not in urls]
    if not needed:
        return urls, None
    from toolclash.stack import Stack, StackError

    stack = None
    try:
        stack = Stack(stack_dir, services=needed, durable=durable)
        env = stack.up()
    except StackError as exc:
        if stack is not None:
            stack.down()
        raise RunError(str(exc)) from None
    for var, url in env.items():
        urls.setdefault(var, url)
    notes = "; ".join(f"{name}: {', '.join(st['notes']) if isinstance(st['notes'], list) else st['notes']}"
                      for name, st in stack.status().items() if st.get("notes"))
    log.info("embedded stack up: %s%s", ", ".join(mask_url(url) for url in env.values()),
             f" ({notes})" if notes else "")
    return urls, stack


def preflight(settings: Settings, urls: dict[str, str]) -> None:
    """Every PostgreSQL URL answers, then each scenario's own ``preflight``; :class:`RunError` (one line) if not."""
    for var, url in urls.items():
        if not url.startswith(("postgresql://", "postgres://")):
            continue
        try:
            conn = db.connect(url, timeout=settings.connect_timeout_s, application_name="toolclash:preflight")
        except db.ConnectError as exc:
            raise RunError(f"{exc}. Check {var} (or unset it to use the embedded server).") from None
        db.close_quietly(conn)
    backend = Backend(urls, "", settings.connect_timeout_s)
    for name in settings.scenarios:
        check = scenario_of(settings, name).preflight
        if check is None:
            continue
        try:
            check(backend)
        except Exception as exc:  # noqa: BLE001 - one line, exit 2
            raise RunError(first_line(exc)) from None


def process_exit_code(verdict_code: int, *, on_error: int, failed_requests: bool) -> int:
    """The process's exit code: the verdict's (0 valid, 1 anomaly, 2 could not run, 3 unknown, 4 SLA missed);
    only when that is 0 and Locust counted failed requests does Locust's ``--exit-code-on-error N`` apply (its
    default is 0 under toolclash: failed requests are judged by the success-rate gate, business rejections are
    correct answers)."""
    return on_error if verdict_code == 0 and on_error and failed_requests else verdict_code


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- run


class Run:
    """One run of a set of scenarios: its directory, its services, its scenarios' hooks.

    :meth:`open` makes the directory, resets every scenario and starts their helpers; :meth:`close`
    finishes them and captures the final state. Process-local: only the process that judges the run
    (the Locust master, or the single process) opens one; workers only write histories.
    """

    def __init__(self, settings: Settings, urls: dict[str, str], run_id: str, run_dir: Path) -> None:
        self.settings = settings
        self.urls = dict(urls)
        self.run_id = run_id
        self.dir = run_dir
        self.handles: dict[str, Any] = {}
        """What each scenario's ``start`` hook returned, for its ``finish``."""
        self.scenarios = {name: scenario_of(settings, name) for name in settings.scenarios}
        """Each scenario as this run drives it (with ``--target``: the target's hooks)."""
        self.contexts = {name: self.scenarios[name].context(self.backend(), settings.options_of(name),
                                                 strategy=settings.strategy, fault=settings.fault, run_dir=run_dir)
                         for name in settings.scenarios}
        self.roster = Roster(run_dir, run_id)
        """Every process that takes part (``processes.json``): the verdict expects a history of each."""
        self.prepared_at_start: dict[str, list[dict[str, Any]]] = {}
        """Prepared transactions each PostgreSQL server held before the reset (not this run's)."""
        self.closed = False

    def backend(self) -> Backend:
        return Backend(self.urls, self.run_id, self.settings.connect_timeout_s)

    def context(self, name: str) -> Context:
        return self.contexts[name]

    @classmethod
    def open(cls, settings: Settings, urls: dict[str, str], *, run_id: str | None = None,
             meta: dict[str, Any] | None = None, process: str | None = None, role: str = "local",
             records: bool = True) -> Run:
        """Create ``reports/<run-id>/`` (``options.json``: the settings with secrets masked, plus *meta*),
        reset every scenario, start their helpers. On failure nothing is left behind (:class:`RunError`).

        *process* (this process's name; *role*, and whether it *records* operations) is listed first in
        ``processes.json``, before any scenario hook runs."""
        run_id = run_id or settings.run_id or new_run_id()
        if (Path(settings.reports_dir) / run_id).exists():
            raise RunError(f"run directory {Path(settings.reports_dir) / run_id} exists already; choose another "
                           "--run-id or leave it empty for a fresh one")
        info = {"scenarios": list(settings.scenarios), "settings": settings.public(), **(meta or {})}
        if settings.baseline:
            info["baseline"] = str(Path(settings.baseline).resolve())
        run_dir = create_run_dir(settings.reports_dir, run_id, info)
        run = cls(settings, urls, run_id, run_dir)
        if process:
            run.roster.join(process, process=process, role=role, history=records)
        run.prepared_at_start = {var: facts.get("prepared_xacts", []) for var, facts in prepared_by_server(run).items()}
        try:
            run._reset_and_start()
        except Exception as exc:  # noqa: BLE001 - could not run: one line, no half report
            run._stop_helpers()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise RunError(f"could not prepare the database: {first_line(exc)}") from None
        log.info("run %s started: %s", run_id, run_dir)
        return run

    def broken_invariant(self) -> str | None:
        """The first live invariant a scenario of the run says is broken (its ``invariant`` hook, on a connection
        of its own); None when none is, or when none could be read (a fault is not a broken invariant)."""
        hooks = [(name, sc.invariant) for name, sc in self.scenarios.items() if sc.invariant is not None]
        if not hooks:
            return None
        conn = None
        try:
            conn = self.backend().pg("invariant")
            for name, hook in hooks:
                assert hook is not None
                broken = hook(self.contexts[name], conn)
                if broken:
                    return f"{name}: {broken}"
        except Exception:  # noqa: BLE001 - unreadable now (a fault?): nothing is known to be broken
            return None
        finally:
            if conn is not None:
                db.close_quietly(conn)
        return None

    def _reset_and_start(self) -> None:
        # no DATABASE_URL: every scenario is pointed at a platform reached another way (an HTTP target)
        conn = self.backend().pg("admin") if "DATABASE_URL" in self.urls else None
        try:
            for name in self.settings.scenarios:
                self.scenarios[name].reset(self.contexts[name], conn)
        finally:
            db.close_quietly(conn)
        for name in self.settings.scenarios:
            start = self.scenarios[name].start
            if start is not None:
                self.handles[name] = start(self.contexts[name])

    def _stop_helpers(self) -> None:
        for name, handle in list(self.handles.items()):
            finish = self.scenarios[name].finish
            if finish is not None:
                try:
                    finish(self.contexts[name], handle, 0.0)
                except Exception:  # noqa: BLE001 - best effort while giving up
                    pass
        self.handles.clear()

    def close(self, *, stages: list[dict[str, Any]] | None = None, deadline_s: float = FINISH_DEADLINE_S) -> None:
        """After the load stopped and every history arrived: each scenario's ``finish``, then the final state.

        A failing hook or capture is logged, never raised: the checks say what the state lacks.
        """
        if self.closed:
            return
        self.closed = True
        if stages:
            write_json(self.dir / "stages.json", stages)
        for name in self.settings.scenarios:
            finish = self.scenarios[name].finish
            if finish is None:
                continue
            try:
                facts = finish(self.contexts[name], self.handles.get(name), deadline_s)
            except Exception as exc:  # noqa: BLE001 - the checks judge what the state shows
                log.error("%s: finishing the run failed: %s", name, first_line(exc))
                continue
            self.contexts[name].facts = dict(facts or {})
        self.handles.clear()
        try:
            capture_final(self)
        except Exception as exc:  # noqa: BLE001 - the verdict says what is missing
            log.error("could not capture the final state: %s", first_line(exc))


def capture_final(run: Run) -> None:
    """Write ``final/<scenario>.json`` for each scenario and ``final/server.json``.

    Without a DATABASE_URL (an HTTP or client target) the run held no database session of its own:
    ``server.json`` says so instead of listing sessions."""
    if "DATABASE_URL" not in run.urls:
        for name in run.settings.scenarios:
            write_final(run.dir / "final" / f"{name}.json", run.scenarios[name].snapshot(run.contexts[name], None))
        write_json(run.dir / "final" / "server.json", {"no_database": "the run held no database session of its "
                                                                      "own: its target is reached another way"})
        return
    conn = run.backend().pg("capture")
    try:
        server = server_facts(conn, run.run_id)
        for name in run.settings.scenarios:
            write_final(run.dir / "final" / f"{name}.json", run.scenarios[name].snapshot(run.contexts[name], conn))
        server["servers"] = {var: {**facts, "prepared_at_start": run.prepared_at_start.get(var)}
                             for var, facts in prepared_by_server(run).items()}
        write_json(run.dir / "final" / "server.json", server)
    finally:
        db.close_quietly(conn)


def postgres_servers(urls: dict[str, str]) -> dict[str, str]:
    """The run's PostgreSQL servers by environment variable (not PgBouncer: it fronts one of them)."""
    bouncer = service_var("pgbouncer")
    return {var: url for var, url in sorted(urls.items())
            if var != bouncer and url.startswith(("postgresql://", "postgres://"))}


def prepared_by_server(run: Run) -> dict[str, dict[str, Any]]:
    """Every prepared transaction (``pg_prepared_xacts``: all databases of the server) of each of the run's
    PostgreSQL servers; a server that cannot be asked gets ``{"error": …}``."""
    out: dict[str, dict[str, Any]] = {}
    for var in postgres_servers(run.urls):
        try:
            conn = run.backend().pg("capture", var)
        except Exception as exc:  # noqa: BLE001 - the check says what could not be read
            out[var] = {"error": first_line(exc)}
            continue
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT gid, prepared, owner, database FROM pg_prepared_xacts ORDER BY gid")
                out[var] = {"prepared_xacts": [dict(zip(("gid", "prepared", "owner", "database"), r, strict=True))
                                               for r in cur.fetchall()]}
            conn.rollback()
        except Exception as exc:  # noqa: BLE001
            out[var] = {"error": first_line(exc)}
        finally:
            db.close_quietly(conn)
    return out


def server_facts(conn: Any, run_id: str, *, wait_s: float = 5.0) -> dict[str, Any]:
    """Sessions of the run still open (waiting up to *wait_s* for closing ones to go) and prepared xacts."""
    prefix = application_name(run_id, "")
    deadline = time.monotonic() + wait_s
    started = time.monotonic()
    with conn.cursor() as cur:
        while True:
            cur.execute(
                "SELECT pid, application_name, state, EXTRACT(EPOCH FROM now() - xact_start)::float8, query, "
                "pg_blocking_pids(pid) "
                "FROM pg_stat_activity WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (prefix.replace("_", r"\_") + "%",))
            rows = cur.fetchall()
            conn.rollback()
            if not rows or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        # blocked_by: the sessions whose locks it waits for (a session of a lost process can hold others up)
        sessions = [dict(zip(("pid", "application_name", "state", "xact_age_s", "query", "blocked_by"), r,
                             strict=True)) for r in rows]
        cur.execute("SELECT gid, prepared, owner, database FROM pg_prepared_xacts")
        prepared = [dict(zip(("gid", "prepared", "owner", "database"), r, strict=True)) for r in cur.fetchall()]
        cur.execute("SHOW server_version")
        version = cur.fetchone()[0]
    conn.rollback()
    return {"sessions": sessions, "prepared_xacts": prepared, "server_version": version,
            "waited_s": round(time.monotonic() - started, 3)}
