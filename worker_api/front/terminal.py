"""A user's terminal on one of the town's agents (issue 12, item 4): ``GET /api/towns/{t}/agents/{a}/pty``
relays a WebSocket to the town's container (``GET /agents/{id}/pty`` with the control token, which
never reaches the user). Frames pass through both ways unchanged (input, output and the resize
message); the container's close code and reason are passed on, so a user learns why a terminal
ended (see ``control_server.streams``). The worker adds 4404 for a town without a container and
1011 for a container it cannot reach.
"""
from __future__ import annotations

import asyncio
import weakref

import aiohttp
from aiohttp import web

from gastown.core.http import ApiError, path_id
from gastown.core.jsonlog import get_logger
from worker_api.appkeys import DB, TOWN
from worker_api.dispatch import Target, town_target
from worker_api.db import Conn

log = get_logger("worker_api.terminal")

SOCKETS = web.AppKey("worker_terminal_sockets", weakref.WeakSet)
CONNECT_TIMEOUT_S = 30.0
NOT_SENDABLE = frozenset({1005, 1006, 1015})


def _size(request: web.Request) -> dict[str, str]:
    out = {}
    for key in ("cols", "rows"):
        raw = request.query.get(key)
        if raw is None:
            continue
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise ApiError(400, "INVALID_REQUEST", f"{key} must be an integer from 1 to 1000")
        out[key] = raw
    return out


def _target_tx(conn: Conn, town_id: str) -> Target | None:
    return town_target(conn, town_id)


async def agent_pty(request: web.Request) -> web.WebSocketResponse:
    town_id, agent_id = str(request[TOWN]["town_id"]), path_id(request, "a")
    size = _size(request)
    target = await request.app[DB].run(_target_tx, town_id, write=False)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    if target is None or not target.url:
        await ws.close(code=4404, message=b"this town has no container")
        return ws
    session_timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=session_timeout) as http:
        try:
            upstream = await http.ws_connect(f"{target.url.rstrip('/')}/agents/{agent_id}/pty", params=size,
                                             headers={"Authorization": f"Bearer {target.token}"}, heartbeat=30.0,
                                             timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                             max_msg_size=1 << 20)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            log.warning("terminal.container_unreachable", town=town_id, agent_id=agent_id, error=type(e).__name__)
            await ws.close(code=1011, message=b"the town's container is not reachable")
            return ws
        log.info("terminal.opened", town=town_id, agent_id=agent_id)
        try:
            reason = await _relay(ws, upstream)
        finally:
            await upstream.close()
        if not ws.closed:
            code = upstream.close_code or 1011
            code = 1011 if code in NOT_SENDABLE else code  # 1005/1006/1015 only describe a connection locally
            await ws.close(code=code, message=(reason or "terminal ended").encode()[:120])
    log.info("terminal.closed", town=town_id, agent_id=agent_id, code=upstream.close_code)
    return ws


async def _relay(ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> str | None:
    """Frames both ways until one side ends; the container's close reason, when it ended."""

    async def down() -> str | None:
        while True:
            msg = await upstream.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
                return msg.extra if isinstance(msg.extra, str) else None

    async def up() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)

    downstream, client = asyncio.create_task(down()), asyncio.create_task(up())
    tasks = [downstream, client]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return downstream.result() if downstream.done() and not downstream.cancelled() \
            and downstream.exception() is None else None
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def close_sockets(app: web.Application) -> None:
    for ws in list(app[SOCKETS]):
        await ws.close(code=1001, message=b"the worker is shutting down")


def install(app: web.Application) -> None:
    app[SOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(close_sockets)
