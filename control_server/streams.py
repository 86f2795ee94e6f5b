"""Live views of one agent (issue 12, items 3 and 4): its events as Server-Sent Events, a terminal on
its kilo server as a WebSocket, and the short-lived tickets a browser opens them with.

Why a relay and not kilo's own URLs: kilo listens on 127.0.0.1 behind its per-agent password, which
never leaves the container. The terminal is a fresh login shell in the agent's workspace, created on
kilo's PTY API when the socket opens and removed when it closes (no shells left behind). Client
frames are the terminal's input, except a JSON text frame ``{"type": "resize", "cols", "rows"}``.
Close codes say why a terminal ended: 1000 the shell exited, 1001 the container is shutting down,
4404 no such agent, 4409 the agent is not running (or stopped during the session), 1011 kilo failed.
"""
from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp_sse import sse_response

from control_server.keys import RUNTIME
from control_server.tickets import TicketBook
from gastown.core.http import ApiError, path_id
from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.kilo_client import KiloApiError
from supervisor.states import AgentState

log = get_logger("control_server.streams")

TICKETS = web.AppKey("tickets", TicketBook)
SOCKETS = web.AppKey("sockets", weakref.WeakSet)
LIVENESS_S = 15.0          # how often an idle stream checks that its agent is still the same life
PTY_SHELL = ("bash", ["-l"])


def _supervisor(request: web.Request) -> Any:
    return request.app[RUNTIME].supervisor


async def stream_ticket(request: web.Request) -> web.Response:
    agent_id = path_id(request, "agent_id")
    _supervisor(request).get(agent_id)  # 404 for an agent this container does not know
    ticket, expires = request.app[TICKETS].issue(agent_id)
    return web.json_response({"ticket": ticket, "expires_at": int(expires * 1000), "agent_id": agent_id})


