"""``gastown up --image``: the local town's container from the runtime image instead of a process.

The worker runs it (``--containers docker``) through ``podman system service``, which ``gastown up``
starts as one more child on a socket in the state dir, with the project's podman settings (host
network, runc; deploy/podman/containers.conf) when this is a checkout. The container's shared
environment (the model provider) goes to the worker in a 0600 file, never on a command line. The
container is started by the greeting (a user's message), stopped by the worker when idle, and
drained by ``gastown up`` on the way out.
"""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from gastown.cli.upprocs import Children
from worker_api.containers.base import DRAIN_GRACE_S, container_name

CONF = Path(__file__).resolve().parents[2] / "deploy" / "podman" / "containers.conf"


def engine_env() -> dict[str, str]:
    return {"CONTAINERS_CONF": str(CONF)} if CONF.exists() else {}


async def start_engine(children: Children, directory: Path, env: dict[str, str]) -> str:
    """``podman system service`` as a child; the Docker API URL the worker is given."""
    sock = directory / "podman.sock"
    sock.unlink(missing_ok=True)
    await children.spawn("podman-service", ["podman", "system", "service", "--time=0", f"unix://{sock}"],
                         {**env, **engine_env()})
    for _ in range(200):
        if sock.exists():
            return f"unix://{sock}"
        children.check_alive()
        await asyncio.sleep(0.1)
    raise RuntimeError("podman system service did not open its socket (is podman installed? `make image`)")


def container_env_file(directory: Path, env: dict[str, str]) -> Path:
    path = directory / "container-env.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(env, f)
    return path


async def stop_town_container(town_id: str) -> None:
    """Drain the town's container (SIGTERM, then up to the grace) before the worker goes away."""
    proc = await asyncio.create_subprocess_exec(
        "podman", "stop", "-t", str(DRAIN_GRACE_S), container_name(town_id), env={**os.environ, **engine_env()},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await proc.wait()
