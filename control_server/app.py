"""The container's HTTP API (docs/contract.md §4), a thin layer over the runtime: parse, validate, call, map errors."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from aiohttp import web

from control_server.auth import auth_middleware
from control_server.openapi import OPENAPI_PATH, openapi_handler, public_openapi
from gastown.core.http import ApiError, error_middleware, path_id, read_model
from supervisor.errors import Draining, SupervisorError
from supervisor.hotswap import hot_swap
from supervisor.models import (
    MessageRequest,
    ModelPatchRequest,
    RefreshTokenRequest,
    StartAgentRequest,
)
from supervisor.runtime import ContainerRuntime

RUNTIME = web.AppKey("runtime", ContainerRuntime)
HYDRATION_WAIT_S = 600.0


def _rt(request: web.Request) -> ContainerRuntime:
    return request.app[RUNTIME]


@web.middleware
async def supervisor_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except SupervisorError as e:
        raise ApiError(e.status, e.code, e.message, **{k: v for k, v in e.detail.items() if v is not None}) from None


def _hydrating() -> ApiError:
    return ApiError(503, "HYDRATING", "boot hydration has not finished")


async def _await_hydration(rt: ContainerRuntime, agent_id: str | None = None) -> None:
    try:
        if agent_id is None:
            await rt.wait_hydrated(HYDRATION_WAIT_S)
        else:
            await rt.wait_agent_hydrated(agent_id, HYDRATION_WAIT_S)
    except asyncio.TimeoutError:
        raise _hydrating() from None


async def alive(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    rt = _rt(request)
    if rt.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not rt.hydrated.is_set():
        return web.json_response({"status": "hydrating"}, status=503)
    return web.json_response({"status": "ready"})


async def health(request: web.Request) -> web.Response:
    return web.json_response(_rt(request).health())


async def start_agent(request: web.Request) -> web.Response:
    rt = _rt(request)
    if rt.draining:
        raise Draining("container is draining; start refused")
    req = await read_model(request, StartAgentRequest)
    try:
        rec, created = await rt.start_agent(req, HYDRATION_WAIT_S)
    except TimeoutError:
        raise _hydrating() from None
    return web.json_response(rec.status(), status=201 if created else 200)


async def list_agents(request: web.Request) -> web.Response:
    return web.json_response({"agents": [a.status() for a in _rt(request).supervisor.agents.values()]})


async def agent_status(request: web.Request) -> web.Response:
    return web.json_response(_rt(request).supervisor.get(path_id(request, "agent_id")).status())


async def stop_agent(request: web.Request) -> web.Response:
    stopped = await _rt(request).supervisor.stop(path_id(request, "agent_id"))
    return web.json_response({"stopped": stopped})


async def message_agent(request: web.Request) -> web.Response:
    agent_id = path_id(request, "agent_id")
    body = await read_model(request, MessageRequest)
    await _rt(request).supervisor.send_message(agent_id, body.prompt)
    return web.json_response({"sent": True}, status=202)


async def patch_model(request: web.Request) -> web.Response:
    rt = _rt(request)
    agent_id = path_id(request, "agent_id")
    rt.supervisor.get(agent_id)
    body = await read_model(request, ModelPatchRequest)
    await _await_hydration(rt, agent_id)
    await hot_swap(rt.supervisor, agent_id, reason="model change", timeout=rt.cfg.hot_swap_timeout_s,
                   model=body.model, small_model=body.small_model, organization_id=body.organization_id)
    return web.json_response({"updated": True})


async def refresh_token(request: web.Request) -> web.Response:
    rt = _rt(request)
    body = await read_model(request, RefreshTokenRequest)
    await _await_hydration(rt)
    return web.json_response(await rt.refresh_token(body.token, body.issued_at))


async def agent_events(request: web.Request) -> web.Response:
    agent_id = path_id(request, "agent_id")
    raw = request.query.get("after", "0")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # input first, then existence
        raise ApiError(400, "INVALID_REQUEST", "after must be a non-negative integer")
    rec = _rt(request).supervisor.get(agent_id)
    return web.json_response({"events": rec.events.after(int(raw))})


async def metrics(request: web.Request) -> web.Response:
    from supervisor.metrics import CONTENT_TYPE

    return web.Response(body=_rt(request).metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    """The runtime (and so every agent and background task) lives exactly as long as the app."""
    runtime = app[RUNTIME]
    await runtime.start()
    yield
    await runtime.shutdown()


def create_app(runtime: ContainerRuntime) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, public_openapi(auth_middleware(runtime.cfg.control_token)), supervisor_errors],
        client_max_size=2 * 1024 * 1024,
    )
    app[RUNTIME] = runtime
    app.cleanup_ctx.append(_runtime_ctx)
    app.router.add_get("/alive", alive)
    app.router.add_get("/ready", ready)
    app.router.add_get("/health", health)
    app.router.add_post("/agents/start", start_agent)
    app.router.add_get("/agents", list_agents)
    app.router.add_get("/agents/{agent_id}/status", agent_status)
    app.router.add_post("/agents/{agent_id}/stop", stop_agent)
    app.router.add_post("/agents/{agent_id}/message", message_agent)
    app.router.add_get("/agents/{agent_id}/events", agent_events)
    app.router.add_patch("/agents/{agent_id}/model", patch_model)
    app.router.add_post("/refresh-token", refresh_token)
    app.router.add_get("/metrics", metrics)
    app.router.add_get(OPENAPI_PATH, openapi_handler)
    return app
