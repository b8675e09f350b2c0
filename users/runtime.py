"""toolclash inside Locust: options, backend, run lifecycle, history hand-off and the verdict.

A locustfile calls :func:`setup` once with its scenarios; that only adds event listeners
(nothing connects, spawns or reads at import: Locust imports locustfiles before it forks).

Lifecycle on the master (or the single process):

* ``init`` — validate the options (a bad one: one line, exit 2), point at ``DATABASE_URL`` or start
  the embedded stack, check the database answers (else one line, exit 2).
* ``test_start`` — new run id and ``reports/<run-id>/``, reset and seed each scenario's schema,
  and pass run id, run directory and database URL to workers inside the parsed options that
  Locust forwards with every spawn message.
* ``test_stop`` — collect every worker's history (``tc_stop`` → ``tc_history_done`` with its
  record count; Locust fires ``test_stop`` on a headless master before workers finish), capture
  the final state, evaluate the checks and gates, write ``checks.json`` and Locust's statistics.
* ``quitting`` — the exit code (DESIGN.md); ``quit`` prints the verdict table after Locust's summary.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import orjson
from locust import events
from locust.env import Environment
from locust.runners import STATE_STOPPED, MasterRunner, WorkerRunner

from checks import EXIT_USAGE
from checks.verdict import evaluate, render, write
from toolclash import db
from toolclash.history import HistoryReceiver, HistoryWriter, process_name
from toolclash.metrics import OPTIONS as METRICS_OPTIONS
from toolclash.retry import RetryPolicy
from toolclash.run import (
    Backend,
    application_name,
    capture_final,
    create_run_dir,
    new_run_id,
    scenario_module,
    services_of,
    write_json,
)
from toolclash.settings import OPTIONS, Settings, SettingsError, mask_url
from toolclash.tools import Call

log = logging.getLogger("toolclash")

HANDOFF_TIMEOUT_S = 15.0
"""How long the master waits for each worker's final history count."""


