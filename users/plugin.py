"""toolclash inside Locust: a locustfile (the entry point) calls :func:`setup` with its scenarios and the judge
it imported (see ``locustfiles/credits.py``); this package never imports the verdict's code itself.

:func:`setup` only adds event listeners (nothing connects, spawns or reads at import: Locust imports
locustfiles before it forks). The process's role is chosen once, at Locust's ``init``:

* **local** (one process) and **master** — ``init``: validate the options (a bad one: one line, exit 2), start
  the embedded stack for the services not given by URL, preflight (else one line, exit 2). ``test_start``:
  open the run (:class:`toolclash.run.Run`: directory, reset, helpers) and pass run id, directory and URLs to
  workers inside the parsed options that Locust forwards with every spawn message. ``test_stop``: collect
  the histories (a master from its workers, see ``users/handoff.py``), close the run (helpers finished,
  final state captured) and call the judge. ``quitting``: the exit code.
  A master lists itself and every worker that takes part in ``processes.json`` (as each connects; the worker
  says its process name, ``tc_process``): a worker whose history never arrives makes the verdict unknown.
* **worker** — ``test_start``: take the run from the forwarded options, write the history to the master.
  ``test_stop`` (or the master's ``tc_stop``): deliver the rest and the final count.
"""

from __future__ import annotations

import atexit
import csv
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import orjson
from locust import events
from locust.env import Environment
from locust.runners import STATE_STOPPED, MasterRunner, WorkerRunner

from toolclash import columnar, db
from toolclash.history import HistoryWriter, process_name
from toolclash.metrics import MetricsSetupError
from toolclash.nemesis.spec import NemesisError
from toolclash.option import SettingsError, mask_url
from toolclash.run import Run, RunError, new_run_id, preflight, process_exit_code, provide_services
from toolclash.scenario import get
from toolclash.settings import OPTIONS, Settings
from users import handoff
from users.barrier import Barrier
from users.faults import Faults, plan_of
from users.observe import Observer
from users.progress import ProgressPrinter
from users.runtime import Runtime, install

log = logging.getLogger("toolclash")

EXIT_USAGE = 2
VERDICT_CODES = (0, 1, 2, 3, 4)
Judge = Callable[..., dict[str, Any]]


