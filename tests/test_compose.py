"""docker-compose.yml is checked without a Docker engine: `docker-compose config` (Debian's 1.29) must accept
it, and what it names must exist here: mounted files, the Dockerfile's sources, the locustfile and every option
of the master's and workers' commands, the ports Prometheus scrapes and Grafana reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT


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
    assert services["master"]["build"]["context"] == str(ROOT)
    assert services["worker"]["image"] == services["master"]["image"]
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]  # --scale worker=N


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
