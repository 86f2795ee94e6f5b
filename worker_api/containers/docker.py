"""Town containers from the runtime image through the Docker Engine API (Docker, or podman's
Docker-compatible ``podman system service``), with aiodocker (aiohttp underneath, as the rest of the
worker).

One container per town, named ``gastown-town-<town_id>``, started fresh each time: the old one (and
its anonymous ``/workspace`` volume) is removed first, since everything worth keeping is in the
snapshots the new container restores. The container shares the host's network (``NetworkMode:
host``) and listens on a loopback port the provider picks; secrets travel only in its environment,
never in labels or the image. By default it runs in a user namespace of its own (``UsernsMode``), so
the runtime's root — needed to give each agent a uid (supervisor/isolation.py) — is an unprivileged
uid on the host.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp

from gastown.core.jsonlog import get_logger
from gastown.core.ports import free_port
from worker_api.containers.base import CAPABILITIES, DRAIN_GRACE_S, Launch, ProviderError, container_name

log = get_logger("worker_api.containers.docker")

CALL_TIMEOUT_S = 30.0
DEFAULT_USERNS = "auto:size=65536"


@dataclass(frozen=True)
class DockerSettings:
    image: str
    docker_url: str | None = None   # None: DOCKER_HOST, else the engine's default socket
    host: str = "127.0.0.1"         # where the container's control server listens (host network)
    memory_bytes: int | None = None
    nano_cpus: int | None = None
    drain_grace_s: int = DRAIN_GRACE_S
    userns: str | None = DEFAULT_USERNS  # None: the engine's default (root in the container is root)

    @classmethod
    def from_env(cls, image: str, env: Mapping[str, str]) -> "DockerSettings":
        mem = env.get("GASTOWN_CONTAINER_MEMORY_MB")
        cpus = env.get("GASTOWN_CONTAINER_CPUS")
        userns = env.get("GASTOWN_CONTAINER_USERNS", DEFAULT_USERNS)
        return cls(image=image, docker_url=env.get("DOCKER_HOST") or None,
                   memory_bytes=int(mem) * 1024 * 1024 if mem else None,
                   nano_cpus=int(float(cpus) * 1e9) if cpus else None,
                   userns=None if userns in ("", "host") else userns)


class DockerProvider:
    def __init__(self, settings: DockerSettings) -> None:
        self.settings = settings
        self._docker: aiodocker.Docker | None = None

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:  # created in the running loop, closed by aclose
            self._docker = aiodocker.Docker(url=self.settings.docker_url,
                                            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))
        return self._docker

    def config(self, launch: Launch, port: int) -> dict[str, Any]:
        """The engine's create body (a pure function: tests validate it without an engine)."""
        s = self.settings
        host_config: dict[str, Any] = {"NetworkMode": "host", "Init": False, "CapDrop": ["ALL"],
                                       "CapAdd": list(CAPABILITIES), "SecurityOpt": ["no-new-privileges"]}
        if s.userns:
            host_config["UsernsMode"] = s.userns
            # sysfs cannot be mounted in a user namespace that does not own the (host) network namespace
            host_config["Tmpfs"] = {"/sys": "ro"}
        if s.memory_bytes:
            host_config["Memory"] = s.memory_bytes
        if s.nano_cpus:
            host_config["NanoCpus"] = s.nano_cpus
        env = {**launch.env, "GASTOWN_HOST": s.host, "GASTOWN_PORT": str(port)}
        return {"Image": s.image, "Env": [f"{k}={v}" for k, v in sorted(env.items())],
                "Labels": {"gastown.town": launch.town_id, "gastown.role": "town-container"},
                "StopTimeout": s.drain_grace_s, "StopSignal": "SIGTERM", "HostConfig": host_config}

    async def start(self, launch: Launch) -> str:
        name = container_name(launch.town_id)
        port = free_port(self.settings.host)
        docker = self._client()
        try:
            await self._remove(name)
            container = await docker.containers.create(self.config(launch, port), name=name)
            await container.start()
        except (aiodocker.DockerError, aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise ProviderError(f"start of {name} failed: {_brief(e)}") from None
        log.info("container.started", town=launch.town_id, name=name, image=self.settings.image, port=port)
        return f"http://{self.settings.host}:{port}"

    async def _remove(self, name: str) -> None:
        try:
            old = await self._client().containers.get(name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return
            raise
        await old.delete(force=True, v=True)

    async def state(self, town_id: str) -> str:
        try:
            info = await (await self._client().containers.get(container_name(town_id))).show()
        except aiodocker.DockerError as e:
            return "stopped" if e.status == 404 else "unknown"
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return "unknown"
        state = info.get("State") or {}
        status = state.get("Status")
        if status == "running":
            return "healthy" if (state.get("Health") or {}).get("Status") == "healthy" else "running"
        if status in ("created", "configured", "initialized"):
            return "starting"
        return "stopped" if status in ("exited", "stopped", "dead") else "unknown"

    async def stop(self, town_id: str) -> None:
        """SIGTERM and wait for the drain (up to the grace, then the engine kills)."""
        grace = self.settings.drain_grace_s
        try:
            container = await self._client().containers.get(container_name(town_id))
            await container.stop(t=grace, timeout=grace + CALL_TIMEOUT_S)
        except aiodocker.DockerError as e:
            if e.status in (304, 404):  # already stopped / gone
                return
            raise ProviderError(f"stop failed: {_brief(e)}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise ProviderError(f"stop failed: {_brief(e)}") from None
        log.info("container.stopped", town=town_id)

    async def aclose(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None


def _brief(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]
