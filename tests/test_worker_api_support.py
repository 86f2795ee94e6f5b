"""Fixtures shared by the worker API tests (imported by the other test_worker_api* files)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from worker_api.app import create_app
from worker_api.appkeys import DB
from worker_api.db import Database

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef"
CONTROL_TOKEN = "control-token-abcdef-0123456789"
T0 = 1_800_000_000.0  # epoch seconds the fake clock starts at


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    @property
    def ms(self) -> int:
        return int(self.t * 1000)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)


@dataclass
class Worker:
    client: TestClient
    clock: FakeClock

    @property
    def db(self) -> Database:
        return self.client.server.app[DB]

    async def call(
        self, method: str, path: str, *, token: str | None = None, json: Any = None, data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        h = dict(headers or {})
        if token is not None:
            h.update(bearer(token))
        kwargs: dict[str, Any] = {"headers": h}
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        resp = await self.client.request(method, path, **kwargs)
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        return resp.status, await resp.json()

    async def create_town(self, **overrides: Any) -> tuple[str, str]:
        body = {"name": "Town", "container_url": "http://127.0.0.1:8080", "control_token": CONTROL_TOKEN,
                "default_model": "kilo/anthropic/claude-sonnet-4", "small_model": "kilo/openai/gpt-5-nano",
                "organization_id": "org-1"}
        body.update(overrides)
        status, data = await self.call("POST", "/api/towns", token=ADMIN_TOKEN, json=body)
        assert status == 201, data
        return data["town_id"], data["container_token"]

    async def create_agent(self, town_id: str, role: str = "polecat", **overrides: Any) -> dict[str, Any]:
        body = {"role": role, "name": overrides.pop("name", f"{role}-name")}
        body.update(overrides)
        status, data = await self.call("POST", f"/api/towns/{town_id}/agents", token=ADMIN_TOKEN, json=body)
        assert status == 201, data
        return data


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def worker(aiohttp_client: Any, store_url: str, clock: FakeClock) -> Worker:
    app = create_app(store_url, admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, now=clock)
    client = await aiohttp_client(app)
    return Worker(client, clock)


@pytest.fixture
async def town(worker: Worker) -> tuple[str, str]:
    """(town_id, container_token) of a fresh town."""
    return await worker.create_town()
