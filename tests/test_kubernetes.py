"""deploy/kubernetes/: every manifest validates (strictly: no unknown field) against Kubernetes' own schemas with
kubernetes-validate, and the pieces fit: Locust accepts every argument, the workers find the master's Service,
the master waits for as many workers as run, and the Secret holds only the variables toolclash reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT, SERVICE_VARS
from tests.test_compose import _locust_flags

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def _docs() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    job = _by_kind("Job", "toolclash-worker")
    job["spec"]["template"]["spec"]["containers"][0]["argz"] = job["spec"]["template"]["spec"]["containers"][0].pop(
        "args")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)


def test_master_workers_and_secret_fit_together() -> None:
    master, workers = _by_kind("Job", "toolclash-master"), _by_kind("Job", "toolclash-worker")
    service, secret = _by_kind("Service", "toolclash-master"), _by_kind("Secret", "toolclash-backend")
    m_pod, w_pod = master["spec"]["template"], workers["spec"]["template"]
    m_args, w_args = m_pod["spec"]["containers"][0]["args"], w_pod["spec"]["containers"][0]["args"]
    flags = _locust_flags()
    for args in (m_args, w_args):
        assert args[:2] == ["-f", "locustfiles/mixed.py"] and (ROOT / args[1]).is_file()
        assert not [a for a in args if a.startswith("--") and a not in flags], args
    assert w_args[w_args.index("--master-host") + 1] == service["metadata"]["name"]
    assert int(m_args[m_args.index("--expect-workers") + 1]) == workers["spec"]["parallelism"]
    assert service["spec"]["selector"].items() <= m_pod["metadata"]["labels"].items()
    ports = {p["containerPort"] for p in m_pod["spec"]["containers"][0]["ports"]}
    assert {5557, int(m_args[m_args.index("--metrics-port") + 1])} <= ports
    assert set(secret["stringData"]) <= set(SERVICE_VARS), secret["stringData"]
    assert m_pod["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    assert "envFrom" not in w_pod["spec"]["containers"][0]  # the master forwards the URLs
