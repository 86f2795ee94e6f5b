"""``POST /api/users`` (admin) and ``GET /api/towns`` (the caller's towns)."""
from __future__ import annotations

from aiohttp import web

from gastown.core.http import read_model
from gastown.core.jsonlog import get_logger
from worker_api import store, users
from worker_api.appkeys import DB, PRINCIPAL, now_ms
from worker_api.models import Body, ShortText

log = get_logger("worker_api.users")


class CreateUser(Body):
    name: ShortText = "user"


async def create_user(request: web.Request) -> web.Response:
    body = await read_model(request, CreateUser)
    user = await request.app[DB].run(users.create_user, name=body.name, now_ms=now_ms(request))
    log.info("user.created", user_id=user["user_id"])
    return web.json_response(user, status=201)


async def list_towns(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    towns = await request.app[DB].run(store.list_towns, principal.user_id if principal.kind == "user" else None,
                                      write=False)
    return web.json_response({"towns": towns})
