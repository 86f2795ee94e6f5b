"""One agent's live views on the container (issue 12, items 3 and 4), with a real kilo: its events as
SSE and a terminal over a WebSocket, each opened with the bearer token or a 60 s stream ticket."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from control_server.streams import TICKETS
from tests.conftest import CONTROL_TOKEN

pytestmark = pytest.mark.kilo


async def running(container: Any, agent_id: str = "polecat-1", **kw: Any) -> None:
    status, body = await container.start_agent(agent_id=agent_id, **kw)
    assert status == 201, body
    await container.wait_status(agent_id, lambda b: b["status"] == "running")


async def ticket(container: Any, agent_id: str = "polecat-1") -> str:
    status, body = await container.request("POST", f"/agents/{agent_id}/stream-ticket")
    assert status == 200 and body["agent_id"] == agent_id and body["ticket"].startswith("gtt_"), body
    return str(body["ticket"])


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: str, timeout: float = 20) -> str:
    seen = ""
    try:
        async with asyncio.timeout(timeout):
            while needle not in seen:
                msg = await ws.receive()
                assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), (msg, seen[-500:])
                seen += msg.data if isinstance(msg.data, str) else msg.data.decode()
    except TimeoutError:
        raise AssertionError(f"{needle!r} never came; the terminal showed {seen[-1000:]!r}") from None
    return seen


async def test_a_terminal_runs_echo_hi_resizes_and_closes_with_the_shell(container) -> None:
    await running(container)
    url = f"{container.url}/agents/polecat-1/pty?cols=80&rows=24&ticket={await ticket(container)}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:  # no bearer: the ticket opens it
        with pytest.raises(aiohttp.WSServerHandshakeError) as spent:
            await http.ws_connect(url)  # once: a terminal ticket is spent by the terminal it opened
        assert spent.value.status == 401
        await ws.send_str("echo hi\n")
        assert "\rhi\r\n" in await read_until(ws, "\rhi\r\n")
        await ws.send_str(json.dumps({"type": "resize", "cols": 100, "rows": 40}))
        await ws.send_str("stty size\n")
        await read_until(ws, "40 100")
        await ws.send_str("pwd\n")
        assert "agents/polecat-1/workspace" in await read_until(ws, "workspace\r\n")
        await ws.send_str("exit\n")
        msg = await ws.receive(timeout=20)
        while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            msg = await ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1000, (msg, ws.close_code)
    rec = container.runtime.supervisor.get("polecat-1")
    for _ in range(50):
        if await rec.client._request("GET", "/pty") == []:
            break
        await asyncio.sleep(0.1)
    assert await rec.client._request("GET", "/pty") == []  # the shell is gone with the socket


async def test_a_terminal_closes_with_a_reason_when_its_agent_stops(container) -> None:
    await running(container)
    headers = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{container.url}/agents/polecat-1/pty",
                                                                headers=headers) as ws:
        await ws.send_str("echo ready\n")
        await read_until(ws, "\rready\r\n")
        status, _ = await container.request("POST", "/agents/polecat-1/stop")
        assert status == 200
        msg = await ws.receive(timeout=30)
        while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            msg = await ws.receive(timeout=30)
        assert ws.close_code == 4409 and "stopped" in (msg.extra or ""), (msg, ws.close_code)
        async with http.ws_connect(f"{container.url}/agents/polecat-1/pty", headers=headers) as again:
            msg = await again.receive(timeout=10)
            assert again.close_code == 4409 and "not running" in (msg.extra or "")
        async with http.ws_connect(f"{container.url}/agents/nobody/pty", headers=headers) as ghost:
            await ghost.receive(timeout=10)
            assert ghost.close_code == 4404


async def test_a_ticket_opens_only_its_own_agent_and_only_for_60_s(container) -> None:
    await running(container)
    await running(container, agent_id="polecat-2", name="Other")
    mine = await ticket(container, "polecat-1")
    async with aiohttp.ClientSession() as http:
        for path in (f"/agents/polecat-2/stream?ticket={mine}&follow=false", "/agents/polecat-1/stream?follow=false",
                     f"/agents/polecat-1/status?ticket={mine}", "/agents/polecat-1/stream?ticket=gtt_forged&follow=false"):
            async with http.get(container.url + path) as r:
                assert r.status == 401, path
        async with http.get(f"{container.url}/agents/polecat-1/stream?ticket={mine}&follow=false") as r:
            assert r.status == 200
        book = container.server.app[TICKETS]
        real = book.clock
        book.clock = lambda: real() + 61
        try:
            async with http.get(f"{container.url}/agents/polecat-1/stream?ticket={mine}&follow=false") as r:
                assert r.status == 401
        finally:
            book.clock = real
    status, err = await container.request("POST", "/agents/nobody/stream-ticket")
    assert status == 404 and err["error"]["code"] == "AGENT_NOT_FOUND"


async def sse_events(resp: aiohttp.ClientResponse, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if "data" in event:
                    out.append({"id": int(event["id"]), **json.loads(event["data"])})
                    if until(out):
                        return out
                event = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                event[key] = value
    return out


async def test_the_agent_stream_replays_follows_and_resumes_by_id(container) -> None:
    await running(container, prompt="first words")
    url = f"{container.url}/agents/polecat-1/stream?ticket={await ticket(container)}"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            first = await sse_events(r, lambda evs: any(e["type"] == "session.idle" for e in evs))
            assert await container.request("POST", "/agents/polecat-1/message", json={"prompt": "second words"})
            live = await sse_events(r, lambda evs: any("second words" in json.dumps(e["data"]) for e in evs))
        ids = [e["id"] for e in first + live]
        assert ids == sorted(set(ids)) and all(e["agent_id"] == "polecat-1" for e in first + live)
        mid = ids[len(ids) // 2]
        headers = {"Last-Event-ID": str(mid), "Authorization": f"Bearer {CONTROL_TOKEN}"}
        async with http.get(f"{container.url}/agents/polecat-1/stream?follow=false", headers=headers) as r:
            resumed = await sse_events(r, lambda evs: False)
        assert [e["id"] for e in resumed][:len([i for i in ids if i > mid])] == [i for i in ids if i > mid]


async def test_a_user_reaches_an_agents_terminal_through_the_worker_and_only_its_own(container, tmp_path) -> None:
    from aiohttp.test_utils import TestServer

    from tests.conftest import ADMIN_TOKEN, JWT_SECRET
    from worker_api.app import create_app as create_worker_app

    await running(container)
    server = TestServer(create_worker_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET,
                                          run_reconciler=False), host="127.0.0.1")
    await server.start_server()
    worker = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as http:
            async def post(path: str, body: Any, token: str = ADMIN_TOKEN) -> Any:
                async with http.post(worker + path, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 201, await r.text()
                    return await r.json()
            ada = (await post("/api/users", {"name": "ada"}))["token"]
            bob = (await post("/api/users", {"name": "bob"}))["token"]
            town = (await post("/api/towns", {"name": "t", "container_url": container.url,
                                              "control_token": CONTROL_TOKEN}, token=ada))["town_id"]
            url = f"{worker}/api/towns/{town}/agents/polecat-1/pty?cols=80&rows=24"
            async with http.ws_connect(url, headers={"Authorization": f"Bearer {ada}"}) as ws:
                await ws.send_str("echo hi\n")
                await read_until(ws, "\rhi\r\n")
                await ws.send_str("exit\n")
                msg = await ws.receive(timeout=20)
                while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    msg = await ws.receive(timeout=20)
                assert ws.close_code == 1000 and msg.extra == "terminal ended", (msg, ws.close_code)
            async with http.ws_connect(f"{worker}/api/towns/{town}/agents/nobody/pty",
                                       headers={"Authorization": f"Bearer {ada}"}) as ws:
                msg = await ws.receive(timeout=20)
                assert ws.close_code == 4404 and "not found" in msg.extra  # the container's reason, passed on
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers={"Authorization": f"Bearer {bob}"})
            assert refused.value.status == 403
    finally:
        await server.close()


async def test_a_terminal_outlives_the_kilo_clients_request_timeout(container) -> None:
    """The agent's kilo client times requests out after 10 s; a terminal is one long request."""
    await running(container)
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{container.url}/agents/polecat-1/pty", headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}) as ws:
        await asyncio.sleep(12)
        await ws.send_str("echo still here\n")
        await read_until(ws, "\rstill here\r\n")
