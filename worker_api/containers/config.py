"""Which container provider ``gastown worker`` runs, from its flags and environment.

``--containers none`` (default): containers are run by someone else and registered with a URL.
``local``: ``gastown container`` processes under ``<db dir>/containers``. ``docker``: the runtime
image through the Docker Engine API (``DOCKER_HOST``; podman's ``podman system service`` works).
Every container's shared environment (the model providers, say) comes from the JSON object in the
file ``GASTOWN_CONTAINER_ENV_FILE``: a file, so no secret sits in the worker's argv or environment.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from worker_api.containers.base import ContainerProvider
from worker_api.containers.docker import DockerProvider, DockerSettings
from worker_api.containers.local import LocalProcessProvider
from worker_api.containers.service import IDLE_STOP_S, LaunchSettings

KINDS = ("none", "local", "docker")


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


def from_args(kind: str, *, image: str | None, db_path: str, worker_url: str,
              env: Mapping[str, str]) -> tuple[ContainerProvider | None, LaunchSettings | None]:
    """The provider and launch settings, or ``(None, None)``; raises ValueError on a bad setting."""
    if kind == "none":
        return None, None
    idle = float(env.get("GASTOWN_IDLE_STOP_S", IDLE_STOP_S))
    if idle <= 0:
        raise ValueError("GASTOWN_IDLE_STOP_S must be > 0")
    launch = LaunchSettings(worker_url=worker_url, base_env=_base_env(env),
                            brokered_snapshots=bool(env.get("GASTOWN_SNAPSHOT_URL")), idle_stop_s=idle,
                            idle_stop_throttle_s=min(idle, float(env.get("GASTOWN_IDLE_STOP_THROTTLE_S", 120))))
    if kind == "local":
        return LocalProcessProvider(Path(db_path).resolve().parent / "containers"), launch
    if kind == "docker":
        if not image:
            raise ValueError("--containers docker needs --image")
        return DockerProvider(DockerSettings.from_env(image, env)), launch
    raise ValueError(f"unknown container provider {kind!r} (one of {', '.join(KINDS)})")