def fail_fast(message: str) -> None:
    """Could not run: one line on stderr, exit 2, no traceback."""
    sys.stderr.write(f"toolclash: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_USAGE)


class Runtime:
    """Per-process toolclash state (one instance per Locust process)."""

    def __init__(self, scenarios: list[str]) -> None:
        self.scenarios = scenarios
        self.environment: Environment | None = None
        self.settings: Settings | None = None
        self.stack: Any = None
        self.urls: dict[str, str] = {}
        """Every service of the run by environment variable (DATABASE_URL, REDIS_URL, …)."""
        self.run_id = ""
        self.run_dir: Path | None = None
        self.history: HistoryWriter | None = None
        self.process = ""
        self.verdict: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self._agents = itertools.count(1)
        self._run_active = False
        self._done: dict[str, dict[str, Any]] = {}
        self._lost_workers: list[str] = []
        self.counters: Counter[str] = Counter()
        """Live counters Locust's request stats don't hold; workers send deltas, the master sums them."""
        self._unsent: Counter[str] = Counter()
        self._stages: list[dict[str, Any]] = []
        self._barriers: dict[str, gevent.event.Event] = {}
        self._arrivals: Counter[str] = Counter()
        self._receiver: HistoryReceiver | None = None
        """Master: writes the history batches workers ship (no shared filesystem needed)."""
        self._connections: set[Any] = set()
        """Every connection this process opened for the run; closed at stop (see close_connections)."""
        self._handles: dict[str, Any] = {}
        """Master: what each scenario's ``start`` hook returned, for its ``finish`` hook."""

    @property
    def database_url(self) -> str:
        return self.urls.get("DATABASE_URL", "")

    def backend(self) -> Backend:
        """The run's services (URLs) and run id, for tool modules' hooks and agents' extra clients."""
        timeout = self.settings.connect_timeout_s if self.settings else 10.0
        return Backend(self.urls, self.run_id, timeout)

    # --- helpers used by users ---

    @property
    def is_worker(self) -> bool:
        return isinstance(self.environment and self.environment.runner, WorkerRunner)

    def next_agent(self) -> str:
        return f"{self.process}-a{next(self._agents)}"

    def policy(self) -> RetryPolicy:
        s = self.require_settings()
        return RetryPolicy(max_tries=s.max_tries, base_s=s.retry_base_ms / 1000.0, cap_s=s.retry_cap_ms / 1000.0,
                           deadline_s=s.retry_deadline_s)

    def require_settings(self) -> Settings:
        if self.settings is None:
            raise RuntimeError("toolclash settings are not loaded yet (test not started)")
        return self.settings

    def connect(self, who: str, env_var: str = "DATABASE_URL") -> Any:
        """An agent's PostgreSQL connection to *env_var*'s server, registered so that stop closes it
        however the agent ended."""
        s = self.require_settings()
        conn = db.connect(self.urls[env_var], timeout=s.connect_timeout_s,
                          application_name=application_name(self.run_id, who))
        self._connections.add(conn)
        return conn

    def track(self, client: Any) -> Any:
        """Register any other client with a ``close()`` (Redis, ClickHouse…) so that stop closes it."""
        self._connections.add(client)
        return client

    def forget(self, conn: Any) -> None:
        self._connections.discard(conn)

    def close_connections(self) -> None:
        """Close every agent connection still open. Agents close their own in on_stop, but Ctrl-C raises
        KeyboardInterrupt in whichever greenlet runs at that instant, and Locust's User.run() lets that
        through without on_stop: the session would then stay open until the process exits."""
        left = [c for c in self._connections if not getattr(c, "closed", False)]
        for conn in left:
            if hasattr(conn, "closed"):
                db.close_quietly(conn)
            else:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing at stop must not fail the stop
                    pass
        self._connections.clear()
        if left:
            log.info("closed %d agent connection(s) left open at stop", len(left))

    def count(self, call: Call) -> None:
        """Count one finished call: outcome, commits, rollbacks, retries by cause, SQLSTATEs, backoff."""
        attempts = call.attempts
        self._bump(f"calls_{call.outcome}")
        self._bump("attempts", attempts.count)
        if call.outcome == "ok":
            self._bump("commits")
        rollbacks = attempts.conflicts + (1 if call.outcome == "fail" else 0)
        if rollbacks:
            self._bump("rollbacks", rollbacks)
        for cause, n in attempts.retries.items():
            self._bump(f"retries_{cause}", n)
            self._bump("conflicts", n)
        for state in attempts.sqlstates:
            self._bump(f"sqlstate_{state}")
        if call.reason in ("timeout", "deadline"):
            self._bump("timeouts")
        if attempts.backoff_s:
            self._bump("backoff_ms", round(attempts.backoff_s * 1000.0))

    def bump(self, key: str, n: int = 1) -> None:
        """Add to a live counter here and to the delta this process still owes the master (summed there)."""
        self._bump(key, n)

    def _bump(self, key: str, n: int = 1) -> None:
        """Add to a live counter here and to the delta this process still owes the master."""
        self.counters[key] += n
        self._unsent[key] += n

    def mark_stage(self, index: int | None, users: int, at: float) -> None:
        """Record that ramp stage *index* (0-based; None: the ramp ended) began at *at* with *users* agents."""
        if self._stages and self._stages[-1]["end"] is None:
            self._stages[-1]["end"] = at
        if index is not None:
            self._stages.append({"stage": index + 1, "users": users, "start": at, "end": None})
            log.info("ramp stage %d: %d agents", index + 1, users)

    # --- barrier: agents on every worker meet before acting (Locust messages through the master) ---

    def barrier(self, name: str, timeout: float) -> bool:
        """Wait until every party has arrived at barrier *name*; False on timeout (the agent goes on alone)."""
        event = self._barriers.setdefault(name, gevent.event.Event())
        runner = self.environment.runner if self.environment else None
        if isinstance(runner, WorkerRunner):
            runner.send_message("tc_barrier", {"run_id": self.run_id, "name": name})
        else:
            self._arrive(name)
        released = event.wait(timeout)
        self._bump("barrier_waits" if released else "barrier_timeouts")
        return bool(released)

    def _parties(self) -> int:
        settings = self.require_settings()
        if settings.sync_parties:
            return settings.sync_parties
        opts = self.environment.parsed_options if self.environment else None
        return int(getattr(opts, "num_users", None) or 1)

    def _arrive(self, name: str) -> None:
        """Master or single process: count an arrival; release everybody at the last one."""
        self._arrivals[name] += 1
        if self._arrivals[name] == self._parties():
            self._release(name)

    def _release(self, name: str) -> None:
        self._barriers.setdefault(name, gevent.event.Event()).set()
        runner = self.environment.runner if self.environment else None
        if isinstance(runner, MasterRunner):
            runner.send_message("tc_barrier_release", {"run_id": self.run_id, "name": name})

    def _master_on_barrier(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.data.get("run_id") == self.run_id:
            self._arrive(msg.data["name"])

    def _worker_on_release(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.data.get("run_id") == self.run_id:
            self._barriers.setdefault(msg.data["name"], gevent.event.Event()).set()

    def stages_marked(self) -> int:
        return len(self._stages)

    def current_stage(self) -> dict[str, Any] | None:
        """The ramp stage under way (``{"stage", "users", "start", "end"}``), None outside a ramp."""
        return self._stages[-1] if self._stages and self._stages[-1]["end"] is None else None

    @property
    def run_active(self) -> bool:
        return self._run_active

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        data["toolclash_counters"] = dict(self._unsent)
        self._unsent.clear()

    def on_worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        self.counters.update(data.get("toolclash_counters") or {})

    def rng(self) -> random.Random:
        return random.Random()

    # --- event listeners ---

    def on_parser(self, parser: Any, **_: Any) -> None:
        modules = [scenario_module(name) for name in self.scenarios]
        # "" first: the web UI's select shows the first choice, and "" means each scenario's own default
        # (without it the form would preselect the first strategy listed, e.g. a known-bad one).
        choices = {"strategy": ("", *dict.fromkeys(st for m in modules for st in m.STRATEGIES)),
                   "fault": ("none", *dict.fromkeys(f for m in modules for f in m.FAULTS))}
        declared = {opt.name: opt for m in modules for opt in m.OPTIONS}  # scenario options, deduplicated
        for opt in (*OPTIONS, *declared.values(), *METRICS_OPTIONS):
            if opt.locust_builtin:
                continue
            kwargs: dict[str, Any] = {"type": opt.type, "default": opt.default, "help": opt.help,
                                      "env_var": opt.env, "include_in_web_ui": True}
            if opt.choices or opt.name in choices:
                kwargs["choices"] = opt.choices or choices[opt.name]
            if opt.is_secret:
                kwargs["is_secret"] = True
            parser.add_argument(opt.flag, **kwargs)

    def on_init(self, environment: Environment, runner: Any, web_ui: Any = None, **_: Any) -> None:
        self.environment = environment
        db.patch_gevent()
        if isinstance(runner, WorkerRunner):
            self.process = process_name(runner.worker_index)
            runner.register_message("tc_stop", self._worker_on_stop, concurrent=True)
            runner.register_message("tc_barrier_release", self._worker_on_release)
            return
        self.process = process_name()
        try:
            self.settings = Settings.from_mapping(vars(environment.parsed_options), self.scenarios)
        except SettingsError as exc:
            fail_fast(str(exc))
        settings = self.require_settings()
        if settings.run_id and (Path(settings.reports_dir) / settings.run_id).exists():
            fail_fast(f"run directory {Path(settings.reports_dir) / settings.run_id} exists already; "
                      "choose another --run-id or leave it empty for a fresh one")
        self.urls = settings.service_urls()
        needed = [name for name in services_of(self.scenarios) if self._service_var(name) not in self.urls]
        if needed:
            self._start_stack(needed)
        self._check_database()
        if isinstance(runner, MasterRunner):
            runner.register_message("tc_history_batch", self._master_on_batch)
            runner.register_message("tc_history_done", self._master_on_done)
            runner.register_message("tc_barrier", self._master_on_barrier)
        if web_ui is not None:
            web_ui.app.add_url_rule("/toolclash/verdict", "toolclash_verdict", self._serve_verdict)

    @staticmethod
    def _service_var(name: str) -> str:
        from toolclash.stack.core import SERVICES

        return SERVICES[name].env_var

    def _start_stack(self, services: list[str]) -> None:
        from toolclash.stack.core import Stack
        from toolclash.stack.process import StackError

        try:
            self.stack = Stack(services=services)
            env = self.stack.up()
        except StackError as exc:
            if self.stack is not None:
                self.stack.down()
            fail_fast(str(exc))
        for var, url in env.items():
            self.urls.setdefault(var, url)
        atexit.register(self._stop_stack)  # also on an abnormal exit
        notes = "; ".join(f"{name}: {', '.join(st['notes']) if isinstance(st['notes'], list) else st['notes']}"
                          for name, st in self.stack.status().items() if st.get("notes"))
        log.info("embedded stack up: %s%s", ", ".join(mask_url(url) for url in env.values()),
                 f" ({notes})" if notes else "")

    def _check_database(self) -> None:
        """Every PostgreSQL URL answers, then each scenario's own ``preflight`` (else one line, exit 2)."""
        settings = self.require_settings()
        for var, url in self.urls.items():
            if not url.startswith(("postgresql://", "postgres://")):
                continue
            try:
                conn = db.connect(url, timeout=settings.connect_timeout_s, application_name="toolclash:preflight")
            except db.ConnectError as exc:
                self._stop_stack()
                fail_fast(f"{exc}. Check {var} (or unset it to use the embedded server).")
            db.close_quietly(conn)
        for name in self.scenarios:
            preflight = getattr(scenario_module(name), "preflight", None)
            if preflight is None:
                continue
            try:
                preflight(self.backend())
            except Exception as exc:  # noqa: BLE001 - one line, exit 2
                self._stop_stack()
                fail_fast(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    def on_test_start(self, environment: Environment, **_: Any) -> None:
        if self.is_worker:
            self._worker_start(environment)
            return
        self.history = None
        try:  # the web UI's form may have changed the options since init
            self.settings = Settings.from_mapping(vars(environment.parsed_options), self.scenarios)
        except SettingsError as exc:
            self._abort(environment, str(exc))
            return
        settings = self.settings
        self.urls.update(settings.service_urls())
        self.run_id = settings.run_id or new_run_id()
        if self.run_dir is not None and self.run_dir.name == self.run_id:  # a second run from the web UI
            self.run_id = f"{self.run_id}-{new_run_id()}"
        opts = environment.parsed_options
        meta = {"scenarios": self.scenarios, "settings": settings.public(), "process": self.process,
                "locust": {"users": getattr(opts, "num_users", None), "spawn_rate": getattr(opts, "spawn_rate", None),
                           "run_time": getattr(opts, "run_time", None), "headless": getattr(opts, "headless", None),
                           "processes": getattr(opts, "processes", None), "stop_timeout": environment.stop_timeout,
                           "distributed": isinstance(environment.runner, MasterRunner)}}
        self.run_dir = create_run_dir(settings.reports_dir, self.run_id, meta)
        self.verdict, self.exit_code, self._done = None, None, {}
        self.counters.clear()
        self._barriers, self._arrivals = {}, Counter()
        self._stages = []  # Locust resets the shape's clock right after test_start; stage 1 is marked again
        try:
            conn = self.connect("admin")
            backend = self.backend()
            try:
                for name in self.scenarios:
                    scenario_module(name).reset(conn, backend=backend, **vars(settings.options_of(name)))
            finally:
                db.close_quietly(conn)
            self._handles = {}
            for name in self.scenarios:
                start = getattr(scenario_module(name), "start", None)
                if start is not None:
                    self._handles[name] = start(backend, settings.options_of(name), self.run_dir)
        except Exception as exc:  # noqa: BLE001 - could not run: say so in one line, leave no half report
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
            self._abort(environment, f"could not prepare the database: {str(exc).strip().splitlines()[0]}")
            return
        settings_data = {k: v for k, v in settings.values().items() if not k.endswith("_url")}
        vars(opts).update(tc_run_id=self.run_id, tc_run_dir=str(self.run_dir), tc_urls=dict(self.urls),
                          tc_settings=settings_data)
        self._run_active = True
        if isinstance(environment.runner, MasterRunner):
            self._receiver = HistoryReceiver(self.run_dir / "history")
        else:
            self.history = HistoryWriter(self.run_dir / "history", run_id=self.run_id, process=self.process).start()
        log.info("run %s started: %s", self.run_id, self.run_dir)

    def _abort(self, environment: Environment, message: str) -> None:
        """The run cannot start: one line, exit code 2; headless quits, the web UI stays up."""
        sys.stderr.write(f"toolclash: {message}\n")
        sys.stderr.flush()
        self.exit_code = EXIT_USAGE
        opts = environment.parsed_options
        runner = environment.runner
        if runner is not None:
            gevent.spawn(runner.quit if getattr(opts, "headless", False) else runner.stop)

    def _worker_start(self, environment: Environment) -> None:
        opts = vars(environment.parsed_options)
        self.settings = Settings.from_mapping(opts["tc_settings"], self.scenarios)
        self._barriers = {}
        self.run_id, self.urls = opts["tc_run_id"], dict(opts["tc_urls"])
        self.run_dir = Path(opts["tc_run_dir"])  # the master's; a worker never writes there
        runner = environment.runner
        assert isinstance(runner, WorkerRunner)

        def ship(batch: list[dict[str, Any]], run_id: str = self.run_id) -> None:
            runner.send_message("tc_history_batch", {"run_id": run_id, "process": self.process, "records": batch})

        self.history = HistoryWriter(None, run_id=self.run_id, process=self.process, sink=ship).start()

    def on_test_stop(self, environment: Environment, **_: Any) -> None:
        if self.is_worker:
            self._worker_finish()
            return
        if not self._run_active:
            return
        self._run_active = False
        if isinstance(environment.runner, MasterRunner):
            self._collect_worker_histories(environment.runner)
            if self._receiver is not None:
                self._receiver.close()
        elif self.history is not None:
            self.history.close()
        self.close_connections()
        self.finalize(environment)

    def finalize(self, environment: Environment) -> None:
        """Capture the final state, evaluate, write checks.json and Locust's stats."""
        assert self.run_dir is not None
        started = time.monotonic()
        if self._stages:
            self.mark_stage(None, 0, time.time())
            write_json(self.run_dir / "stages.json", self._stages)
        backend = self.backend()
        settings = self.require_settings()
        for name in self.scenarios:
            finish = getattr(scenario_module(name), "finish", None)
            if finish is None:
                continue
            try:
                finish(backend, settings.options_of(name), self._handles.get(name), HANDOFF_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - the checks judge what the state shows
                log.error("%s: finishing the run failed: %s", name, str(exc).strip().splitlines()[0])
        try:
            conn = self.connect("capture")
            try:
                capture_final(conn, self.run_dir, self.scenarios, self.run_id, backend)
            finally:
                db.close_quietly(conn)
        except Exception as exc:  # noqa: BLE001 - the verdict says what is missing
            log.error("could not capture the final state: %s", str(exc).strip().splitlines()[0])
        self.verdict = evaluate(self.run_dir)
        if self._lost_workers:
            self.verdict["lost_workers"] = self._lost_workers
        self.verdict["counters"] = dict(sorted(self.counters.items()))
        write(self.run_dir, self.verdict)
        self.exit_code = int(self.verdict["exit_code"])
        self._write_locust_stats(environment)
        log.info("verdict of run %s written in %.2f s: exit code %s (%s)", self.run_id,
                 time.monotonic() - started, self.exit_code, self.verdict["meaning"])

    def _collect_worker_histories(self, runner: MasterRunner) -> None:
        """Ask every worker to stop and deliver; wait for each one's final record count."""
        expected = {c.id for c in runner.clients.all}
        runner.send_message("tc_stop", {"run_id": self.run_id})
        deadline = time.monotonic() + HANDOFF_TIMEOUT_S + self.environment_stop_timeout()
        while not expected.issubset(self._done) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self._lost_workers = sorted(expected - set(self._done))
        for worker in self._lost_workers:
            log.error("worker %s delivered no final history count; its in-flight operations stay unknown", worker)

    def environment_stop_timeout(self) -> float:
        return float(self.environment.stop_timeout or 0) if self.environment else 0.0

    def _master_on_batch(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.data.get("run_id") == self.run_id and self._receiver is not None:
            self._receiver.add(msg.data["process"], msg.data["records"])

    def _master_on_done(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.data.get("run_id") == self.run_id:
            if self._receiver is not None and not self._receiver.done(msg.data["process"], msg.data["records"]):
                log.error("worker %s reported %s records but %s arrived; its history stays incomplete",
                          msg.data["process"], msg.data["records"], self._receiver.received.get(msg.data["process"]))
            self._done[msg.node_id] = msg.data

    def _worker_on_stop(self, environment: Environment, msg: Any, **_: Any) -> None:
        runner = environment.runner
        if runner is not None and runner.state != STATE_STOPPED:
            runner.stop()  # fires test_stop here, which closes the history and reports
        else:
            self._worker_finish()

    def _worker_finish(self) -> None:
        self.close_connections()
        if self.history is None:
            return
        count = self.history.close()
        runner = self.environment.runner if self.environment else None
        if isinstance(runner, WorkerRunner):
            runner._send_stats()  # private, but it is how a worker flushes its last request stats
            runner.send_message("tc_history_done", {"run_id": self.run_id, "process": self.process,
                                                    "records": count})

    def _write_locust_stats(self, environment: Environment) -> None:
        import csv

        from locust import stats
        from locust.html import get_html_report

        assert self.run_dir is not None and environment.runner is not None
        try:
            # not stats.save_stats_json: it serialises with get_stripped_report(), which resets the entries
            request_stats = environment.runner.stats
            (self.run_dir / "locust_stats.json").write_bytes(orjson.dumps(
                {"entries": [e.serialize() for e in request_stats.entries.values()],
                 "total": request_stats.total.serialize(), "errors": request_stats.serialize_errors()},
                option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str))
            writer = stats.StatsCSV(environment, stats.PERCENTILES_TO_REPORT)
            with open(self.run_dir / "locust_requests.csv", "w", newline="") as fh:
                writer.requests_csv(csv.writer(fh))
            with open(self.run_dir / "locust_failures.csv", "w", newline="") as fh:
                writer.failures_csv(csv.writer(fh))
            (self.run_dir / "locust.html").write_text(get_html_report(environment, show_download_link=False),
                                                     encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - stats files are a courtesy; the verdict is written
            log.warning("could not write Locust's statistics: %s", exc)

    def on_quitting(self, environment: Environment, **_: Any) -> None:
        if self.is_worker:
            return
        runner = environment.runner
        if self._run_active and runner is not None:  # Ctrl-C / SIGTERM: stop now so the run is finalized
            runner.stop()
        if self.exit_code is not None:
            environment.process_exit_code = self.exit_code

    def on_quit(self, exit_code: int, **_: Any) -> None:
        if self.is_worker:
            return
        if self.verdict is not None:
            print("\n" + render(self.verdict), flush=True)
            for worker in self.verdict.get("lost_workers") or []:
                print(f"lost worker: {worker} (no final history count; its in-flight operations stay unknown)",
                      flush=True)
            counters = self.verdict.get("counters") or {}
            if counters:
                print("counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()), flush=True)
            print(f"run directory: {self.run_dir}", flush=True)
        self._stop_stack()

    def _stop_stack(self) -> None:
        if self.stack is not None:
            try:
                self.stack.down()
            finally:
                self.stack = None

    def _serve_verdict(self) -> Any:
        from flask import jsonify

        return jsonify({"run_id": self.run_id, "active": self._run_active, "counters": dict(self.counters),
                        "verdict": self.verdict})


_runtime: Runtime | None = None


def setup(scenarios: list[str]) -> Runtime:
    """Register toolclash's listeners for *scenarios* (once per process); no I/O."""
    global _runtime
    if _runtime is not None:
        for name in scenarios:
            if name not in _runtime.scenarios:
                _runtime.scenarios.append(name)
        return _runtime
    rt = _runtime = Runtime(list(scenarios))
    events.init_command_line_parser.add_listener(rt.on_parser)
    events.init.add_listener(rt.on_init)
    events.test_start.add_listener(rt.on_test_start)
    events.test_stop.add_listener(rt.on_test_stop)
    events.quitting.add_listener(rt.on_quitting)
    events.quit.add_listener(rt.on_quit)
    events.report_to_master.add_listener(rt.on_report_to_master)
    events.worker_report.add_listener(rt.on_worker_report)
    from users.observe import install  # metrics, exporter and report: listeners that run after these

    install(rt)
    return rt


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("users.runtime.setup() was not called by the locustfile")
    return _runtime
