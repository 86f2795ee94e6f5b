"""The shared bearer middleware: one refresh and one retry on a 401, never a loop, and concurrent
401s share one refresh."""
from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gastown.core.bearer import BearerAuth


class Service:
    """``GET /thing`` accepts only ``good`` tokens; the refresh hands out ``self.next_token``."""

    def __init__(self, good: set[str], next_token: str | None) -> None:
        self.good, self.next_token, self.hits = good, next_token, Counter()
        app = web.Application()
        app.router.add_get("/thing", self.thing)
        self.server = TestServer(app)

    async def thing(self, request: web.Request) -> web.Response:
        self.hits["thing"] += 1
        await asyncio.sleep(0.01)
        ok = request.headers.get("Authorization", "").removeprefix("Bearer ") in self.good
        return web.json_response({"ok": ok}, status=200 if ok else 401)

    async def refresh(self, session: aiohttp.ClientSession, used: str) -> str | None:
        self.hits["refresh"] += 1
        await asyncio.sleep(0.01)
        return self.next_token


async def _get(service: Service, auth: BearerAuth, n: int = 1) -> list[int]:
    await service.server.start_server()
    try:
        async with aiohttp.ClientSession(middlewares=(auth,)) as s:
            async def one() -> int:
                async with s.get(service.server.make_url("/thing")) as r:
                    return r.status
            return await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await service.server.close()


async def test_expired_token_is_refreshed_once_and_the_request_retried():
    svc = Service(good={"new"}, next_token="new")
    auth = BearerAuth("old", svc.refresh)
    assert await _get(svc, auth) == [200]
    assert auth.token == "new" and svc.hits == {"thing": 2, "refresh": 1}


async def test_refused_refresh_returns_the_401_without_a_retry():
    svc = Service(good=set(), next_token=None)
    auth = BearerAuth("old", svc.refresh)
    assert await _get(svc, auth) == [401]
    assert auth.token == "old" and svc.hits == {"thing": 1, "refresh": 1}


async def test_a_fresh_token_that_is_refused_too_is_not_refreshed_again():
    svc = Service(good=set(), next_token="also-bad")
    auth = BearerAuth("old", svc.refresh)
    assert await _get(svc, auth) == [401]
    assert svc.hits == {"thing": 2, "refresh": 1}


async def test_concurrent_401s_share_one_refresh():
    svc = Service(good={"new"}, next_token="new")
    auth = BearerAuth("old", svc.refresh)
    assert await _get(svc, auth, n=5) == [200] * 5
    assert svc.hits["refresh"] == 1
