"""docker-compose.yml is checked without a Docker engine: `docker-compose config` (Debian's 1.29) must accept
it, and what it names must exist here: mounted files, the Dockerfile's sources, the locustfile and every option
of the master's and workers' commands, the ports Prometheus scrapes and Grafana reads. Then what compose would
run is run here: PgBouncer from the very files compose mounts (only the upstream address and the password
changed) in front of the embedded PostgreSQL, with the pool scenario's preflight against it; and the master's
and the worker's commands, with the compose environment's variables pointing at the embedded servers, through
a short ramp to a verdict."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from tests.conftest import LOCUST, ROOT, SERVICE_VARS
from tests.test_observability import free_port

pytestmark = pytest.mark.xdist_group("compose")
"""Under pytest-xdist, one worker runs this module: its module-scoped servers and runs are made once."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    proc = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)  # type: ignore[no-any-return]


def test_images_are_pinned_and_the_stack_is_complete(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "auth-postgres", "pgbouncer", "redis", "clickhouse", "prometheus", "grafana",
            "postgres-exporter", "pgbouncer-exporter", "redis-exporter", "master", "worker"} <= set(services)
    for name, svc in services.items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", (name, image)  # pinned to a version
    assert services["master"]["build"]["context"] == services["worker"]["build"]["context"] == str(ROOT)
    assert services["worker"]["image"] == services["master"]["image"]
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]  # --scale worker=N


def test_no_obsolete_version_key_and_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "version" not in raw  # obsolete in the Compose Specification; compose v2 warns about it
    for name, svc in compose["services"].items():
        assert svc.get("healthcheck", {}).get("test"), name
    master = compose["services"]["master"]["depends_on"]
    assert all(dep["condition"] == "service_healthy" for dep in master.values()), master
    assert compose["services"]["worker"]["depends_on"]["master"]["condition"] == "service_healthy"


def test_mounted_files_exist_in_the_repository(compose: dict[str, Any]) -> None:
    mounts = 0
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = Path(vol["source"] if isinstance(vol, dict) else vol.split(":", 1)[0])
            if name == "master" and source.name == "reports":
                continue  # the run directories, created by the run
            assert source.exists(), (name, source)
            assert ROOT in source.parents, (name, source)
            mounts += 1
    assert mounts >= 5


def test_dockerfile_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm$", text, re.M)
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), src


def _locust_flags() -> set[str]:
    """Every flag Locust accepts with locustfiles/mixed.py loaded (its own and toolclash's), from its parser."""
    code = ("import json, runpy, locust.argument_parser as ap\nfrom locust import events\np = ap.get_parser()\n"
            "runpy.run_path('locustfiles/mixed.py')\nevents.init_command_line_parser.fire(parser=p)\n"
            "print(json.dumps([s for a in p._actions for s in a.option_strings]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    flags = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"--master", "--worker", "--metrics-port", "--stages"} <= flags
    return flags


def test_commands_use_real_options_and_match_the_scrape_targets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    flags = _locust_flags()
    for name in ("master", "worker"):
        command = services[name]["command"]
        assert command[:2] == ["-f", "locustfiles/mixed.py"] and (ROOT / command[1]).is_file()
        unknown = [arg for arg in command if arg.startswith("--") and arg.split("=")[0] not in flags]
        assert not unknown, (name, unknown)
    master = services["master"]["command"]
    metrics_port = master[master.index("--metrics-port") + 1]
    assert master[master.index("--metrics-host") + 1] == "0.0.0.0"
    published = {str(p["target"]) if isinstance(p, dict) else str(p).split(":")[-1]
                 for p in services["master"]["ports"]}
    assert {metrics_port, "8089"} <= published
    assert services["worker"]["command"][services["worker"]["command"].index("--master-host") + 1] == "master"
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prom["scrape_configs"]}
    assert targets["toolclash"] == f"master:{metrics_port}"
    for job, target in targets.items():
        assert target.split(":")[0] in services, (job, target)  # every scrape target is a compose service
    assert "alerts.yml" in prom["rule_files"]
    mounted = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounted
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "--web.listen-address=0.0.0.0:9090" in services["prometheus"]["command"]
    env = services["master"]["environment"]
    for var in ("DATABASE_URL", "AUTH_DATABASE_URL", "PGBOUNCER_URL", "REDIS_URL", "CLICKHOUSE_URL"):
        host = re.sub(r"^\w+://[^@]*@", "", env[var]).split(":")[0]
        assert host in services, (var, host)


# --- what compose would run, run here against the embedded servers ---

PGBOUNCER_INI = ROOT / "compose" / "pgbouncer" / "pgbouncer.ini"


def _mount(vol: Any) -> tuple[str, Path]:
    """(target, source) of a volume as `docker-compose config` prints it (a dict, or "source:target[:mode]")."""
    if isinstance(vol, dict):
        return vol["target"], Path(vol["source"])
    source, target = vol.split(":")[:2]
    return target, Path(source)


