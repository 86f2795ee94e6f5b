"""``/api/towns/{t}/rigs/{r}/scm``: configure a rig's GitHub token, auto-merge delay and merge strategy.

Why admin-only for writes: a token is a credential to the user's repository; an agent holding the
town's container token must not swap it. Reads say only whether a token is set, never the token.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from aiohttp import web
from pydantic import Field

from gastown.core.http import path_id, read_model
from gastown.core.jsonlog import get_logger, register_secret
from worker_api import beads as bx
from worker_api import settings
from worker_api.appkeys import DB, TOWN
from worker_api.models import Body
from worker_api.scm import tokens
from worker_api.db import Conn

log = get_logger("worker_api.scm")


class ScmConfig(Body):
    """Absent field: unchanged. ``github_token: null``: remove the token."""

    github_token: Optional[Annotated[str, Field(min_length=8, max_length=4096, pattern=r"^[\x21-\x7e]+$")]] = None
    auto_merge_delay_minutes: Optional[Annotated[int, Field(ge=0, le=7 * 24 * 60)]] = None
    merge_strategy: Optional[Literal["direct", "pr"]] = None


def _view(conn: Conn, town_id: str, rig_id: str) -> dict[str, Any]:
    rig = bx.get_rig(conn, town_id, rig_id)
    if rig is None:
        raise bx.not_found("rig", rig_id)
    return {"rig_id": rig_id, "provider": "github",
            "token_configured": tokens.get_rig_token(conn, town_id, rig_id) is not None,
            "auto_merge_delay_minutes": tokens.auto_merge_delay_ms(rig) / 60_000,
            "merge_strategy": settings.effective_tx(conn, town_id, rig).merge_strategy}


def _put_tx(conn: Conn, town_id: str, rig_id: str, body: ScmConfig) -> dict[str, Any]:
    _view(conn, town_id, rig_id)  # 404 for an unknown rig before any write
    if "github_token" in body.model_fields_set:
        tokens.set_rig_token(conn, town_id, rig_id, body.github_token)
    if "auto_merge_delay_minutes" in body.model_fields_set:
        tokens.set_auto_merge_delay(conn, town_id, rig_id, body.auto_merge_delay_minutes)
    if "merge_strategy" in body.model_fields_set:
        tokens.set_rig_config(conn, town_id, rig_id, tokens.MERGE_STRATEGY_KEY, body.merge_strategy)
    return _view(conn, town_id, rig_id)


async def put_scm(request: web.Request) -> web.Response:
    body = await read_model(request, ScmConfig)
    if body.github_token:
        register_secret(body.github_token)
    town_id, rig_id = request[TOWN]["town_id"], path_id(request, "r")
    view = await request.app[DB].run(_put_tx, town_id, rig_id, body)
    log.info("rig.scm_configured", town=town_id, rig_id=rig_id, token_configured=view["token_configured"],
             auto_merge_delay_minutes=view["auto_merge_delay_minutes"], merge_strategy=view["merge_strategy"])
    return web.json_response(view)


async def get_scm(request: web.Request) -> web.Response:
    view = await request.app[DB].run(_view, request[TOWN]["town_id"], path_id(request, "r"), write=False)
    return web.json_response(view)


async def _register_stored_tokens(app: web.Application) -> None:
    """Tokens already in the store must be scrubbed from logs after a restart too."""
    for token in await app[DB].run(lambda conn: tokens.all_tokens(conn), write=False):
        register_secret(token)



def install(app: web.Application) -> None:
    app.on_startup.append(_register_stored_tokens)
