"""The container's HTTP API (docs/contract.md §4), a thin layer over the runtime: parse, validate,
call, map errors. Every route is declared once in :data:`ROUTES` (``gastown.core.api``): the
router, the public paths of the auth middleware and ``/openapi.json`` all come from it."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from aiohttp import web

from control_server import streams
from control_server.auth import auth_middleware
from control_server.keys import RUNTIME
from gastown.contract import container_api as ans
from gastown.core.api import PUBLIC, Document, Reply, Route, mount
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


OPENAPI_PATH = "/openapi.json"
ERRORS = {
    400: "Invalid request: bad JSON, a body failing validation, or a bad path id (INVALID_JSON, INVALID_REQUEST, INVALID_ID)",
    401: "Missing or wrong bearer token (UNAUTHORIZED)",
    404: "Unknown agent (AGENT_NOT_FOUND)",
    409: "Conflict (AGENT_NOT_RUNNING, TOWN_MISMATCH)",
    413: "Body larger than the limit (PAYLOAD_TOO_LARGE)",
    422: "The provider does not offer the requested model (MODEL_NOT_AVAILABLE)",
    502: "kilo could not be brought up, swapped or reached (AGENT_START_FAILED, MODEL_UPDATE_FAILED, AGENT_UNREACHABLE); details in extra error keys",
    503: "Draining, boot hydration not finished in time, or not enough memory (DRAINING, HYDRATING, INSUFFICIENT_MEMORY)",
}
TICKET_AUTH = "bearer_or_ticket"
FOLLOW = {"name": "follow", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]},
          "description": "false: send the buffered events, then end the stream"}
TICKET = {"name": "ticket", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 200},
          "description": "a stream ticket of this agent, instead of the bearer token"}
COLS = {"name": "cols", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
ROWS = {"name": "rows", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
AFTER = {"name": "after", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999, "default": 0}}


DOCUMENT = Document(lambda: ROUTES, title="gastown container control server", bearer_description="GASTOWN_CONTROL_TOKEN",
                    description="The per-town container's HTTP API (docs/contract.md §4). Errors are "
                    '{"error": {"code", "message"}} with a fitting status; never a 500 for bad input.',
                    error_descriptions=ERRORS)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/alive", alive, "alive", {200: Reply("Alive", ans.Alive)},
          summary="Liveness: 200 while the process runs", auth=PUBLIC),
    Route("GET", "/ready", ready, "ready", {200: Reply("Ready", ans.Ready), 503: Reply("Hydrating or draining", ans.NotReady)},
          summary="Readiness: boot hydration finished and not draining", auth=PUBLIC),
    Route("GET", "/health", health, "health", {200: Reply("Health", ans.Health)}, summary="Runtime summary", errors=(401,)),
    Route("POST", "/agents/start", start_agent, "startAgent",
          {201: Reply("Started", ans.AgentStatus), 200: Reply("Already running with the same request", ans.AgentStatus)},
          summary="Start an agent (waits for boot hydration)", request=StartAgentRequest,
          description="The same request on a running agent returns it with 200 (no second process or session); "
          "a different request restarts it (201).", errors=(400, 401, 409, 413, 502, 503)),
    Route("GET", "/agents", list_agents, "listAgents", {200: Reply("Agents", ans.AgentList)},
          summary="Every agent record", errors=(401,)),
    Route("GET", "/agents/{agent_id}/status", agent_status, "agentStatus", {200: Reply("The agent", ans.AgentStatus)},
          errors=(400, 401, 404)),
    Route("POST", "/agents/{agent_id}/stop", stop_agent, "stopAgent", {200: Reply("Stopped", ans.Stopped)},
          summary="Stop an agent; stopping a stopped agent is 200 {stopped: false}", errors=(400, 401, 404)),
    Route("POST", "/agents/{agent_id}/message", message_agent, "messageAgent", {202: Reply("Sent", ans.Sent)},
          summary="Send a prompt to a running agent", request=MessageRequest, errors=(400, 401, 404, 409, 413, 502)),
    Route("GET", "/agents/{agent_id}/events", agent_events, "agentEvents", {200: Reply("Events", ans.EventPage)},
          summary="Buffered events of the agent's session with id > after (bounded buffer)", query=(AFTER,),
          errors=(400, 401, 404)),
    Route("PATCH", "/agents/{agent_id}/model", patch_model, "patchModel", {200: Reply("Updated", ans.ModelUpdated)},
          summary="Change a running agent's model; the session keeps its history (waits for hydration)",
          request=ModelPatchRequest, errors=(400, 401, 404, 409, 413, 422, 502, 503)),
    Route("POST", "/refresh-token", refresh_token, "refreshToken", {200: Reply("Result", ans.RefreshResult)},
          summary="Adopt a new worker token and restart running agents with it (waits for hydration)",
          description="An issued_at older than the one held is ignored (refreshed: false).", request=RefreshTokenRequest,
          errors=(400, 401, 413, 503)),
    Route("POST", "/agents/{agent_id}/stream-ticket", streams.stream_ticket, "streamTicket",
          {200: Reply("A ticket", ans.StreamTicket)}, errors=(400, 401, 404),
          summary="A 60 s ticket that opens this agent's stream or terminal without the bearer token (?ticket=)"),
    Route("GET", "/agents/{agent_id}/stream", streams.agent_stream, "agentStream",
          {200: Reply("Server-Sent Events", schema=ans.SSE_EVENT, media="text/event-stream")}, auth=TICKET_AUTH,
          summary="The agent's events as Server-Sent Events, resumable with Last-Event-ID (bearer or ?ticket=)",
          query=(AFTER, FOLLOW, TICKET), errors=(400, 401, 404)),
    Route("GET", "/agents/{agent_id}/pty", streams.agent_pty, "agentPty",
          {101: Reply("Switching to a WebSocket: the terminal", schema={"type": "string"}, media="application/octet-stream")},
          auth=TICKET_AUTH, query=(COLS, ROWS, TICKET), errors=(400, 401),
          summary="A login shell in the agent's workspace over a WebSocket (bearer or ?ticket=); close codes: "
          "1000 shell exited, 4404 unknown agent, 4409 not running, 1011 kilo failed"),
    Route("GET", "/metrics", metrics, "metrics", {200: Reply("Metrics", schema={"type": "string"}, media="text/plain")},
          summary="Prometheus metrics (text exposition format)", errors=(401,)),
    Route("GET", OPENAPI_PATH, DOCUMENT.handler, "openapi", {200: Reply("OpenAPI document", schema={"type": "object"})},
          summary="This document", auth=PUBLIC),
)
PUBLIC_PATHS = frozenset(r.path for r in ROUTES if r.public)
TICKET_PATHS = frozenset(r.path for r in ROUTES if r.auth == TICKET_AUTH)


def build_openapi() -> dict[str, Any]:
    """A fresh copy of the control server's OpenAPI document, generated from :data:`ROUTES`."""
    return DOCUMENT.build()


def create_app(runtime: ContainerRuntime) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024)
    streams.install(app)
    app.middlewares.extend([error_middleware, auth_middleware(runtime.cfg.control_token, PUBLIC_PATHS, TICKET_PATHS,
                                                              app[streams.TICKETS].valid), supervisor_errors])
    app[RUNTIME] = runtime
    app.cleanup_ctx.append(_runtime_ctx)
    mount(app, ROUTES)
    return app
