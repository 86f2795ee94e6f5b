"""Which container provider ``gastown worker`` runs, from its flags and environment.

``--containers none`` (default): containers are run by someone else and registered with a URL.
``local``: ``gastown container`` processes under ``<db dir>/containers``. ``docker``: the runtime
image through the Docker Engine API (``DOCKER_HOST``; podman's ``podman system service`` works).
``kubernetes``: one Pod per town in ``GASTOWN_KUBE_NAMESPACE`` (in-cluster credentials, else the
kubeconfig; ``GASTOWN_KUBE_URL`` + ``GASTOWN_KUBE_TOKEN_FILE`` name an API server directly).
Every container's shared environment (the model providers, say) comes from the JSON object in the
file ``GASTOWN_CONTAINER_ENV_FILE``: a file, so no secret sits in the worker's argv or environment.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker_api.containers.base import ContainerProvider
from worker_api.containers.docker import DockerProvider, DockerSettings
from worker_api.containers.kubernetes import KubeSettings, KubernetesProvider
from worker_api.containers.local import LocalProcessProvider
from worker_api.containers.service import IDLE_STOP_S, IDLE_STOP_THROTTLE_S, LaunchSettings

KINDS = ("none", "local", "docker", "kubernetes")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be > 0")
    return value


def _base_env(env: Mapping[str, str]) -> dict[str, str]:
    path = env.get("GASTOWN_CONTAINER_ENV_FILE")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"GASTOWN_CONTAINER_ENV_FILE: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError("GASTOWN_CONTAINER_ENV_FILE must hold a JSON object of strings")
    return data


def from_args(kind: str, *, image: str | None, state_dir: Path, worker_url: str,
              env: Mapping[str, str]) -> tuple[ContainerProvider | None, LaunchSettings | None]:
    """The provider and launch settings, or ``(None, None)``; raises ValueError on a bad setting."""
    if kind == "none":
        return None, None
    idle = _seconds(env, "GASTOWN_IDLE_STOP_S", IDLE_STOP_S)
    throttle = _seconds(env, "GASTOWN_IDLE_STOP_THROTTLE_S", IDLE_STOP_THROTTLE_S)
    launch = LaunchSettings(worker_url=worker_url, base_env=_base_env(env),
                            brokered_snapshots=bool(env.get("GASTOWN_SNAPSHOT_URL")), idle_stop_s=idle,
                            idle_stop_throttle_s=min(idle, throttle))
    if kind == "local":
        return LocalProcessProvider(state_dir.resolve() / "containers"), launch
    if kind == "docker":
        if not image:
            raise ValueError("--containers docker needs --image")
        return DockerProvider(DockerSettings.from_env(image, env)), launch
    if kind == "kubernetes":
        if not image:
            raise ValueError("--containers kubernetes needs --image")
        return KubernetesProvider(KubeSettings(
            image=image, namespace=env.get("GASTOWN_KUBE_NAMESPACE", "gastown-towns"),
            memory=env.get("GASTOWN_CONTAINER_MEMORY", "4Gi"), cpu=env.get("GASTOWN_CONTAINER_CPUS", "2")),
            kube_api(env)), launch
    raise ValueError(f"unknown container provider {kind!r} (one of {', '.join(KINDS)})")


def kube_api(env: Mapping[str, str]) -> Any:
    """A Kubernetes API client: ``GASTOWN_KUBE_URL`` (+ a bearer token file), else in-cluster, else kubeconfig."""
    from kubernetes import client, config

    url = env.get("GASTOWN_KUBE_URL")
    if url:
        cfg = client.Configuration(host=url)
        token_file = env.get("GASTOWN_KUBE_TOKEN_FILE")
        if token_file:
            try:
                cfg.api_key = {"authorization": Path(token_file).read_text().strip()}
            except OSError as e:
                raise ValueError(f"GASTOWN_KUBE_TOKEN_FILE: {e}") from None
            cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise ValueError(f"no Kubernetes credentials: {e}") from None
    return client.ApiClient()