def fail_fast(message: str) -> None:
    """Could not run: one line on stderr, exit 2, no traceback."""
    sys.stderr.write(f"toolclash: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_USAGE)


class Plugin:
    """The listeners of one Locust process."""

    def __init__(self, rt: Runtime, judge: Judge | None) -> None:
        self.rt = rt
        self.judge = judge
        self.observer = Observer(rt)
        self.faults = Faults(self)
        self.observer.sources.append(self.faults.gauges)
        self.run: Run | None = None
        self.collector: handoff.Collector | None = None
        self.lost_workers: list[str] = []
        self.progress: ProgressPrinter | None = None
        self.worker_names: dict[str, str] = {}
        """Locust client id → the worker's process name (each worker says it: ``tc_process``)."""

    # --- every process

    def on_parser(self, parser: Any, **_: Any) -> None:
        scenarios = [get(name) for name in self.rt.scenarios]
        # "" first: the web UI's select shows the first choice, and "" means each scenario's own default
        # (without it the form would preselect the first strategy listed, e.g. a known-bad one).
        choices = {"strategy": ("", *dict.fromkeys(st for sc in scenarios for st in sc.strategies)),
                   "fault": ("none", *dict.fromkeys(f for sc in scenarios for f in sc.faults))}
        declared = {o.name: o for sc in scenarios for o in sc.options}  # scenario options, deduplicated
        for opt in (*OPTIONS, *declared.values()):
            if opt.locust_builtin:
                continue
            kwargs: dict[str, Any] = {"type": opt.type, "default": opt.default, "help": opt.help,
                                      "env_var": opt.env, "include_in_web_ui": True}
            if opt.choices or opt.name in choices:
                kwargs["choices"] = opt.choices or choices[opt.name]
            if opt.is_secret:
                kwargs["is_secret"] = True
            parser.add_argument(opt.flag, **kwargs)
        # toolclash's verdict gives the exit code; Locust's "any failed request -> 1" would call every business
        # rejection an anomaly (exit 1). Its option still applies when set (see exit_code()).
        parser.set_defaults(exit_code_on_error=0)

    def on_init(self, environment: Environment, runner: Any, web_ui: Any = None, **_: Any) -> None:
        rt = self.rt
        rt.environment = environment
        db.patch_gevent()
        # the history writer's one-time cost (pyarrow's first conversion imports pandas: about 1 s, more on a busy
        # machine) is paid here, before Locust's --run-time clock starts, not inside the run at test_start
        columnar.warm_up()
        self.faults.on_init(environment, runner, web_ui)
        if isinstance(runner, WorkerRunner):
            rt.role, rt.process = "worker", process_name(runner.worker_index)
            runner.register_message("tc_stop", self._worker_on_stop, concurrent=True)
            runner.register_message("tc_barrier_release", self._worker_on_release)
            runner.send_message("tc_process", {"process": rt.process})  # the master lists it by this name
            return
        rt.role, rt.process = ("master" if isinstance(runner, MasterRunner) else "local"), process_name()
        try:
            rt.settings = Settings.from_mapping(vars(environment.parsed_options), rt.scenarios)
            existing = Path(rt.settings.reports_dir) / rt.settings.run_id
            if rt.settings.run_id and existing.exists():
                raise RunError(f"run directory {existing} exists already; choose another --run-id or leave it "
                               "empty for a fresh one")
            # a non-durable embedded server loses acknowledged writes when crashed: a nemesis that crashes one
            # gets durable servers, so that what the checks find is the backend's doing, not the stack's
            durable = bool(plan_of(rt.settings).losing_writes())
            rt.urls, rt.stack = provide_services(rt.settings, durable=durable)
            atexit.register(self.stop_stack)  # also on an abnormal exit
            preflight(rt.settings, rt.urls)
            self.observer.start_exporter(rt.settings)
            self.faults.prepare(rt.settings)  # the proxy, and the URLs through it, before any agent starts
        except (SettingsError, RunError, MetricsSetupError, NemesisError) as exc:
            self.stop_stack()
            fail_fast(str(exc))
        set_agent_host(rt.urls)
        on_error = int(getattr(environment.parsed_options, "exit_code_on_error", 0) or 0)
        if on_error in VERDICT_CODES[1:]:
            log.warning("--exit-code-on-error %d is also one of toolclash's verdict codes; a valid run with failed "
                        "requests would exit %d too. Choose a code above 4 to tell them apart", on_error, on_error)
        if isinstance(runner, MasterRunner):
            runner.register_message("tc_history_batch", self._master_on_batch)
            runner.register_message("tc_history_done", self._master_on_done)
            runner.register_message("tc_barrier", self._master_on_barrier)
            runner.register_message("tc_process", self._master_on_process)
            environment.events.worker_connect.add_listener(self._master_on_connect)
        if web_ui is not None:
            web_ui.app.add_url_rule("/toolclash/verdict", "toolclash_verdict", self._serve_verdict)
            from users.webui import install as install_tab

            install_tab(web_ui, self.observer)

    def on_test_start(self, environment: Environment, **_: Any) -> None:
        self.observer.on_test_start()
        if self.rt.is_worker:
            self._worker_start(environment)
        else:
            self._start(environment)

    def on_test_stopping(self, environment: Environment, **_: Any) -> None:
        if not self.rt.is_worker and self.rt.run_active:
            self.faults.heal()  # before the workers are waited for: a partitioned one must be reachable again

    def on_test_stop(self, environment: Environment, **_: Any) -> None:
        if self.rt.is_worker:
            self._worker_finish()
        elif self.rt.run_active:
            self._stop(environment)

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        data["toolclash_counters"] = self.rt.counters.take_delta()
        self.observer.on_report_to_master(data)

    def on_worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        self.rt.counters.merge(data.get("toolclash_counters"))
        self.observer.on_worker_report(data)

    def on_quitting(self, environment: Environment, **_: Any) -> None:
        if self.rt.is_worker:
            return
        runner = environment.runner
        if self.rt.run_active and runner is not None:  # Ctrl-C / SIGTERM: stop now so the run is finalized
            runner.stop()
        self.observer.on_quitting()
        if self.rt.exit_code is not None:
            environment.process_exit_code = exit_code(self.rt.exit_code, runner, environment.parsed_options)

    def on_quit(self, exit_code: int, **_: Any) -> None:
        rt = self.rt
        if rt.is_worker:
            return
        render = getattr(self.judge, "render", None)
        if rt.verdict is not None and render is not None:
            print("\n" + render(rt.verdict), flush=True)
            for worker in rt.verdict.get("lost_workers") or []:
                print(f"lost worker: {worker} (no final history count; its in-flight operations stay unknown)",
                      flush=True)
            counters = rt.verdict.get("counters") or {}
            if counters:
                print("counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()), flush=True)
            print(f"run directory: {rt.run_dir}", flush=True)
            if rt.run_dir is not None and (rt.run_dir / "report.html").is_file():
                print(f"report: {rt.run_dir / 'report.html'}", flush=True)
        self.observer.stop()
        self.stop_stack()

    # --- local and master

    def _start(self, environment: Environment) -> None:
        rt = self.rt
        rt.history, self.collector, self.lost_workers = None, None, []
        try:  # the web UI's form may have changed the options since init
            rt.settings = Settings.from_mapping(vars(environment.parsed_options), rt.scenarios)
        except SettingsError as exc:
            self._abort(environment, str(exc))
            return
        settings = rt.settings
        rt.urls.update(settings.service_urls())
        try:
            self.faults.prepare(settings)
        except NemesisError as exc:
            self._abort(environment, str(exc))
            return
        run_id = settings.run_id or None
        if rt.run_dir is not None and settings.run_id and rt.run_dir.name == settings.run_id:  # web UI: once more
            run_id = f"{settings.run_id}-{new_run_id()}"
        opts = environment.parsed_options
        meta = {"process": rt.process,
                "locust": {"users": getattr(opts, "num_users", None), "spawn_rate": getattr(opts, "spawn_rate", None),
                           "run_time": getattr(opts, "run_time", None), "headless": getattr(opts, "headless", None),
                           "processes": getattr(opts, "processes", None), "stop_timeout": environment.stop_timeout,
                           "distributed": rt.role == "master"}}
        rt.verdict, rt.exit_code = None, None
        rt.counters.clear()
        try:
            self.run = Run.open(settings, rt.urls, run_id=run_id, meta=meta, process=rt.process, role=rt.role,
                                records=rt.role == "local")
        except RunError as exc:
            self._abort(environment, str(exc))
            return
        rt.run_id, rt.run_dir = self.run.run_id, self.run.dir
        self.faults.start(self.run)
        runner = environment.runner
        assert runner is not None
        if isinstance(runner, MasterRunner):  # every connected worker takes part (a lost one: verdict unknown)
            for client in list(runner.clients.all):
                self.run.roster.join(client.id, process=self.worker_names.get(client.id), role="worker")
        rt.barriers = Barrier(parties=self._parties, broadcast_release=(
            (lambda name: runner.send_message("tc_barrier_release", {"run_id": rt.run_id, "name": name}))
            if rt.role == "master" else None))
        settings_data = {k: v for k, v in settings.values().items() if not k.endswith("_url")}
        vars(opts).update(tc_run_id=rt.run_id, tc_run_dir=str(rt.run_dir), tc_urls=dict(rt.urls),
                          tc_settings=settings_data)
        rt.run_active = True
        self._start_progress(environment)
        if rt.role == "master":
            self.collector = handoff.Collector(rt.run_id, rt.run_dir / "history")
        else:
            rt.history = HistoryWriter(rt.run_dir / "history", run_id=rt.run_id, process=rt.process).start()

    def _start_progress(self, environment: Environment) -> None:
        """Headless: one progress line every --progress-s seconds (users/progress.py)."""
        every = self.rt.require_settings().progress_s
        if every > 0 and getattr(environment.parsed_options, "headless", False):
            runner = environment.runner
            self.progress = ProgressPrinter(self.rt, self.observer.registry, every,
                                            lambda: runner.user_count if runner is not None else None).start()

    def _parties(self) -> int:
        settings = self.rt.require_settings()
        if settings.sync_parties:
            return settings.sync_parties
        opts = self.rt.environment.parsed_options if self.rt.environment else None
        return int(getattr(opts, "num_users", None) or 1)

    def _abort(self, environment: Environment, message: str) -> None:
        """The run cannot start: one line, exit code 2; headless quits, the web UI stays up."""
        sys.stderr.write(f"toolclash: {message}\n")
        sys.stderr.flush()
        self.rt.exit_code = EXIT_USAGE
        runner = environment.runner
        if runner is not None:
            gevent.spawn(runner.quit if getattr(environment.parsed_options, "headless", False) else runner.stop)

    def _stop(self, environment: Environment) -> None:
        rt = self.rt
        self.faults.heal()  # every fault healed before the histories are collected and the final state captured
        rt.run_active = False
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.collector is not None:
            self.lost_workers = self.collector.collect(environment.runner, float(environment.stop_timeout or 0),
                                                       dead=self.faults.dead_workers())
        elif rt.history is not None:
            rt.history.close()
        rt.close_connections()
        self.faults.stopped()
        assert self.run is not None and rt.run_dir is not None
        if rt.stages():
            rt.mark_stage(None, 0, time.time())
        self.run.close(stages=rt.stages())
        rt.clear_stages()  # written; a later run (web UI) starts without them (a ramp marks its own afresh)
        notes: dict[str, Any] = {"counters": dict(sorted(rt.counters.items()))}
        if self.lost_workers:
            notes["lost_workers"] = self.lost_workers
        if self.judge is not None:
            _write_locust_stats(environment, rt.run_dir)
            report = rt.require_settings().report != "none"
            prepare = getattr(self.judge, "prepare", None)
            if prepare is not None and report:  # what must happen on this thread first (e.g. start a subprocess)
                prepare()
            # in a real OS thread of gevent's pool: the web UI and worker heartbeats go on meanwhile
            rt.verdict = gevent.get_hub().threadpool.apply(self.judge, (rt.run_dir,),
                                                           {"notes": notes, "report": report})
            rt.exit_code = int(rt.verdict["exit_code"])
            self.observer.on_verdict(rt.verdict, rt.run_dir)

    def _master_on_connect(self, client_id: str, **_: Any) -> None:
        if self.rt.run_active and self.run is not None:  # joins the run under way
            self.run.roster.join(client_id, process=self.worker_names.get(client_id), role="worker")

    def _master_on_process(self, environment: Environment, msg: Any, **_: Any) -> None:
        self.worker_names[msg.node_id] = str(msg.data["process"])
        if self.run is not None:
            self.run.roster.name(msg.node_id, str(msg.data["process"]))

    def _master_on_batch(self, environment: Environment, msg: Any, **_: Any) -> None:
        if self.collector is not None:
            self.collector.on_batch(msg)
            if self.run is not None and msg.data.get("run_id") == self.run.run_id:
                self.run.roster.name(msg.node_id, str(msg.data["process"]))

    def _master_on_done(self, environment: Environment, msg: Any, **_: Any) -> None:
        if self.collector is not None:
            self.collector.on_done(msg)

    def _master_on_barrier(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.data.get("run_id") == self.rt.run_id and self.rt.barriers is not None:
            self.rt.barriers.arrive(msg.data["name"])

    def _serve_verdict(self) -> Any:
        from flask import jsonify

        rt = self.rt
        return jsonify({"run_id": rt.run_id, "active": rt.run_active, "counters": dict(rt.counters.items()),
                        "verdict": rt.verdict})

    def stop_stack(self) -> None:
        self.faults.close()
        if self.rt.stack is not None:
            try:
                self.rt.stack.down()
            finally:
                self.rt.stack = None

    # --- worker

    def _worker_start(self, environment: Environment) -> None:
        rt = self.rt
        opts = vars(environment.parsed_options)
        rt.settings = Settings.from_mapping(opts["tc_settings"], rt.scenarios)
        rt.run_id, rt.urls = opts["tc_run_id"], dict(opts["tc_urls"])
        rt.run_dir = Path(opts["tc_run_dir"])  # the master's; a worker never writes there
        runner = environment.runner
        assert runner is not None
        runner.send_message("tc_process", {"process": rt.process})  # again: the master may have missed the first
        rt.barriers = Barrier(parties=lambda: 0, send_arrival=lambda name: runner.send_message(
            "tc_barrier", {"run_id": rt.run_id, "name": name}))
        rt.history = handoff.worker_writer(runner, rt.run_id, rt.process)
        self.faults.worker_hello(runner)

    def _worker_on_stop(self, environment: Environment, msg: Any, **_: Any) -> None:
        runner = environment.runner
        if runner is not None and runner.state != STATE_STOPPED:
            runner.stop()  # fires test_stop here, which closes the history and reports
        else:
            self._worker_finish()

    def _worker_on_release(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.data.get("run_id") == self.rt.run_id and self.rt.barriers is not None:
            self.rt.barriers.release(msg.data["name"])

    def _worker_finish(self) -> None:
        rt = self.rt
        rt.close_connections()
        if rt.history is None:
            return
        count = rt.history.close()
        runner = rt.environment.runner if rt.environment else None
        if isinstance(runner, WorkerRunner):
            handoff.worker_done(runner, rt.run_id, rt.process, count)


def exit_code(verdict_code: int, runner: Any, options: Any) -> int:
    """The process's exit code (see :func:`toolclash.run.process_exit_code`)."""
    failed = runner is not None and bool(getattr(runner, "errors", None) or getattr(runner, "exceptions", None))
    return process_exit_code(verdict_code, on_error=int(getattr(options, "exit_code_on_error", 0) or 0),
                             failed_requests=failed)


def set_agent_host(urls: dict[str, str]) -> None:
    """Every agent kind's ``host`` is the backend it loads, masked (Locust's web UI shows it, and warns when a
    User class has none)."""
    from users.agent import Agent

    url = urls.get("DATABASE_URL") or next(iter(urls.values()), "")
    Agent.host = mask_url(url) if url else "embedded"


def _write_locust_stats(environment: Environment, run_dir: Any) -> None:
    """Locust's own statistics next to the verdict: JSON, CSV and its HTML report."""
    from locust import stats
    from locust.html import get_html_report

    try:
        # not stats.save_stats_json: it serialises with get_stripped_report(), which resets the entries
        assert environment.runner is not None
        request_stats = environment.runner.stats
        (run_dir / "locust_stats.json").write_bytes(orjson.dumps(
            {"entries": [e.serialize() for e in request_stats.entries.values()],
             "total": request_stats.total.serialize(), "errors": request_stats.serialize_errors()},
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str))
        writer = stats.StatsCSV(environment, stats.PERCENTILES_TO_REPORT)
        with open(run_dir / "locust_requests.csv", "w", newline="") as fh:
            writer.requests_csv(csv.writer(fh))
        with open(run_dir / "locust_failures.csv", "w", newline="") as fh:
            writer.failures_csv(csv.writer(fh))
        (run_dir / "locust.html").write_text(get_html_report(environment, show_download_link=False), encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - stats files are a courtesy; the verdict is written
        log.warning("could not write Locust's statistics: %s", exc)


_plugin: Plugin | None = None


def setup(scenarios: list[str], judge: Judge | None = None) -> Runtime:
    """Register toolclash's listeners for *scenarios* (once per process; later calls add scenarios); no I/O.

    *judge* ``(run_dir, notes=…) -> verdict`` judges the run when it stops (the locustfile passes
    :func:`checks.judge.judge`); without one the run is captured but not judged.
    """
    global _plugin
    rt, created = install(scenarios)
    if not created:
        if judge is not None and _plugin is not None:
            _plugin.judge = judge
        return rt
    plugin = _plugin = Plugin(rt, judge)
    events.init_command_line_parser.add_listener(plugin.on_parser)
    events.init.add_listener(plugin.on_init)
    events.test_start.add_listener(plugin.on_test_start)
    events.test_stopping.add_listener(plugin.on_test_stopping)
    events.test_stop.add_listener(plugin.on_test_stop)
    events.quitting.add_listener(plugin.on_quitting)
    events.quit.add_listener(plugin.on_quit)
    events.report_to_master.add_listener(plugin.on_report_to_master)
    events.worker_report.add_listener(plugin.on_worker_report)
    events.request.add_listener(plugin.observer.on_request)
    return rt
