"""The per-town image: its size, its build uncached (every layer of the image rebuilt; the local Debian
bases kept, stated) and cached, and a town container's start to ``/ready`` from the image against the
same runtime started as a local process, in the same run (the ratio: what the image costs a start).

Needs what `make image` needs (podman, root). ``BENCH_IMAGE_RUNS`` starts per side (default 3);
``BENCH_IMAGE_UNCACHED=0`` skips the uncached build (the smoke test).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import emit, log, machine, median
from gastown.core.ports import free_port

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "deploy" / "podman" / "containers.conf"
IMAGE = "localhost/gastown-runtime:bench"
ENV = {**os.environ, "CONTAINERS_CONF": str(CONF), "GASTOWN_IMAGE": IMAGE}
TOKEN = "ctl-bench-image-token-0123456789"


def _build(no_cache: bool) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(REPO / "deploy/podman/build-image")], env={**ENV, "GASTOWN_IMAGE_NO_CACHE": "1" if no_cache else "0"},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    return time.perf_counter() - t0


def _wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} never ready")
        time.sleep(0.02)


def _start_image() -> float:
    port = free_port()
    name = f"gastown-bench-{port}"
    t0 = time.perf_counter()
    subprocess.run(["podman", "run", "-d", "--name", name, "--network=host", "--userns=auto:size=65536",
                    "--mount", "type=tmpfs,dst=/sys", "-e", f"GASTOWN_CONTROL_TOKEN={TOKEN}", "-e", "GASTOWN_HOST=127.0.0.1",
                    "-e", f"GASTOWN_PORT={port}", IMAGE], env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)
    try:
        _wait_ready(port)
        return time.perf_counter() - t0
    finally:
        subprocess.run(["podman", "rm", "-f", "-v", name], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)


def _start_process(tmp: Path) -> float:
    port = free_port()
    data = tmp / f"data-{port}"
    data.mkdir(parents=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gastown.cli", "container", "--host", "127.0.0.1", "--port", str(port)],
                            env={"PATH": os.environ["PATH"], "GASTOWN_CONTROL_TOKEN": TOKEN, "GASTOWN_DATA_DIR": str(data)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        _wait_ready(port)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    import tempfile

    runs = int(os.environ.get("BENCH_IMAGE_RUNS", "3"))
    log("image: warm-up build, then cached, then uncached (bases kept) …")
    _build(no_cache=False)
    cached = _build(no_cache=False)
    uncached = _build(no_cache=True) if os.environ.get("BENCH_IMAGE_UNCACHED", "1") == "1" else None
    size = json.loads(subprocess.run(["podman", "image", "inspect", IMAGE], env=ENV, capture_output=True, text=True,
                                     check=True).stdout)[0]["Size"]
    with tempfile.TemporaryDirectory() as tmp:
        image_s, process_s = [], []
        for _ in range(runs):  # interleaved: the box's load hits both sides alike
            image_s.append(_start_image())
            process_s.append(_start_process(Path(tmp)))
    ratio = median(image_s) / median(process_s)
    emit({"benchmark": "image", "image": IMAGE, "size_mb": round(size / 1e6, 1),
          "build_uncached_s": round(uncached, 1) if uncached is not None else None, "build_cached_s": round(cached, 1),
          "bases": "local mmdebstrap bases reused (built once, ~70 s)",
          "ready_from_image_ms": [round(s * 1000) for s in image_s],
          "ready_as_process_ms": [round(s * 1000) for s in process_s],
          "ratio": round(ratio, 2), "target": "container start to /ready from the image vs the same runtime as a process",
          "machine": machine()})
    subprocess.run(["podman", "rmi", "-f", IMAGE], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
