"""Town-level routes: towns, agents, container registry, prewarm context, token refresh, /alive.

Handlers stay thin: validate the body (``worker_api.models``), run one transaction function on the
db thread, shape the JSON. Auth and the path town are settled by ``worker_api.auth`` beforehand.
"""
from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from gastown.core.http import ApiError, read_json, read_model
from gastown.core.jsonlog import get_logger, register_secret
from worker_api import drain, store
from worker_api.appkeys import CLOCK, CONTAINERS, DB, PRINCIPAL, TOKENS, TOWN, now_ms
from worker_api.dispatch import HttpContainerClient, town_target
from worker_api.front.desk import mayor_fields
from worker_api.models import CreateAgent, CreateTown, parse_registry
from worker_api.registry import check_entries, sealed_entries
from worker_api.db import Conn

log = get_logger("worker_api.towns")


def new_town_id() -> str:
    return "town-" + secrets.token_hex(6)


def new_agent_id(role: str) -> str:
    return f"{role}-{secrets.token_hex(6)}"


async def alive(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def create_town(request: web.Request) -> web.Response:
    body = await read_model(request, CreateTown)
    control_token, container_url = body.control_token, body.container_url
    if container_url is None:  # the worker's provider runs the container: it sets the URL at each start
        if CONTAINERS not in request.app:
            raise ApiError(400, "CONTAINER_REQUIRED", "this worker starts no containers: give container_url and"
                           " control_token")
        control_token, container_url = control_token or "ctl_" + secrets.token_urlsafe(32), ""
    elif control_token is None:
        raise ApiError(400, "CONTAINER_REQUIRED", "a container_url needs its control_token")
    register_secret(control_token)
    town_id = new_town_id()
    await request.app[DB].run(
        store.create_town,
        town_id=town_id,
        name=body.name,
        container_url=container_url,
        control_token=control_token,
        default_model=body.default_model,
        small_model=body.small_model,
        organization_id=body.organization_id,
        now_ms=now_ms(request),
        owner_user_id=request[PRINCIPAL].user_id,
    )
    token = request.app[TOKENS].mint(town_id)  # a new town is generation 0
    log.info("town.created", town=town_id, name=body.name, owner=request[PRINCIPAL].user_id)
    return web.json_response({"town_id": town_id, "container_token": token}, status=201)


def _town_info_tx(conn: Conn, town_id: str, now: int) -> dict[str, Any]:
    town = store.get_town(conn, town_id)
    if town is None:
        raise ApiError(404, "TOWN_NOT_FOUND", f"town {town_id} not found")
    town["draining"] = drain.is_draining(conn, town_id, now)
    return town


async def get_town(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    info = await request.app[DB].run(_town_info_tx, town_id, now_ms(request))
    return web.json_response(info)


async def create_agent(request: web.Request) -> web.Response:
    body = await read_model(request, CreateAgent)
    town_id = request[TOWN]["town_id"]
    agent = await request.app[DB].run(
        store.create_agent,
        town_id,
        agent_id=body.agent_id or new_agent_id(body.role),
        role=body.role,
        name=body.name,
        rig_id=body.rig_id,
        now_ms=now_ms(request),
    )
    log.info("agent.created", town=town_id, agent_id=agent["agent_id"], role=agent["role"])
    return web.json_response(agent, status=201)


async def list_agents(request: web.Request) -> web.Response:
    agents = await request.app[DB].run(store.list_agents, request[TOWN]["town_id"], write=False)
    return web.json_response({"agents": agents})


async def get_registry(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    stored = await request.app[DB].run(store.get_registry, town_id, write=False)
    return web.json_response(sealed_entries(stored, town_id, request.app[TOKENS]))


async def put_registry(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    entries, removed = check_entries(parse_registry(await read_json(request)), town_id, request.app[TOKENS])
    if removed:
        log.warning("registry.secrets_dropped", town=town_id, paths=removed[:50])
    await request.app[DB].run(store.put_registry, town_id, entries, now_ms(request))
    log.info("registry.stored", town=town_id, entries=len(entries))
    return web.json_response({"stored": len(entries), "dropped": removed})


def _prewarm_tx(conn: Conn, town: dict[str, Any]) -> dict[str, Any]:
    mayor = store.get_mayor(conn, town["town_id"])
    ctx: dict[str, Any] = {"agent_id": None, "model": town["default_model"], "small_model": town["small_model"],
                           "organization_id": town["organization_id"]}
    if mayor is not None and town["default_model"]:
        fields = mayor_fields(store.get_town(conn, town["town_id"], with_settings=True) or town, mayor["agent_id"])
        ctx.update(fields, organization_id=town["organization_id"], small_model=fields.get("small_model"))
    return ctx


async def prewarm_context(request: web.Request) -> web.Response:
    """Exactly what the mayor's real start will use (docs/original-system.md bug 7: a guessed model caused
    eviction churn), so the container may prewarm only with these values."""
    ctx = await request.app[DB].run(_prewarm_tx, request[TOWN], write=False)
    return web.json_response(ctx)


async def refresh_container_token(request: web.Request) -> web.Response:
    """A fresh 8 h token of the caller's scope and chain (the caller's may be expired, ≤ 7 days old);
    the admin starts a new runtime chain."""
    town = request[TOWN]
    tokens, claims = request.app[TOKENS], request[PRINCIPAL].claims
    token = tokens.mint(town["town_id"], generation=town["token_generation"]) if claims is None else tokens.refreshed(claims)
    log.info("token.refreshed", town=town["town_id"], by=request[PRINCIPAL].kind, agent_id=request[PRINCIPAL].agent_id)
    return _token_answer(request, token)


def _token_answer(request: web.Request, token: str) -> web.Response:
    """A token just minted and when it expires (epoch seconds)."""
    return web.json_response({"token": token, "expires_at": int(request.app[CLOCK]()) + request.app[TOKENS].ttl_s})


def _agent_role_tx(conn: Conn, town_id: str, agent_id: str) -> str:
    agent = store.get_agent(conn, town_id, agent_id)
    if agent is None:
        raise ApiError(404, "AGENT_NOT_FOUND", f"agent {agent_id} not found")
    return str(agent["role"])


async def agent_token(request: web.Request) -> web.Response:
    """A token acting only as the path agent, for its plugin and git credential helper: the agent
    never holds the runtime's token. The runtime asks again before it expires (a new chain)."""
    town, agent_id = request[TOWN], request.match_info["a"]
    role = await request.app[DB].run(_agent_role_tx, town["town_id"], agent_id, write=False)
    return _token_answer(request, request.app[TOKENS].mint_agent(town["town_id"], agent_id, role,
                                                                 generation=town["token_generation"]))


async def rotate_tokens(request: web.Request) -> web.Response:
    """Revoke every token of the town (a new generation), then give the town's container a new
    runtime token over its control API; it re-issues its agents' tokens with it."""
    town_id = request[TOWN]["town_id"]
    generation = await request.app[DB].run(store.bump_token_generation, town_id)
    token = request.app[TOKENS].mint(town_id, generation=generation)
    target = await request.app[DB].run(town_target, town_id, write=False)
    client = HttpContainerClient()
    try:
        pushed = target is not None and await client.push_token(target, token, request.app[CLOCK]())
    finally:
        await client.aclose()
    log.warning("token.rotated", town=town_id, generation=generation, pushed=pushed, by=request[PRINCIPAL].kind)
    return web.json_response({"token_generation": generation, "token": token, "pushed": pushed})