def _database(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


def _service_of(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or ""


@pytest.fixture(scope="module")
def compose_pgbouncer(compose: dict[str, Any], stack: dict[str, str]) -> Iterator[str]:
    """Debian's PgBouncer started from compose's own pgbouncer.ini and userlist.txt (the files the pgbouncer
    service mounts), with the upstream `postgres:5432` pointed at the embedded PostgreSQL, its password in the
    userlist, and a free local port; yields its URL, built like compose's PGBOUNCER_URL."""
    mounts = dict(_mount(v) for v in compose["services"]["pgbouncer"]["volumes"])
    assert mounts["/etc/pgbouncer/pgbouncer.ini"] == PGBOUNCER_INI
    pg = urllib.parse.urlsplit(stack["DATABASE_URL"])
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="tc-compose-pgbouncer-"))
    work.chmod(0o755)
    ini = PGBOUNCER_INI.read_text()
    ini = ini.replace("host=postgres port=5432", f"host={pg.hostname} port={pg.port}")
    ini = re.sub(r"(?m)^listen_addr = .*$", "listen_addr = 127.0.0.1", ini)
    ini = re.sub(r"(?m)^listen_port = .*$", f"listen_port = {port}", ini)
    ini = ini.replace("/etc/pgbouncer/userlist.txt", str(work / "userlist.txt"))
    ini += f"logfile = {work / 'pgbouncer.log'}\npidfile = {work / 'pgbouncer.pid'}\n"
    userlist = mounts["/etc/pgbouncer/userlist.txt"].read_text()
    assert userlist.startswith('"toolclash" "')  # the compose user, in plain text (PgBouncer derives SCRAM)
    (work / "userlist.txt").write_text(f'"{pg.username}" "{pg.password}"\n')
    (work / "pgbouncer.ini").write_text(ini)
    for f in work.iterdir():
        f.chmod(0o644)
    cmd = ["/usr/sbin/pgbouncer", "-d", "-q", str(work / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        cmd[1:1] = ["-u", "postgres"]
        shutil.chown(work, "postgres")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    compose_url = compose["services"]["master"]["environment"]["PGBOUNCER_URL"]
    url = urllib.parse.urlsplit(compose_url)._replace(
        netloc=f"{pg.username}:{pg.password}@127.0.0.1:{port}").geturl()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg2.connect(_database(url, "pgbouncer"), connect_timeout=2).close()
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        pid = (work / "pgbouncer.pid").read_text().strip() if (work / "pgbouncer.pid").is_file() else ""
        if pid:
            os.kill(int(pid), signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)


def test_compose_pgbouncer_pools_both_databases_and_passes_the_pool_preflight(compose_pgbouncer: str) -> None:
    from toolclash.backend import Backend
    from toolclash.tools import pool

    for database in ("toolclash", "toolclash_tx"):  # session and transaction mode, through the compose files
        conn = psycopg2.connect(_database(compose_pgbouncer, database), connect_timeout=5)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        conn.close()
    admin = psycopg2.connect(_database(compose_pgbouncer, "pgbouncer"), connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SHOW DATABASES")
        cols = [d[0] for d in cur.description]
        modes = {row[cols.index("name")]: row[cols.index("pool_mode")] for row in cur.fetchall()}
    admin.close()
    assert modes["toolclash_tx"] == "transaction" and modes["toolclash"] == "session", modes
    pool.preflight(Backend({"PGBOUNCER_URL": compose_pgbouncer}, "compose", 5.0))  # raises if not admin


def test_compose_master_and_worker_commands_run_a_ramp(compose: dict[str, Any], stack: dict[str, str],
                                                       compose_pgbouncer: str, tmp_path: Path) -> None:
    """The master's and the worker's command lines and the master's environment, as compose gives them, with
    each URL's compose host replaced by the embedded server of the same variable, ports made free and local,
    and a short headless ramp added so that the run ends by itself."""
    services = compose["services"]
    env_vars = services["master"]["environment"]
    assert set(env_vars) <= set(SERVICE_VARS), env_vars  # the same variables the embedded stack sets
    local = {**stack, "PGBOUNCER_URL": compose_pgbouncer}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOOLCLASH_")) and k not in
           SERVICE_VARS}
    for var, url in env_vars.items():
        assert _service_of(url) in services, (var, url)
        env[var] = local[var]
    assert "environment" not in services["worker"]  # the master forwards the URLs to its workers

    master_port, web_port, metrics_port = free_port(), free_port(), free_port()
    local_args = {"0.0.0.0": "127.0.0.1", "/app/reports": str(tmp_path), "9646": metrics_port, "master": "127.0.0.1"}
    master = [local_args.get(a, a) for a in services["master"]["command"]]
    worker = [local_args.get(a, a) for a in services["worker"]["command"]]
    master += ["--master-bind-port", master_port, "--web-port", web_port, "--headless", "--expect-workers", "1",
               "--stages", "3,6", "--stage-seconds", "3", "--stage-spawn-rate", "10", "--run-id", "compose",
               "--facts-rows", "20000", "--scan-rows", "5000", "--progress-s", "0", "--loglevel", "WARNING"]
    worker += ["--master-port", master_port, "--loglevel", "WARNING"]
    m = subprocess.Popen([LOCUST, *master], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    w = subprocess.Popen([LOCUST, *worker], cwd=ROOT, env={k: v for k, v in env.items() if k not in SERVICE_VARS},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = m.communicate(timeout=180)
        w.communicate(timeout=30)
    finally:
        for p in (m, w):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert m.returncode in (0, 3, 4), f"exit {m.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    verdict = json.loads((tmp_path / "compose" / "checks.json").read_text())
    assert not [c["name"] for c in verdict["checks"] if c["valid"] is False], verdict["checks"]
    assert verdict["history"]["processes"], verdict["history"]
    assert (tmp_path / "compose" / "junit.xml").is_file()
