"""The container's worker client recovers from an expired token: 401 → refresh → retry once, and a
token close to expiry is refreshed at boot (issue 4 §5)."""
from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import TestServer

from supervisor.config import RuntimeConfig
from supervisor.hydration import Hydrator, token_expires_at
from supervisor.supervisor import Supervisor
from supervisor.worker_client import WorkerClient
from tests.conftest import ADMIN_TOKEN, JWT_SECRET
from worker_api.app import create_app


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def clocked_worker(tmp_path):
    clock = Clock()
    server = TestServer(create_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, now=clock,
                                   run_reconciler=False), host="127.0.0.1")
    await server.start_server()
    admin = WorkerClient(str(server.make_url("")).rstrip("/"), ADMIN_TOKEN, "unused")
    created = await admin._http().post(f"{admin.api_url}/api/towns", json={"name": "t", "container_url": "http://127.0.0.1:9",
                                                                            "control_token": "ctl-0123456789"},
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    body = await created.json()
    await admin.close()
    yield server, clock, body["town_id"], body["container_token"]
    await server.close()


async def test_expired_token_401_refreshes_and_retries_once(clocked_worker):
    server, clock, town_id, token = clocked_worker
    client = WorkerClient(str(server.make_url("")).rstrip("/"), token, town_id)
    clock.t += 9 * 3600  # past the 8 h expiry
    data = await client.call("POST", "/agents/pc-1/heartbeat", {"status": "running", "role": "polecat"})
    assert data == {"heartbeat": True}
    assert client.token != token
    assert token_expires_at(client.token) > clock.t
    await client.close()


async def test_refresh_refused_gives_error_not_loop(clocked_worker):
    server, clock, town_id, token = clocked_worker
    client = WorkerClient(str(server.make_url("")).rstrip("/"), token + "garbage", town_id)
    with pytest.raises(Exception) as err:
        await client.call("POST", "/agents/pc-1/heartbeat", {"status": "running", "role": "polecat"})
    assert getattr(err.value, "status", None) == 401
    await client.close()


async def test_boot_refreshes_token_near_expiry(clocked_worker, tmp_path):
    server, clock, town_id, token = clocked_worker
    exp = token_expires_at(token)
    clock.t = exp - 600  # the worker's clock: ten minutes left
    worker = WorkerClient(str(server.make_url("")).rstrip("/"), token, town_id)
    hydrator = Hydrator(Supervisor(RuntimeConfig(data_dir=tmp_path / "d"), worker), clock=clock)
    await hydrator._refresh_if_near_expiry()
    assert worker.token != token and token_expires_at(worker.token) > exp
    await worker.close()


async def test_boot_keeps_token_far_from_expiry(clocked_worker, tmp_path):
    server, clock, town_id, token = clocked_worker
    worker = WorkerClient(str(server.make_url("")).rstrip("/"), token, town_id)
    hydrator = Hydrator(Supervisor(RuntimeConfig(data_dir=tmp_path / "d"), worker), clock=clock)
    await hydrator._refresh_if_near_expiry()
    assert worker.token == token
    await worker.close()
