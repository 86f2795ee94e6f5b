"""The per-town loop (cadence, arming, ownership) and the HTTP container client."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.test_reconciler_support import FakeContainer
from tests.test_worker_api_support import ADMIN_TOKEN, JWT_SECRET, FakeClock
from worker_api.app import create_app
from worker_api.dispatch import HttpContainerClient, Target
from worker_api.db import Database
from worker_api.leases import LEASE_TTL_MS, RENEW_S
from worker_api.reconciler.loop import ACTIVE_S, IDLE_S, ReconcilerService, TownLoop
from worker_api.reconciler.service import RECONCILER
from worker_api.reconciler.tick import TickDeps, TickResult


class VirtualTime:
    """A fake clock plus a sleep that advances it (and yields), recording each requested delay."""

    def __init__(self) -> None:
        self.clock = FakeClock(1000.0)
        self.sleeps: list[float] = []

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(round(delay, 3))
        await asyncio.sleep(0)
        self.clock.advance(delay)


async def test_loop_ticks_every_5s_with_active_work_and_every_5min_when_idle() -> None:
    vt = VirtualTime()
    plan = [True, True, False, False]
    ticks: list[float] = []

    async def tick() -> TickResult | None:
        ticks.append(vt.clock())
        return TickResult(active=plan.pop(0)) if plan else None

    await asyncio.wait_for(TownLoop("t", tick, clock=vt.clock, sleep=vt.sleep).run(), 5)
    assert [round(t - ticks[0], 3) for t in ticks] == [0, ACTIVE_S, 2 * ACTIVE_S, 2 * ACTIVE_S + IDLE_S,
                                                      2 * ACTIVE_S + 2 * IDLE_S]


async def test_arm_shortens_the_wait_but_never_lengthens_it() -> None:
    vt = VirtualTime()
    gate = asyncio.Event()
    ticks: list[float] = []

    async def slow_sleep(delay: float) -> None:
        vt.sleeps.append(delay)
        await gate.wait()

    async def tick() -> TickResult:
        ticks.append(vt.clock())
        return TickResult(active=False)

    loop = TownLoop("t", tick, clock=vt.clock, sleep=slow_sleep)
    task = asyncio.create_task(loop.run())
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(ticks) == 1 and loop.deadline == vt.clock() + IDLE_S
    loop.arm(IDLE_S * 2)
    assert loop.deadline == vt.clock() + IDLE_S  # not lengthened
    loop.arm(0)  # new work: tick now
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(ticks) == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_tick_does_not_kill_the_loop() -> None:
    vt = VirtualTime()
    calls = 0

    async def tick() -> TickResult | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return None

    await asyncio.wait_for(TownLoop("t", tick, clock=vt.clock, sleep=vt.sleep).run(), 5)
    assert calls == 2


async def test_app_starts_town_loops_dispatches_on_sling_and_cancels_them_on_cleanup(aiohttp_client: Any,
                                                                                     tmp_path: Any) -> None:
    vt = VirtualTime()
    container = FakeContainer()
    app = create_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, now=vt.clock,
                     run_reconciler=True, sleep=vt.sleep, container_client=container)
    client = await aiohttp_client(app)
    h = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    resp = await client.post("/api/towns", headers=h, json={"name": "T", "container_url": "http://127.0.0.1:9",
                                                            "control_token": "ctl-0123456789"})
    town_id = (await resp.json())["town_id"]
    await client.post(f"/api/towns/{town_id}/rigs", headers=h,
                      json={"rig_id": "r1", "name": "r", "git_url": "https://e.com/r.git"})
    resp = await client.post(f"/api/towns/{town_id}/sling", headers=h, json={"rig_id": "r1", "title": "go"})
    assert resp.status == 201
    for _ in range(200):
        if container.starts:
            break
        await asyncio.sleep(0.01)
    assert container.starts and container.starts[0]["rig_id"] == "r1"
    service = app[RECONCILER]
    tasks = list(service._tasks.values())
    assert tasks and all(not t.done() for t in tasks)
    await client.close()
    assert all(t.done() for t in tasks) and service._tasks == {}


async def test_http_container_client_contract(aiohttp_client: Any) -> None:
    seen: list[tuple[str, str, Any]] = []

    async def start(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.path, request.headers.get("Authorization", ""), body))
        if body["agent_id"] == "slow":
            await asyncio.sleep(1)
        if body["agent_id"] == "drain":
            return web.json_response({"error": {"code": "DRAINING"}}, status=503)
        return web.json_response({"agent_id": body["agent_id"], "status": "starting"}, status=201)

    async def agents(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization", ""), None))
        return web.json_response({"agents": [{"agent_id": "a1", "status": "running"}, {"agent_id": "a2", "status": "exited"}]})

    ctl = web.Application()
    ctl.router.add_post("/agents/start", start)
    ctl.router.add_get("/agents", agents)
    server = await aiohttp_client(ctl)
    target = Target("town-1", str(server.make_url("")), "ctl-secret-0123456789")
    client = HttpContainerClient(start_timeout_s=0.2, status_timeout_s=0.5)
    try:
        ok = await client.start_agent(target, {"agent_id": "a1"})
        assert ok.started and seen[0][:2] == ("/agents/start", "Bearer ctl-secret-0123456789")
        slow = await client.start_agent(target, {"agent_id": "slow"})
        assert slow.outcome == "timeout" and not slow.started
        drain = await client.start_agent(target, {"agent_id": "drain"})
        assert drain.outcome == "rejected" and drain.status == 503
        before = len(seen)
        assert await client.agent_statuses(target, ["a1", "a2", "ghost"]) == {
            "a1": "running", "a2": "exited", "ghost": "not_found"}
        assert [p for p, _, _ in seen[before:]] == ["/agents"], "one request for every agent"
        dead = Target("town-1", "http://127.0.0.1:9", "x")
        assert (await client.start_agent(dead, {"agent_id": "a"})).outcome == "error"
        assert await client.agent_statuses(dead, ["a", "b"]) == {"a": "unknown", "b": "unknown"}
        assert "ctl-secret" not in repr(target)
    finally:
        await client.aclose()


async def test_a_town_given_up_mid_tick_finishes_that_tick_before_its_loop_ends(tmp_path: Any) -> None:
    """Handing a town to another replica cancelled its loop mid-tick: the dispatch had committed in
    the store's thread but the start call after it never went out, so the agent looked working for
    minutes with no process behind it."""
    db = Database(tmp_path / "w.db")
    service = ReconcilerService(db, TickDeps(container=FakeContainer()))
    in_tick, release = asyncio.Event(), asyncio.Event()
    effects: list[str] = []

    async def tick(town_id: str, fence: int) -> TickResult | None:
        in_tick.set()
        await release.wait()       # the transaction has committed; the effects follow
        effects.append("start sent")
        return TickResult(active=True)

    service._tick = tick  # type: ignore[method-assign]
    service.running = True
    service._adopt("town-1", 1)
    await asyncio.wait_for(in_tick.wait(), 5)
    service._drop("town-1")       # given up (handed back, or taken by another replica)
    release.set()
    await asyncio.wait_for(asyncio.gather(*service._retiring.values()), 5)
    assert effects == ["start sent"] and service.loops == {}
    await service.stop()
    await db.aclose()


async def test_a_replica_that_cannot_renew_its_leases_stops_acting_on_them_before_they_expire(tmp_path: Any) -> None:
    """A replica cut off from the database kept ticking (and its desk delivering) on leases the others
    were about to take: it must give its towns up before the TTL runs out, not after."""
    vt = VirtualTime()
    db = Database(tmp_path / "w.db")
    service = ReconcilerService(db, TickDeps(container=FakeContainer()), clock=vt.clock, sleep=vt.sleep)
    service._tick = lambda town_id, fence: asyncio.sleep(3600)  # type: ignore[method-assign,assignment]
    service.running = True
    service._synced_at = vt.clock()
    service._adopt("town-1", 1)
    service._sync_failed(RuntimeError("db down"))  # one missed renewal: still ours
    assert service.leases.owns("town-1")
    vt.clock.advance(LEASE_TTL_MS / 1000 - RENEW_S + 0.5)
    service._sync_failed(RuntimeError("db down"))
    assert not service.leases.owns("town-1") and service.loops == {}
    await service.stop()
    await db.aclose()
