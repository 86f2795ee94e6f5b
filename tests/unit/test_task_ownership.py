"""Each app owns its background tasks through a cleanup context: closing the app leaves none."""
from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from control_server.app import create_app as create_control_app
from supervisor.config import RuntimeConfig
from supervisor.runtime import ContainerRuntime
from worker_api.app import create_app as create_worker_app
from worker_api.appkeys import DB
from worker_api.reconciler.service import RECONCILER

ADMIN = "admin-token-for-ownership-0123"


def _others() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def _settle(before: set[asyncio.Task]) -> set[asyncio.Task]:
    for _ in range(20):  # let cancelled tasks finish unwinding
        left = _others() - before
        if not left:
            return left
        await asyncio.sleep(0.01)
    return _others() - before


async def test_container_app_starts_its_runtime_and_leaves_no_task_after_close(tmp_path: Path):
    before = _others()
    runtime = ContainerRuntime(RuntimeConfig(data_dir=tmp_path / "d", control_token="ctl-0123456789",
                                             kilo_bin=str(tmp_path / "no-kilo")))
    server = TestServer(create_control_app(runtime), host="127.0.0.1")
    await server.start_server()
    await asyncio.wait_for(runtime.hydrated.wait(), 10)
    owned = {t.get_name() for t in _others() - before}
    assert {"runtime:heartbeat", "runtime:memory", "runtime:registry", "runtime:health"} <= owned, owned
    await server.close()
    assert await _settle(before) == set()
    assert runtime.draining  # shut down by the app's cleanup, not by the caller


async def test_worker_app_reconciler_loops_stop_before_the_store_closes(tmp_path: Path):
    before = _others()
    app = create_worker_app(tmp_path / "w.db", admin_token=ADMIN, jwt_secret="j" * 32, run_reconciler=True)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    r = await client.post("/api/towns", json={"name": "t", "container_url": "http://127.0.0.1:9",
                                              "control_token": "ctl-0123456789"},
                          headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status == 201
    town_id = (await r.json())["town_id"]
    r = await client.post(f"/api/towns/{town_id}/agents", json={"role": "polecat", "name": "p"},
                          headers={"Authorization": f"Bearer {ADMIN}"})  # a write arms the town's loop
    assert r.status == 201
    await asyncio.sleep(0.05)
    assert f"reconciler:{town_id}" in {t.get_name() for t in _others()}
    order: list[str] = []
    db, service = app[DB], app[RECONCILER]
    close_db, stop_loops = db.aclose, service.stop

    async def closing_db() -> None:
        order.append("store")
        await close_db()

    async def stopping_loops() -> None:
        order.append("loops")
        await stop_loops()

    db.aclose, service.stop = closing_db, stopping_loops
    await client.close()
    assert order == ["loops", "store"]
    assert await _settle(before) == set()