def _after(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(400, "INVALID_REQUEST", "after / Last-Event-ID must be a non-negative integer")
    return int(raw)


def _frame(agent_id: str, event: dict[str, Any]) -> str:
    return json.dumps({"agent_id": agent_id, "type": event["type"], "data": event["data"], "ts": event["ts"]})


async def agent_stream(request: web.Request) -> web.StreamResponse:
    """The agent's events with id > ``after`` (the buffer), then live ones; ``follow=false`` ends after
    the buffer. Ends when the agent's record is replaced (a restart): the client resumes by id."""
    agent_id = path_id(request, "agent_id")
    after = _after(request)
    follow = request.query.get("follow", "true")
    if follow not in ("true", "false"):
        raise ApiError(400, "INVALID_REQUEST", "follow must be true or false")
    sup = _supervisor(request)
    rec: AgentRecord = sup.get(agent_id)
    queue = rec.events.subscribe()
    try:
        async with sse_response(request) as resp:
            last = after
            while True:
                page = rec.events.after(last)
                for event in page:
                    await resp.send(_frame(agent_id, event), id=str(event["id"]), event="agent_event")
                    last = event["id"]
                if len(page) < 500:
                    break
            while follow == "true":
                try:
                    event = await asyncio.wait_for(queue.get(), LIVENESS_S)
                except asyncio.TimeoutError:
                    if sup.agents.get(agent_id) is not rec or not resp.is_connected():
                        break  # a new life of the agent (resume by id), or the client is gone
                    continue
                if event is None:
                    break  # fell behind: the client resumes from the last id it got
                if event["id"] > last:
                    await resp.send(_frame(agent_id, event), id=str(event["id"]), event="agent_event")
                    last = event["id"]
        return resp
    finally:
        rec.events.unsubscribe(queue)


def _size(request: web.Request) -> tuple[int, int]:
    out = []
    for key, default in (("cols", 80), ("rows", 24)):
        raw = request.query.get(key, str(default))
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise ApiError(400, "INVALID_REQUEST", f"{key} must be an integer from 1 to 1000")
        out.append(int(raw))
    return out[0], out[1]


async def agent_pty(request: web.Request) -> web.WebSocketResponse:
    agent_id = path_id(request, "agent_id")
    cols, rows = _size(request)
    sup = _supervisor(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    rec = sup.agents.get(agent_id)
    if rec is None:
        await ws.close(code=4404, message=f"agent {agent_id} not found".encode())
        return ws
    if rec.state != AgentState.running or rec.client is None:
        await ws.close(code=4409, message=f"agent {agent_id} is not running".encode())
        return ws
    client = rec.client
    try:
        shell, args = PTY_SHELL
        pty_id = await client.pty_create(command=shell, args=args, cwd=str(rec.paths.workdir), cols=cols, rows=rows,
                                         title=f"terminal of {agent_id}")
    except (KiloApiError, RuntimeError) as e:
        log.warning("pty.open_failed", agent_id=agent_id, error=str(e))
        await ws.close(code=1011, message=b"the terminal could not be opened")
        return ws
    log.info("pty.opened", agent_id=agent_id, pty_id=pty_id)
    try:
        upstream = await client.pty_connect(pty_id)
    except (KiloApiError, RuntimeError) as e:
        log.warning("pty.connect_failed", agent_id=agent_id, error=str(e))
        await ws.close(code=1011, message=b"the terminal could not be reached")
        await _remove(client, pty_id)
        return ws
    try:
        ended_by = await _relay(ws, upstream, client, pty_id)
    finally:
        await upstream.close()
        await _remove(client, pty_id)
    if not ws.closed:
        if sup.agents.get(agent_id) is not rec or rec.state != AgentState.running:
            await ws.close(code=4409, message=f"agent {agent_id} stopped".encode())
        else:
            await ws.close(code=1000 if ended_by == "shell" else 1011,
                           message=b"terminal ended" if ended_by == "shell" else b"terminal connection lost")
    log.info("pty.closed", agent_id=agent_id, pty_id=pty_id, ended_by=ended_by)
    return ws


async def _remove(client: Any, pty_id: str) -> None:
    try:
        await client.pty_remove(pty_id)
    except (KiloApiError, RuntimeError):
        pass  # already gone with its shell, or with the agent's server (its client closed: RuntimeError)


async def _relay(ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, client: Any,
                 pty_id: str) -> str:
    """Bytes both ways until one side ends; which one (``client``, ``shell`` or ``error``)."""

    async def down() -> str:
        async for msg in upstream:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY and not msg.data.startswith(b"\x00"):  # \x00: kilo's meta
                await ws.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.ERROR:
                return "error"
        return "shell"

    async def up() -> str:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                resize = _resize(msg.data)
                if resize is not None:
                    try:
                        await client.pty_resize(pty_id, *resize)
                    except (KiloApiError, RuntimeError) as e:
                        log.warning("pty.resize_failed", pty_id=pty_id, error=str(e))
                    continue
                await upstream.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await upstream.send_str(msg.data.decode("utf-8", "replace"))
        return "client"

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    except (aiohttp.ClientError, ConnectionResetError, RuntimeError):  # RuntimeError: the agent's client closed
        return "error"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _resize(text: str) -> tuple[int, int] | None:
    if not text.startswith("{"):
        return None
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if not isinstance(msg, dict) or msg.get("type") != "resize":
        return None
    cols, rows = msg.get("cols"), msg.get("rows")
    if isinstance(cols, int) and isinstance(rows, int) and 1 <= cols <= 1000 and 1 <= rows <= 1000:
        return cols, rows
    return None


async def close_sockets(app: web.Application) -> None:
    """On shutdown: every open terminal is told why it ends (1001), before the agents stop."""
    for ws in list(app[SOCKETS]):
        await ws.close(code=1001, message=b"container shutting down")


def install(app: web.Application) -> None:
    app[TICKETS] = TicketBook()
    app[SOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(close_sockets)
