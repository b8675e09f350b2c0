"""The nemesis, the emergency stop and the circuit breakers' gauges inside Locust.

On the master (or the single process): :class:`Faults` prepares the nemesis at init (a bad schedule: one line,
exit 2, before any agent starts), starts it once the run is open, heals every fault at ``test_stopping`` /
``test_stop`` (before the histories are collected and the final state captured) and on every way out; it
watches ``--abort-on`` and serves the web UI's stop-now button (``POST /toolclash/stop``). An emergency stop
writes ``abort.json`` (the reason the verdict gives), tells every worker to stop at once (``tc_abort``: its
users are killed without waiting for ``--stop-timeout``), heals the faults and stops the run.

On a worker: it says who it is (``tc_worker``: index, pid, host) so that a worker kill can find it, stops at
once on ``tc_abort`` and kills itself on ``tc_die`` (a worker kill of a worker on another host).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import gevent
from locust.runners import STATE_MISSING, STATE_STOPPED, MasterRunner, WorkerRunner

from toolclash.nemesis.abort import AbortMonitor, parse_abort
from toolclash.nemesis.scheduler import Nemesis
from toolclash.nemesis.spec import NemesisError, Plan, load
from toolclash.run import Run, write_json
from toolclash.settings import Settings
from toolclash.stack.process import is_zombie, pid_alive, proc_cmdline

log = logging.getLogger("toolclash")

ABORT_FILE = "abort.json"
STOP_BUTTON = """<button id="toolclash-stop-now" title="toolclash: stop every worker now, heal the faults, judge"
 style="position:fixed;right:18px;bottom:18px;z-index:99999;background:#b00020;color:#fff;border:0;
 border-radius:6px;padding:10px 16px;font:600 14px system-ui,sans-serif;cursor:pointer;box-shadow:0 2px 6px #0006"
 >Stop now</button><script>(function(){var b=document.getElementById('toolclash-stop-now');
b.onclick=function(){b.disabled=true;b.textContent='Stopping…';fetch('/toolclash/stop',{method:'POST'})
.then(function(r){return r.json()}).then(function(j){b.textContent=j.stopping?'Stopped: judging…':'No run under way';
setTimeout(function(){b.disabled=false;b.textContent='Stop now'},5000)})};})();</script>"""


def plan_of(settings: Settings) -> Plan:
    """The schedule of ``--nemesis`` and ``--nemesis-file`` (:class:`NemesisError`, one line, when bad)."""
    return load(settings.nemesis, settings.nemesis_file)


class WorkerKiller:
    """Worker kills for the nemesis, on the master: SIGKILL of the worker's process when it runs on this machine
    (seen gone in ``/proc``), else a ``tc_die`` message it obeys; then the master is seen counting it missing."""

    def __init__(self, runner: MasterRunner) -> None:
        self.runner = runner
        self.workers: dict[str, dict[str, Any]] = {}
        """Client id → what the worker said of itself (index, pid, host)."""
        self.killed: dict[str, str] = {}
        """Target → client id of the worker killed for it."""

    def on_hello(self, environment: Any, msg: Any, **_: Any) -> None:
        self.workers[msg.node_id] = dict(msg.data)

    def _pick(self, target: str) -> str:
        indexes = {cid: idx for cid, idx in self.runner.worker_indexes.items()
                   if cid in self.runner.clients and self.runner.clients[cid].state != STATE_MISSING}
        if not indexes:
            raise RuntimeError("no worker is connected")
        if target == "worker":
            return max(indexes, key=lambda cid: indexes[cid])
        wanted = int(target.removeprefix("worker")) - 1
        for cid, idx in indexes.items():
            if idx == wanted:
                return cid
        raise RuntimeError(f"no {target} (worker index {wanted}) is connected; connected: "
                           f"{', '.join(f'worker{i + 1}' for i in sorted(indexes.values()))}")

    def kill(self, target: str) -> str:
        cid = self._pick(target)
        info = self.workers.get(cid) or {}
        pid, host = info.get("pid"), info.get("host")
        self.killed[target] = cid
        index = self.runner.worker_indexes.get(cid)
        if pid and host == socket.gethostname() and b"locust" in (proc_cmdline(int(pid)) or b""):
            os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while pid_alive(int(pid)) and not is_zombie(int(pid)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {target} (pid {pid}) still runs 10 s after SIGKILL")
                time.sleep(0.02)
            return f"SIGKILL of worker{(index or 0) + 1} (pid {pid}); its process is gone"
        self.runner.send_message("tc_die", {}, client_id=cid)
        return f"worker{(index or 0) + 1} (pid {pid} on {host}) told to SIGKILL itself"

    def gone(self, target: str, timeout: float) -> str:
        cid = self.killed.get(target)
        started = time.monotonic()
        while cid is not None and time.monotonic() - started < timeout:
            client = self.runner.clients.get(cid)
            if client is None or client.state == STATE_MISSING:
                return f"the master counted it missing after {time.monotonic() - started:.1f} s"
            time.sleep(0.1)
        raise RuntimeError(f"the master still counts {target} after {timeout:g} s")

    def dead(self) -> set[str]:
        return set(self.killed.values())


class Faults:
    """The nemesis and the emergency stop of one Locust process (see the module's documentation)."""

    def __init__(self, plugin: Any) -> None:
        self.plugin = plugin
        self.rt = plugin.rt
        self.nemesis: Nemesis | None = None
        self.killer: WorkerKiller | None = None
        self.monitor: AbortMonitor | None = None
        self.aborted: dict[str, Any] | None = None
        self._prepared_for: tuple[Any, ...] | None = None
        self.real_urls: dict[str, str] = {}

    # -- master or single process -----------------------------------------------------------------------

    def on_init(self, environment: Any, runner: Any, web_ui: Any) -> None:
        """Register the messages (worker kills, the emergency stop) and the web UI's stop-now button."""
        if isinstance(runner, WorkerRunner):
            runner.register_message("tc_abort", self._worker_on_abort)
            runner.register_message("tc_die", self._worker_on_die)
            return
        if isinstance(runner, MasterRunner):
            self.killer = WorkerKiller(runner)
            runner.register_message("tc_worker", self.killer.on_hello)
        if web_ui is not None:
            self._install_web(web_ui)

    def prepare(self, settings: Settings) -> None:
        """Build the nemesis for *settings* (again only when its options changed); the run's URLs then go through
        the proxy where a fault needs it. :class:`NemesisError` (one line) when this run cannot apply it."""
        key = (settings.nemesis, settings.nemesis_file, settings.nemesis_hosts,
               tuple(sorted(settings.service_urls().items())))
        if key == self._prepared_for:
            if self.nemesis is not None:
                self.rt.urls.update(self.nemesis.urls)
            return
        self.close()
        plan = plan_of(settings)
        parse_abort(settings.abort_on)
        if plan:
            real = dict(self.rt.urls)
            self.nemesis = Nemesis.prepare(plan, real, role=self.rt.role, hosts=settings.nemesis_hosts,
                                           killer=self.killer)
            self.real_urls = real
            self.rt.urls.update(self.nemesis.urls)
        self._prepared_for = key

    def start(self, run: Run) -> None:
        """The run is open: faults from now on, and the ``--abort-on`` watch."""
        self.aborted = None
        if self.killer is not None:
            self.killer.killed.clear()
        if self.nemesis is not None:
            self.nemesis.start(run.dir)
        settings = run.settings
        conditions = parse_abort(settings.abort_on)
        if conditions:
            self.monitor = AbortMonitor(conditions, urls=self.rt.urls, counters=lambda: dict(self.rt.counters.items()),
                                        trigger=self._abort_on,
                                        invariants=run.broken_invariant).start()

    def heal(self) -> None:
        """Stop watching, heal every active fault (blocks until healed or recorded as not)."""
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        if self.nemesis is not None:
            try:
                self.nemesis.stop()
            except Exception as exc:  # noqa: BLE001 - every way out must go on
                log.error("nemesis: healing failed: %s", exc)

    def close(self) -> None:
        """Heal, then the proxy ends and the namespaces lose toolclash's rules (on every way out)."""
        self.heal()
        if self.nemesis is not None:
            with contextlib.suppress(Exception):
                self.nemesis.close()
            self.rt.urls.update(self.real_urls)
            self.nemesis = None
        self._prepared_for = None

    def dead_workers(self) -> set[str]:
        return self.killer.dead() if self.killer is not None else set()

    def gauges(self) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        out = list(self.nemesis.gauges()) if self.nemesis is not None else []
        out.append(("toolclash_run_aborted", (), 1.0 if self.aborted else 0.0))
        return out

    # -- the emergency stop ---------------------------------------------------------------------------

    def trigger(self, reason: str, by: str) -> bool:
        """Stop the run now (once): every worker within about a second, faults healed, the verdict with *reason*.
        False when no run is under way."""
        rt = self.rt
        if not rt.run_active or self.aborted is not None or rt.run_dir is None:
            return False
        self.aborted = {"reason": reason, "by": by, "at": time.time()}
        write_json(Path(rt.run_dir) / ABORT_FILE, self.aborted)
        log.error("toolclash: stopping the run now (%s): %s", by, reason)
        gevent.spawn(self._stop_now)
        return True

    def _abort_on(self, reason: str) -> None:
        self.trigger(reason, "abort-on")

    def _stop_now(self) -> None:
        env = self.rt.environment
        runner = env.runner
        stop_timeout, env.stop_timeout = env.stop_timeout, 0  # users are killed at once, not given time to finish
        if isinstance(runner, MasterRunner):
            runner.send_message("tc_abort", {"run_id": self.rt.run_id})
        healing = gevent.spawn(self.heal)
        try:
            if getattr(env.parsed_options, "headless", False):
                runner.quit()
            else:
                runner.stop()
            healing.join()
        finally:
            env.stop_timeout = stop_timeout  # the web UI's next run gets the usual --stop-timeout

    def stopped(self) -> None:
        """Every worker's history arrived (or was given up): how long the stop took goes to ``abort.json``."""
        if self.aborted is not None and self.rt.run_dir is not None:
            self.aborted["stopped_s"] = round(time.time() - self.aborted["at"], 3)
            write_json(Path(self.rt.run_dir) / ABORT_FILE, self.aborted)

    def _install_web(self, web_ui: Any) -> None:
        from flask import jsonify, request

        def stop_now() -> Any:
            stopping = self.trigger("stop now pressed in the web UI", "stop-now")
            return jsonify({"stopping": stopping, "run_id": self.rt.run_id,
                            "reason": (self.aborted or {}).get("reason")})

        web_ui.app.add_url_rule("/toolclash/stop", "toolclash_stop", stop_now, methods=["POST"])

        @web_ui.app.after_request
        def add_button(response: Any) -> Any:
            if request.path == "/" and response.mimetype == "text/html" and not response.direct_passthrough:
                with contextlib.suppress(Exception):  # never break Locust's own page
                    page = response.get_data(as_text=True)
                    if "</body>" in page:
                        response.set_data(page.replace("</body>", STOP_BUTTON + "</body>", 1))
            return response

    # -- worker ---------------------------------------------------------------------------------------

    def worker_hello(self, runner: Any) -> None:
        runner.send_message("tc_worker", {"index": runner.worker_index, "pid": os.getpid(),
                                          "host": socket.gethostname()})

    def _worker_on_abort(self, environment: Any, msg: Any, **_: Any) -> None:
        environment.stop_timeout = 0
        runner = environment.runner
        if runner is not None and runner.state != STATE_STOPPED:
            gevent.spawn(runner.stop)

    def _worker_on_die(self, environment: Any, msg: Any, **_: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["ABORT_FILE", "Faults", "NemesisError", "WorkerKiller", "plan_of"]
