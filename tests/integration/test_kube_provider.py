"""The worker's Kubernetes provider: its objects validated against the Kubernetes schema (pinned
``kubernetes-validate``), and its calls, through the official client, against a local fake API server
speaking the real REST shapes (tests/fakes/fake_kube.py). No cluster runs here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import kubernetes_validate
import pytest
import yaml
from aiohttp.test_utils import TestServer

from tests.fakes.fake_kube import FakeKube
from worker_api.containers import config as container_config
from worker_api.containers.base import CAPABILITIES, Launch
from worker_api.containers.kubernetes import KubernetesProvider, KubeSettings, pod_manifest, secret_manifest

K8S_VERSION = "1.33.0"  # hostUsers (user namespaces) is on by default from 1.33
REPO = Path(__file__).resolve().parents[2]
TOKEN = "ctl-kube-secret-value-0123456789"
SETTINGS = KubeSettings(image="registry.example/gastown-runtime:1", namespace="gastown-towns", ready_timeout_s=10)
LAUNCH = Launch("town-k1", {"GASTOWN_CONTROL_TOKEN": TOKEN, "GASTOWN_TOWN_ID": "town-k1"})


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_town_pod_and_secret_validate_against_the_kubernetes_schema() -> None:
    pod, secret = pod_manifest(SETTINGS, "town-k1"), secret_manifest(SETTINGS, LAUNCH)
    _validate(pod)
    _validate(secret)
    spec = pod["spec"]
    [c] = spec["containers"]
    assert spec["terminationGracePeriodSeconds"] >= 300 + 30, "the drain needs its 300 s"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready" and c["livenessProbe"]["httpGet"]["path"] == "/alive"
    assert c["resources"]["limits"]["memory"] and c["resources"]["limits"]["cpu"]
    assert spec["hostUsers"] is False and spec["automountServiceAccountToken"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": list(CAPABILITIES)}
    assert spec["volumes"] == [{"name": "workspace", "emptyDir": {"sizeLimit": "20Gi"}}]
    assert TOKEN not in json.dumps(pod), "secrets only through the Secret reference"
    assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]


def test_a_manifest_the_schema_refuses_is_refused() -> None:
    pod = pod_manifest(SETTINGS, "town-k1")
    pod["spec"]["terminationGracePeriodSecs"] = 330  # a typo: strict validation catches unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(pod)


@pytest.mark.parametrize("path", sorted((REPO / "deploy" / "kubernetes").glob("*.yaml")), ids=lambda p: p.name)
def test_deploy_manifests_validate(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        _validate(doc)


@pytest.fixture
async def kube() -> AsyncIterator[tuple[FakeKube, KubernetesProvider]]:
    fake = FakeKube()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    provider, _ = container_config.from_args("kubernetes", image=SETTINGS.image, state_dir=Path("/tmp"),
                                             worker_url="http://worker:8787",
                                             env={"GASTOWN_KUBE_URL": str(server.make_url("")).rstrip("/"),
                                                  "GASTOWN_KUBE_NAMESPACE": SETTINGS.namespace})
    assert isinstance(provider, KubernetesProvider)
    yield fake, provider
    await provider.aclose()
    await server.close()


async def test_start_creates_the_secret_then_the_pod_and_waits_until_it_is_ready(kube) -> None:
    fake, provider = kube
    assert await provider.state("town-k1") == "stopped"
    url = await provider.start(LAUNCH)
    assert url == f"http://{fake.pod_ip}:8080"
    calls = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in fake.requests][1:]  # after the state read
    assert calls[:4] == [("PUT", "gastown-town-town-k1-env"), ("POST", "secrets"), ("DELETE", "gastown-town-town-k1"),
                         ("POST", "pods")], calls
    assert any(r["query"].get("watch") in ("true", "True") for r in fake.requests), "readiness through a watch"
    secret = fake.secrets[("gastown-towns", "gastown-town-town-k1-env")]
    assert secret["stringData"]["GASTOWN_CONTROL_TOKEN"] == TOKEN
    pod = fake.pods[("gastown-towns", "gastown-town-town-k1")]
    assert TOKEN not in json.dumps(pod)
    assert await provider.state("town-k1") == "healthy"

    # A new start replaces the Secret and the Pod (a fresh container each time).
    uid = pod["metadata"]["uid"]
    await provider.start(Launch("town-k1", {**LAUNCH.env, "GASTOWN_CONTROL_TOKEN": TOKEN + "x"}))
    assert fake.pods[("gastown-towns", "gastown-town-town-k1")]["metadata"]["uid"] != uid
    assert fake.secrets[("gastown-towns", "gastown-town-town-k1-env")]["stringData"]["GASTOWN_CONTROL_TOKEN"] == TOKEN + "x"


async def test_stop_deletes_the_pod_with_the_drain_grace(kube) -> None:
    fake, provider = kube
    await provider.start(LAUNCH)
    await provider.stop("town-k1")
    delete = [r for r in fake.requests if r["method"] == "DELETE"][-1]
    assert int(delete["query"]["gracePeriodSeconds"]) >= 330
    assert await provider.state("town-k1") in ("stopping", "stopped")
    await provider.stop("town-k1")  # stopping a Pod that is going or gone is not an error


async def test_a_pod_that_never_gets_ready_fails_the_start(kube) -> None:
    from worker_api.containers.base import ProviderError

    fake, provider = kube
    fake.never_ready = True
    provider.settings = KubeSettings(image=SETTINGS.image, namespace=SETTINGS.namespace, ready_timeout_s=2)
    with pytest.raises(ProviderError):
        await provider.start(LAUNCH)
