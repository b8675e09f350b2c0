"""Debian's Prometheus exporters for the servers (PostgreSQL, PgBouncer, Redis), started for a run.

The embedded Prometheus (:mod:`.prometheus`) scrapes each server's exporter at a free 127.0.0.1 port it
records in its configuration; the Locust master reads those targets from Prometheus and starts, with
:class:`ServerExporters`, the exporter of each server the run uses, as the stack's OS user, for the run's
lifetime.
"""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import unquote, urlsplit

from toolclash.metrics import MetricsSetupError, scrape_targets
from toolclash.stack.process import LOOPBACK, resolve_run_as, spawn, stop_child

SERVER_EXPORTERS: dict[str, tuple[str, str]] = {
    "postgres": ("DATABASE_URL", "prometheus-postgres-exporter"),
    "pgbouncer": ("PGBOUNCER_URL", "prometheus-pgbouncer-exporter"),
    "redis": ("REDIS_URL", "prometheus-redis-exporter"),
}
"""Scrape job → (the run's service URL that Debian's exporter for it watches, the exporter's binary)."""


PGBOUNCER_EXPORTER_SHIM = (
    "from prometheus_pgbouncer_exporter import cli, collectors\n"
    "m = collectors.StatsCollector.metrics\n"
    "m['total_query_count'] = m.pop('total_requests')\n"
    "cli.main()\n"
)
"""Runs Debian's prometheus-pgbouncer-exporter (1.7) unchanged but for one column: it reads SHOW STATS's
``total_requests``, which PgBouncer 1.8 renamed ``total_query_count`` (1.18 here), and without it the
exporter dies at startup (KeyError). Same metric name, ``pgbouncer_requests_total``."""


def exporter_command(job: str, binary: str, url: str, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of Debian's exporter for *job* against *url*, listening on 127.0.0.1:*port*.

    Secrets go in the environment (readable by the exporter's own user only), never on the command line.
    """
    env = {"PATH": "/usr/bin:/bin"}
    listen = f"{LOOPBACK}:{port}"
    if job == "postgres":  # 0.11: DATA_SOURCE_NAME
        sep = "&" if "?" in url else "?"
        env["DATA_SOURCE_NAME"] = f"{url}{sep}sslmode=disable"
        return [binary, f"--web.listen-address={listen}", "--log.level=warn", "--disable-settings-metrics"], env
    if job == "redis":  # 1.45 (Go flags): REDIS_ADDR / REDIS_PASSWORD are read like -redis.addr / -redis.password
        parts = urlsplit(url)
        env["REDIS_ADDR"] = f"redis://{parts.hostname}:{parts.port or 6379}"
        if parts.password:
            env["REDIS_PASSWORD"] = unquote(parts.password)
        if parts.username:
            env["REDIS_USER"] = unquote(parts.username)
        return [binary, f"-web.listen-address={listen}", "-set-client-name=false"], env
    # pgbouncer, 1.7 (Python): connects to the admin console (database ``pgbouncer``) as a stats user; libpq
    # takes the password from PGPASSWORD
    parts = urlsplit(url)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    with open(binary, "rb") as fh:  # Debian's entry point: a script of the system's python3
        python = fh.readline().decode().removeprefix("#!").strip() or "/usr/bin/python3"
    return [python, "-c", PGBOUNCER_EXPORTER_SHIM, "--host", LOOPBACK, "--port", str(port), "--pgbouncer-host",
            parts.hostname or LOOPBACK, "--pgbouncer-port", str(parts.port or 6432),
            "--pgbouncer-user", unquote(parts.username or "pgbouncer")], env


class ServerExporters:
    """Debian's server exporters, started for the run where a local Prometheus expects them (job → port)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, prometheus_url: str, urls: dict[str, str]) -> list[str]:
        """Start the exporter of each server in *urls* (the run's ``DATABASE_URL``…) that Prometheus scrapes on
        this host; return what started, e.g. ``["postgres exporter on 127.0.0.1:15123"]``."""
        started = []
        for job, (host, port) in scrape_targets(prometheus_url).items():
            if job not in SERVER_EXPORTERS or host not in (LOOPBACK, "localhost"):
                continue
            var, name = SERVER_EXPORTERS[job]
            if not urls.get(var):
                continue
            binary = shutil.which(name)
            if binary is None:
                self.stop()
                raise MetricsSetupError(f"{name} not found; install it: apt-get install -y {name}  (or `make setup`)")
            argv, env = exporter_command(job, binary, urls[var], port)
            self.procs.append(spawn(argv, env=env, run_as=resolve_run_as()))
            started.append(f"{job} exporter on {LOOPBACK}:{port}")
        return started

    def stop(self) -> None:
        """SIGTERM each exporter, SIGKILL after 5 s; reaped."""
        for proc in self.procs:
            stop_child(proc)
        self.procs = []
