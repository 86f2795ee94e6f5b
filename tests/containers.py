"""``gastown container`` as a real child process, for tests that need signals and process death."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

from gastown.core.ports import free_port
from tests.conftest import CONTROL_TOKEN

REPO = Path(__file__).resolve().parent.parent


def container_env(worker, fake_llm, town_id: str, token: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The env of a ``gastown container`` wired to the in-process worker and the scripted model."""
    return {
        "PATH": os.environ["PATH"], "GASTOWN_ALLOW_LOCAL_GIT": "1", "GASTOWN_TOWN_ID": town_id, "GASTOWN_API_URL": worker.url,
        "GASTOWN_CONTAINER_TOKEN": token, "GASTOWN_CONTROL_TOKEN": CONTROL_TOKEN, "GASTOWN_DATA_DIR": str(data_dir),
        "GASTOWN_KILO_PROVIDERS": json.dumps(fake_llm.provider_config()), **extra,
    }


def still_running(procs: list[psutil.Process]) -> list[str]:
    """The processes of ``procs`` that are alive (zombies count as gone), as ``pid cmdline``."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


class ContainerProc:
    """``gastown container`` as a real process, driven over HTTP."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(env["GASTOWN_DATA_DIR"]).parent / f"container-{self.port}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gastown.cli", "container", "--host", "127.0.0.1", "--port", str(self.port)],
                                     cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    async def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, json=body, headers={"Authorization": f"Bearer {CONTROL_TOKEN}"},
                                 timeout=aiohttp.ClientTimeout(total=90)) as r:
                return r.status, await r.json(content_type=None)

    async def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "container exited"
            try:
                if (await self.call("GET", "/ready"))[0] == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError("container never became ready")

    async def wait_status(self, agent_id: str, pred, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, body = await self.call("GET", f"/agents/{agent_id}/status")
            if code == 200 and pred(body):
                return body
            await asyncio.sleep(0.2)
        raise AssertionError(f"status never matched: {body}")

    def sigkill_everything(self) -> None:
        tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:  # already gone: its parent's death took it (parent-death signal)
                pass
        psutil.wait_procs(tree, timeout=10)
        self.proc.wait()

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("container did not exit in time")
            await asyncio.sleep(0.1)
        return self.proc.returncode

    async def terminate(self, timeout: float = 120) -> int:
        """SIGTERM and wait without blocking the loop (the in-process worker must keep answering)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("container did not exit on SIGTERM")
            await asyncio.sleep(0.1)
        return self.proc.returncode
