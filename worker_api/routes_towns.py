"""Town-level routes: towns, agents, container registry, prewarm context, token refresh, /alive.

Handlers stay thin: validate the body (``worker_api.models``), run one transaction function on the
db thread, shape the JSON. Auth and the path town are settled by ``worker_api.auth`` beforehand.
"""
from __future__ import annotations

import secrets
import sqlite3
from typing import Any

from aiohttp import web

from gastown.core.http import ApiError, read_json, read_model
from gastown.core.jsonlog import get_logger, register_secret
from worker_api import drain, store
from worker_api.appkeys import DB, PRINCIPAL, TOKENS, TOWN, now_ms
from worker_api.front.desk import mayor_fields
from worker_api.models import CreateAgent, CreateTown, parse_registry
from worker_api.registry import check_entries

log = get_logger("worker_api.towns")


def new_town_id() -> str:
    return "town-" + secrets.token_hex(6)


def new_agent_id(role: str) -> str:
    return f"{role}-{secrets.token_hex(6)}"


async def alive(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def create_town(request: web.Request) -> web.Response:
    body = await read_model(request, CreateTown)
    register_secret(body.control_token)
    town_id = new_town_id()
    await request.app[DB].run(
        store.create_town,
        town_id=town_id,
        name=body.name,
        container_url=body.container_url,
        control_token=body.control_token,
        default_model=body.default_model,
        small_model=body.small_model,
        organization_id=body.organization_id,
        now_ms=now_ms(request),
        owner_user_id=request[PRINCIPAL].user_id,
    )
    token = request.app[TOKENS].mint(town_id)
    log.info("town.created", town=town_id, name=body.name, owner=request[PRINCIPAL].user_id)
    return web.json_response({"town_id": town_id, "container_token": token}, status=201)


def _town_info_tx(conn: sqlite3.Connection, town_id: str, now: int) -> dict[str, Any]:
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
    entries = await request.app[DB].run(store.get_registry, request[TOWN]["town_id"], write=False)
    return web.json_response(entries)


async def put_registry(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    entries, removed = check_entries(parse_registry(await read_json(request)))
    if removed:
        log.warning("registry.secrets_dropped", town=town_id, paths=removed[:50])
    await request.app[DB].run(store.put_registry, town_id, entries, now_ms(request))
    log.info("registry.stored", town=town_id, entries=len(entries))
    return web.json_response({"stored": len(entries), "dropped": removed})


def _prewarm_tx(conn: sqlite3.Connection, town: dict[str, Any]) -> dict[str, Any]:
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
    """A fresh 8 h token for the path town; the caller's token may be expired (≤ 7 days old)."""
    town_id = request[TOWN]["town_id"]
    token = request.app[TOKENS].mint(town_id)
    log.info("token.refreshed", town=town_id, by=request[PRINCIPAL].kind)
    return web.json_response({"token": token})

