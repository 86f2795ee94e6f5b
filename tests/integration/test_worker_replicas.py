"""Several `gastown worker` processes on one real PostgreSQL: beads slung through any replica are
dispatched exactly once, and when a replica is killed with -9 mid-run the survivors take its towns
over within the lease's time and nothing is lost or dispatched twice.

The towns' containers are one lightweight fake speaking the control API (`POST /agents/start`,
`GET /agents`), which counts the start requests: the dispatch count is what the containers saw."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gastown.core.ports import free_port
from tests.pgserver import PgServer
from tests.test_worker_api_support import ADMIN_TOKEN, JWT_SECRET
from tests.townproc import until

GASTOWN = Path(sys.executable).parent / "gastown"
TOWNS = 20
BEADS_PER_TOWN = 10   # MAX_ACTIVE_POLECATS: every bead of a town can be dispatched at once


class FakeContainers:
    """Every town's container: ``/c/{n}/…`` is town n's control API."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}                 # n -> control token
        self.starts: list[tuple[str, str, str]] = []     # (n, agent_id, bead title)
        self.running: dict[str, set[str]] = {}
        self.bad_auth = 0
        app = web.Application()
        app.router.add_post("/c/{n}/agents/start", self._start)
        app.router.add_get("/c/{n}/agents", self._agents)
        app.router.add_post("/c/{n}/agents/{a}/stop", self._stop)
        self.app = app

    def _authorized(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {self.tokens.get(request.match_info['n'])}"
        self.bad_auth += not ok
        return ok

    async def _start(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "UNAUTHORIZED", "message": "no"}}, status=401)
        body = await request.json()
        n, agent_id = request.match_info["n"], body["agent_id"]
        title = re.search(r"^# (.+)$", body.get("prompt") or "", re.M)
        self.starts.append((n, agent_id, title.group(1) if title else "?"))
        self.running.setdefault(n, set()).add(agent_id)
        return web.json_response({"agent_id": agent_id, "status": "starting"}, status=201)

    async def _agents(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "UNAUTHORIZED", "message": "no"}}, status=401)
        running = self.running.get(request.match_info["n"], set())
        return web.json_response({"agents": [{"agent_id": a, "status": "running"} for a in sorted(running)]})

    async def _stop(self, request: web.Request) -> web.Response:
        self.running.get(request.match_info["n"], set()).discard(request.match_info["a"])
        return web.json_response({"stopped": True})


class Replica:
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


async def _call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("replicas", [2, 3])
async def test_beads_through_any_replica_are_dispatched_once_and_a_killed_replicas_towns_go_on(
        pg_server: PgServer, tmp_path: Path, replicas: int) -> None:
    url = pg_server.new_database("replicas")
    fake = FakeContainers()
    runner = web.AppRunner(fake.app)
    await runner.setup()
    cport = free_port()
    await web.TCPSite(runner, "127.0.0.1", cport).start()
    workers = [Replica(i, url, tmp_path / f"worker-{i}.log") for i in range(replicas)]
    try:
        async with aiohttp.ClientSession() as http:
            for w in workers:
                async def up(w: Replica = w) -> bool:
                    assert w.alive, w.log.read_text()[-3000:]
                    try:
                        return (await _call(http, "GET", f"{w.url}/alive"))[0] == 200
                    except aiohttp.ClientError:
                        return False
                await until(up, 60, f"{w.name} to answer")

            towns: list[str] = []
            for n in range(TOWNS):  # created and given a rig through every replica in turn
                w = workers[n % replicas]
                fake.tokens[str(n)] = token = f"ctl-{n:02d}-0123456789abcdef"
                code, town = await _call(http, "POST", f"{w.url}/api/towns", {
                    "name": f"T{n}", "container_url": f"http://127.0.0.1:{cport}/c/{n}", "control_token": token})
                assert code == 201, town
                towns.append(town["town_id"])
                code, rig = await _call(http, "POST", f"{w.url}/api/towns/{town['town_id']}/rigs", {
                    "rig_id": "r1", "name": "r", "git_url": "https://example.com/r.git"})
                assert code == 201, rig

            async def sling(i: int, via: list[Replica]) -> None:
                n, k = i % TOWNS, i // TOWNS
                w = via[i % len(via)]
                code, bead = await _call(http, "POST", f"{w.url}/api/towns/{towns[n]}/sling",
                                         {"rig_id": "r1", "title": f"bead-{n:02d}-{k}"})
                assert code == 201, (w.name, bead)

            def started() -> int:
                return len(fake.starts)

            half = TOWNS * BEADS_PER_TOWN // 2
            for i in range(half):
                await sling(i, workers)
            await until(lambda: _ready(started() >= half), 120, "the first wave's dispatch")

            async def holders() -> dict[str, str | None]:
                out = {}
                for t in towns:
                    code, st = await _call(http, "GET", f"{workers[-1].url}/api/towns/{t}/status")
                    assert code == 200, st
                    out[t] = st["reconciler"]["replica"]
                return out
            held = await holders()
            assert all(held.values()), held  # every town reconciled by some replica
            by_replica = Counter(held.values())
            assert len(by_replica) == replicas, by_replica  # the towns were shared out
            victim_id, _ = by_replica.most_common(1)[0]
            victim = next(w for w in workers if f"-{w.proc.pid}-" in victim_id)
            survivors = [w for w in workers if w is not victim]

            # The second wave: a quarter through the victim, killed -9 half-way, the rest through the others.
            for i in range(half, half + half // 2):
                await sling(i, workers)
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            killed_at = time.monotonic()
            for i in range(half + half // 2, 2 * half):
                await sling(i, survivors)

            workers_left = survivors

            async def taken_over() -> bool:
                code_holders = {}
                for t in towns:
                    code, st = await _call(http, "GET", f"{workers_left[0].url}/api/towns/{t}/status")
                    code_holders[t] = st["reconciler"]["replica"]
                return all(h is not None and h != victim_id for h in code_holders.values())
            await until(taken_over, 60, "the victim's towns taken over", every=0.25)
            takeover_s = time.monotonic() - killed_at
            await until(lambda: _ready(started() >= 2 * half), 120, "every bead dispatched")
            await asyncio.sleep(8)  # a double dispatch would show within a tick or two

        per_title = Counter(title for _, _, title in fake.starts)
        expected = {f"bead-{n:02d}-{k}" for n in range(TOWNS) for k in range(BEADS_PER_TOWN)}
        assert set(per_title) == expected, sorted(set(per_title) ^ expected)[:10]
        twice = {t: [s for s in fake.starts if s[2] == t] for t, c in per_title.items() if c != 1}
        assert twice == {}, f"dispatched more than once (victim {victim_id}): {twice}"
        assert len(fake.starts) == TOWNS * BEADS_PER_TOWN and fake.bad_auth == 0
        assert takeover_s < 20, f"takeover took {takeover_s:.1f} s (lease TTL 10 s + renew 3 s)"
        print(f"replicas={replicas} takeover_s={takeover_s:.1f}")
        for w in survivors:
            w.proc.send_signal(signal.SIGTERM)
            assert w.proc.wait(30) == 0, w.log.read_text()[-3000:]
        for w in workers:
            text = w.log.read_text()
            assert pg_server.password not in text, f"the database password in {w.name}'s log"
            assert "Traceback" not in text or w is victim, text[-3000:]
    finally:
        for w in workers:
            if w.alive:
                w.proc.kill()
                w.proc.wait()
        await runner.cleanup()


async def _ready(value: bool) -> bool:
    return value
