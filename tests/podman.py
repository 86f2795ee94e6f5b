"""podman for the image tests: the CLI with the project's containers.conf (host network, runc, ulimits),
``podman system service`` as a Docker-compatible API on a unix socket, and the checks that no test
put a container on a bridge or a private-range network."""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "deploy" / "podman" / "containers.conf"
IMAGE = os.environ.get("GASTOWN_IMAGE", "localhost/gastown-runtime:dev")
ENV = {**os.environ, "CONTAINERS_CONF": str(CONF)}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def inspect(name: str) -> dict[str, Any]:
    return json.loads(podman("inspect", "--type", "container", name).stdout)[0]


def require_image() -> None:
    """A missing image is a broken `make test` (which builds it first), never a skip."""
    if shutil.which("podman") is None:
        raise pytest.UsageError("podman is not installed: run `make test` (its image step installs it)")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        raise pytest.UsageError(f"{IMAGE} is not built: run `make image` (make test does)")


def private_addresses(info: dict[str, Any]) -> list[str]:
    """Any private-range address or non-host network a container was given."""
    bad = []
    mode = (info.get("HostConfig") or {}).get("NetworkMode")
    if mode != "host":
        bad.append(f"NetworkMode={mode}")
    settings = info.get("NetworkSettings") or {}
    for net in [settings, *(settings.get("Networks") or {}).values()]:
        for key in ("IPAddress", "Gateway"):
            addr = (net or {}).get(key)
            if addr and ipaddress.ip_address(addr).is_private and not ipaddress.ip_address(addr).is_loopback:
                bad.append(f"{key}={addr}")
    return bad


def networks() -> list[str]:
    return sorted(podman("network", "ls", "--format", "{{.Name}}").stdout.split())


@pytest.fixture
def docker_api(tmp_path: Path) -> Iterator[str]:
    """``podman system service`` on a socket of this test: the Docker Engine API the worker talks to."""
    require_image()
    sock = tmp_path / "podman.sock"
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "podman-service.log", "wb"))
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "podman system service did not start"
        time.sleep(0.1)
    try:
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
