"""Worker replicas as real `gastown worker` processes on one PostgreSQL database, and one lightweight
fake standing in for every town's container (the control API calls the reconciler makes). Used by
tests/integration/test_worker_replicas.py and bench/replicas_bench.py."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gastown.core.ports import free_port
from tests.test_worker_api_support import ADMIN_TOKEN, JWT_SECRET

GASTOWN = Path(sys.executable).parent / "gastown"


class FakeContainers:
    """Every town's container: ``/c/{n}/…`` is town n's control API. Records each start request
    (with the bead title from its prompt) and when each town's agents were last listed (the
    reconciler lists them at every tick of a town with agents at work)."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}                 # n -> control token
        self.towns: dict[str, tuple[str, str]] = {}      # n -> (town_id, container token): for heartbeats
        self.starts: list[tuple[str, str, str]] = []     # (n, agent_id, bead title)
        self.started_at: dict[str, float] = {}           # bead title -> monotonic time of its first start
        self.listed: dict[str, list[float]] = {}         # n -> monotonic times of GET /agents
        self.running: dict[str, set[str]] = {}
        self.bad_auth = 0
        app = web.Application()
        app.router.add_post("/c/{n}/agents/start", self._start)
        app.router.add_get("/c/{n}/agents", self._agents)
        app.router.add_post("/c/{n}/agents/{a}/stop", self._stop)
        self.app = app
        self._runner: web.AppRunner | None = None
        self._beating: asyncio.Task[None] | None = None
        self.beats = 0                                   # heartbeats a replica accepted
        self.port = 0

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def heartbeat(self, workers: list[str], every_s: float = 10.0) -> None:
        """Report every running agent to a live worker replica every ``every_s``, as a container does
        every 30 s (without them the worker takes an agent for gone after 90 s and dispatches again)."""
        if self._beating is not None:
            self._beating.cancel()
        self._beating = asyncio.create_task(self._beat(workers, every_s))

    async def _beat(self, workers: list[str], every_s: float) -> None:
        async with aiohttp.ClientSession() as http:
            i = 0
            while True:
                await asyncio.sleep(every_s)
                for n, agents in list(self.running.items()):
                    town_id, token = self.towns[n]
                    for agent_id in sorted(agents):
                        for _ in workers:  # the next replica when one is down
                            i += 1
                            url = f"{workers[i % len(workers)]}/api/towns/{town_id}/agents/{agent_id}/heartbeat"
                            try:
                                async with http.post(url, json={"status": "running"}, timeout=aiohttp.ClientTimeout(
                                        total=10), headers={"Authorization": f"Bearer {token}"}) as resp:
                                    if resp.status == 200:
                                        self.beats += 1
                                        break
                            except (aiohttp.ClientError, asyncio.TimeoutError):
                                continue

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/c/{n}"

    def _authorized(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {self.tokens.get(request.match_info['n'])}"
        self.bad_auth += not ok
        return ok

    async def _start(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "UNAUTHORIZED", "message": "no"}}, status=401)
        body = await request.json()
        n, agent_id = request.match_info["n"], body["agent_id"]
        found = re.search(r"^# (.+)$", body.get("prompt") or "", re.M)
        title = found.group(1) if found else "?"
        self.starts.append((n, agent_id, title))
        self.started_at.setdefault(title, time.monotonic())
        self.running.setdefault(n, set()).add(agent_id)
        return web.json_response({"agent_id": agent_id, "status": "starting"}, status=201)

    async def _agents(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "UNAUTHORIZED", "message": "no"}}, status=401)
        n = request.match_info["n"]
        self.listed.setdefault(n, []).append(time.monotonic())
        running = self.running.get(n, set())
        return web.json_response({"agents": [{"agent_id": a, "status": "running"} for a in sorted(running)]})

    async def _stop(self, request: web.Request) -> web.Response:
        self.running.get(request.match_info["n"], set()).discard(request.match_info["a"])
        return web.json_response({"stopped": True})


class Replica:
    """One `gastown worker` on the database ``url`` (given in GASTOWN_DB_URL: its password never on argv)."""

    def __init__(self, i: int, url: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("GASTOWN_")}
        env.update(GASTOWN_ADMIN_TOKEN=ADMIN_TOKEN, GASTOWN_JWT_SECRET=JWT_SECRET, GASTOWN_DB_URL=url,
                   GASTOWN_ALLOW_LOCAL_GIT="1")
        self.proc = subprocess.Popen([str(GASTOWN), "worker", "--port", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=log.open("w"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"replica {i}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def owns(self, replica_id: str | None) -> bool:
        """Whether a replica id (``replica-<host>-<pid>-<hex>``) is this process's."""
        return replica_id is not None and f"-{self.proc.pid}-" in replica_id

    async def wait_up(self, http: aiohttp.ClientSession, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                if (await admin_call(http, "GET", f"{self.url}/alive"))[0] == 200:
                    return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not answer within {timeout} s")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """Gone for sure (the cleanup of a test or a bench)."""
        if self.alive:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        if self.alive:
            self.proc.terminate()
        return self.proc.wait(30)


async def admin_call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status, await resp.json(content_type=None)


async def create_towns(http: aiohttp.ClientSession, fake: FakeContainers, via: list[Replica], count: int) -> list[str]:
    """``count`` towns, each with the rig ``r1``, created through the replicas in turn; their ids."""
    towns: list[str] = []
    for n in range(count):
        w = via[n % len(via)]
        fake.tokens[str(n)] = token = f"ctl-{n:03d}-0123456789abcdef"
        code, town = await admin_call(http, "POST", f"{w.url}/api/towns", {
            "name": f"T{n}", "container_url": fake.url(n), "control_token": token})
        assert code == 201, town
        towns.append(town["town_id"])
        fake.towns[str(n)] = (town["town_id"], town["container_token"])
        code, rig = await admin_call(http, "POST", f"{w.url}/api/towns/{town['town_id']}/rigs", {
            "rig_id": "r1", "name": "r", "git_url": "https://example.com/r.git"})
        assert code == 201, rig
    return towns


async def holders(http: aiohttp.ClientSession, via: Replica, towns: list[str]) -> dict[str, str | None]:
    """Town -> the replica reconciling it now (its status answered by ``via``)."""
    out = {}
    for t in towns:
        code, st = await admin_call(http, "GET", f"{via.url}/api/towns/{t}/status")
        assert code == 200, st
        out[t] = st["reconciler"]["replica"]
    return out
