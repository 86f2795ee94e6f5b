"""A whole town of real processes for end-to-end tests and benchmarks: the local forge
(``python -m gastown.local.forge``), ``gastown worker`` (its GitHub API pointed at the forge) and
``gastown container`` (snapshots to a real S3 server), driven by the scripted model in-process.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from gastown.core.ports import free_port
from gastown.local.forge import Forge
from gastown.local.s3servers import S3Server, new_bucket, s3_env
from gastown.local.scripted_model import FakeLLM
from tests.conftest import CONTROL_TOKEN as CONTROL
from tests.containers import ContainerProc, container_env

ADMIN = "town-admin-token-0123456789abcdef"
JWT = "town-jwt-secret-0123456789abcdef0123456789"
FORGE_TOKEN = "town-forge-token-0123456789abcdef"
REPO = "acme/app"


async def _until_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            assert proc.poll() is None, f"{what} exited ({proc.returncode})"
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"{what} did not answer {url}"
            await asyncio.sleep(0.1)


class TownProcs:
    """Start with :meth:`start`; always :meth:`close` (a ``finally``)."""

    def __init__(self, tmp: Path, llm: FakeLLM, s3: S3Server) -> None:
        self.tmp, self.llm, self.s3 = tmp, llm, s3
        self.procs: list[subprocess.Popen] = []
        self.container: ContainerProc | None = None
        self.forge = Forge(tmp / "forge")  # the scripting side, on the forge process's repositories
        self.forge_port, self.worker_port = free_port(), free_port()
        self.forge_url = f"http://127.0.0.1:{self.forge_port}"
        self.worker_url = f"http://127.0.0.1:{self.worker_port}"
        self.repo_url = f"{self.forge_url}/{REPO}.git"
        self.town_id = self.rig_id = self.container_token = ""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env={"PATH": os.environ["PATH"], "GASTOWN_ALLOW_LOCAL_GIT": "1", **env}, stdout=log, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parent.parent)
        self.procs.append(proc)
        return proc

    async def start_servers_only(self, *, worker_env_extra: dict[str, str] | None = None,
                                 repo_settings: dict[str, Any] | None = None, worker_args: tuple[str, ...] = ()) -> None:
        """The forge (with the repo) and the worker, no town yet."""
        self.forge.create_repo(REPO, files={"README.md": "# app\n"}, **(repo_settings or {}))
        # Only the worker holds the store's keys; the container's snapshots go through it (``worker:``).
        self.bucket = new_bucket(self.s3)
        forge = self._spawn("forge", [sys.executable, "-m", "gastown.local.forge", "--root", str(self.tmp / "forge"),
                                      "--port", str(self.forge_port)], {"GASTOWN_FORGE_TOKEN": FORGE_TOKEN})
        await _until_http(f"{self.forge_url}/api/v3/repos/{REPO}", forge, "forge")
        worker = self._spawn("worker", [sys.executable, "-m", "gastown.cli", "worker", "--port", str(self.worker_port),
                                        "--db", str(self.tmp / "worker.db"), *worker_args],
                             {"GASTOWN_ADMIN_TOKEN": ADMIN, "GASTOWN_JWT_SECRET": JWT,
                              "GASTOWN_GITHUB_API_URL": f"{self.forge_url}/api/v3",
                              "GASTOWN_SNAPSHOT_URL": f"s3://{self.bucket}/gastown", **s3_env(self.s3, self.bucket),
                              **(worker_env_extra or {})})
        await _until_http(f"{self.worker_url}/alive", worker, "worker")

    async def start(self, *, merge_strategy: str = "direct", container_env_extra: dict[str, str] | None = None,
                    worker_env_extra: dict[str, str] | None = None, repo_settings: dict[str, Any] | None = None,
                    owner_token: str | None = None) -> "TownProcs":
        """Everything up; the town is created by ``owner_token``'s user when given (a user's town)."""
        if not self.procs:
            await self.start_servers_only(worker_env_extra=worker_env_extra, repo_settings=repo_settings)
        self.container_port = container_port = free_port()
        code, town = await self.api("POST", "/api/towns", {"name": "e2e", "default_model": "fake/m1",
                                                           "container_url": f"http://127.0.0.1:{container_port}",
                                                           "control_token": CONTROL}, token=owner_token or ADMIN)
        assert code == 201, town
        self.town_id, self.container_token = town["town_id"], town["container_token"]
        code, rig = await self.api("POST", f"/api/towns/{self.town_id}/rigs", {"name": "app", "git_url": self.repo_url})
        assert code == 201, rig
        self.rig_id = rig["rig_id"]
        code, scm = await self.api("PUT", f"/api/towns/{self.town_id}/rigs/{self.rig_id}/scm",
                                   {"github_token": FORGE_TOKEN, "merge_strategy": merge_strategy,
                                    "auto_merge_delay_minutes": 0})
        assert code == 200, scm
        self.container_env_extra = container_env_extra or {}
        await self.start_container()
        return self

    async def start_container(self) -> ContainerProc:
        """``gastown container`` on the town's port with an empty data dir at the same path (a new
        container on a fresh volume mounted where the old one was, as ``/workspace`` is in the image:
        kilo keeps a session's directory, so a restored session runs where it ran before)."""
        data = self.tmp / "container" / "data"
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
        env = container_env(_WorkerUrl(self.worker_url), self.llm, self.town_id, self.container_token, data,
                            GASTOWN_SNAPSHOT_URL="worker:",
                            **{"GASTOWN_IDLE_TIMEOUT_S": "5", "GASTOWN_REFINERY_IDLE_TIMEOUT_S": "5",
                               **self.container_env_extra})
        self.container = ContainerProc(env, port=self.container_port)
        self.procs.append(self.container.proc)
        await self.container.wait_ready()
        return self.container

    async def api(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.worker_url + path, json=body, timeout=aiohttp.ClientTimeout(total=30),
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                return r.status, await r.json(content_type=None)

    async def town(self, path: str) -> Any:
        code, body = await self.api("GET", f"/api/towns/{self.town_id}{path}")
        assert code == 200, body
        return body

    async def forge_api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, f"{self.forge_url}/api/v3/repos/{REPO}{path}", json=body,
                                    headers={"Authorization": f"Bearer {FORGE_TOKEN}"},
                                    timeout=aiohttp.ClientTimeout(total=30)) as r:
                return r.status, await r.json(content_type=None) if r.status != 204 else None

    def clone(self, dest: Path, branch: str = "main") -> Path:
        """A fresh clone of the forge's repo over HTTP with the token (blocking: the forge is another process)."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.tmp), "GIT_TERMINAL_PROMPT": "0",
               "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
               "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {FORGE_TOKEN}"}
        subprocess.run(["git", "clone", "-q", "-b", branch, self.repo_url, str(dest)], env=env, check=True,
                       capture_output=True, timeout=60)
        return dest

    def logs(self, full: bool = False) -> str:
        """Every process log of the town (the container's, its kilo stderr included): tails, or whole."""
        files = sorted([*self.tmp.glob("*.log"), *self.tmp.glob("container/*.log")])
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[None if full else -3000:]}" for p in files)

    async def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 60
        for p in self.procs:
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if p.poll() is None:
                p.kill()
                p.wait()


class _WorkerUrl:
    """What ``container_env`` reads of a worker: its URL."""

    def __init__(self, url: str) -> None:
        self.url = url


async def until(fn: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def script(*steps: str) -> str:
    """A scripted-model prompt: the first step a CALL_TOOL, each next a THEN_TOOL."""
    return "\n".join(("CALL_TOOL " if i == 0 else "THEN_TOOL ") + s for i, s in enumerate(steps))


def tool(name: str, **args: Any) -> str:
    return f"{name} {json.dumps(args)}"
