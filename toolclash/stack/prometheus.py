"""The stack's Prometheus (``PROMETHEUS_URL``): Debian's 2.42, configured from the repository's prometheus.yml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from toolclash.stack.daemon import Launched, Service
from toolclash.stack.exporters import SERVER_EXPORTERS
from toolclash.stack.process import LOOPBACK, StackError

REPO_DIR = Path(__file__).resolve().parents[2]


class PrometheusService(Service):
    """A private Prometheus (Debian's 2.42) on a free port with its own data dir.

    Its configuration is ``prometheus/prometheus.yml`` with the ``toolclash`` job pointed at
    ``127.0.0.1:<scrape_port>`` (a port picked free at start and recorded in the state: the Locust
    master reads it from Prometheus's loaded configuration and serves its exporter there), the
    ``postgres``, ``pgbouncer`` and ``redis`` jobs each at another free port (where the master starts
    Debian's exporter for that server against the run's DATABASE_URL, PGBOUNCER_URL, REDIS_URL), the
    compose-only ``clickhouse`` job dropped, and 1-second
    scrape and rule intervals, so that short runs are seen; the alert rules are ``prometheus/alerts.yml``.
    """

    name = "prometheus"
    env_var = "PROMETHEUS_URL"
    title = "Prometheus"
    READY_PATH = "/-/ready"
    SERVER_EXPORTER_JOBS: ClassVar[tuple[str, ...]] = tuple(SERVER_EXPORTERS)
    """Jobs of prometheus.yml kept with a free 127.0.0.1 port: the run starts that exporter there
    (:class:`toolclash.stack.exporters.ServerExporters`)."""
    EXIT_GRACE_S = 0.0  # a child of this process: gone means exited

    @property
    def log_file(self) -> Path:
        return self.dir / "prometheus.log"

    @staticmethod
    def repo_dir() -> Path:
        return REPO_DIR / "prometheus"

    @staticmethod
    def _binary() -> str:
        found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK)
                                               else None)
        if not found:
            raise StackError("prometheus not found; install it: apt-get install -y prometheus  (or `make setup`)")
        return found

    def config(self, scrape_port: int) -> str:
        """The embedded configuration: the repository's file, with this stack's target, rules and intervals."""
        import yaml

        src = self.repo_dir() / "prometheus.yml"
        try:
            conf = yaml.safe_load(src.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise StackError(f"cannot read {src} ({exc}); restore it from git") from exc
        conf["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
        conf["rule_files"] = [str(self.dir / Path(rule).name) for rule in conf.get("rule_files", [])]
        ports = self.state.setdefault("exporter_ports", {})
        jobs = []
        for job in conf["scrape_configs"]:
            name = job["job_name"]
            if name == "toolclash":
                port = scrape_port
            elif name in self.SERVER_EXPORTER_JOBS:
                port = ports.setdefault(name, self.pick_port())
                # the server's own figures: less often, yet twice within a short test run's exporter lifetime
                # (rate() needs two samples: at 5 s a 10 s run sometimes left the server panels empty)
                job["scrape_interval"] = job["scrape_timeout"] = "2s"
            else:
                continue  # a compose-only job
            job["static_configs"] = [{"targets": [f"{LOOPBACK}:{port}"]}]
            jobs.append(job)
        conf["scrape_configs"] = jobs
        return yaml.safe_dump(conf, sort_keys=False)

    def owns(self, pid: int, cmdline: bytes) -> bool:
        return os.fsencode(f"--storage.tsdb.path={self.dir / 'data'}") in cmdline.split(b"\0")

    def url(self, *, masked: bool = False) -> str | None:
        port = self.state.get("port")
        return f"http://{LOOPBACK}:{port}" if port else None

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["settings"] = {"scrape_port": self.state.get("scrape_port")} if out["running"] else {}
        return out

    def prepare(self, deadline: float) -> None:
        self._binary()
        self.ctx.makedir(self.dir)
        self.ctx.makedir(self.dir / "data")
        for rule in ("alerts.yml",):
            self.ctx.write_file(self.dir / rule, (self.repo_dir() / rule).read_text(encoding="utf-8"), 0o644)
        scrape_port = self.state.get("scrape_port") or self.pick_port()
        self.ctx.write_file(self.dir / "prometheus.yml", self.config(scrape_port), 0o644)
        self.state.update(scrape_port=scrape_port, log=str(self.log_file))

    def configure(self, port: int) -> None:
        self.state["port"] = port  # on the command line (launch)

    def launch(self, deadline: float) -> Launched:
        """Prometheus stays in the foreground: a child of this process, its output appended to its log."""
        argv = [self._binary(), f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address={LOOPBACK}:{self.state['port']}",
                "--storage.tsdb.retention.time=7d", "--web.enable-lifecycle"]
        with open(self.log_file, "ab") as logfh:
            proc = self.ctx.spawn(argv, cwd=self.dir, output=logfh)
        self.state["pid"] = proc.pid
        self.ctx.save()
        return Launched(True, "", "exited")

    def probe(self) -> bool:
        """``GET /-/ready`` answers 200."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url()}{self.READY_PATH}", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, ValueError) as exc:
            self.last_probe_error = str(exc)[:200]
            return False
