"""``GET/PATCH /api/towns/{t}/settings`` and ``PATCH /api/towns/{t}/rigs/{r}`` (policy in ``settings``).

Users only (the admin or the town's owner): an agent that could set another rig's env vars or git
identity would reach beyond its own rig."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from gastown.core.http import path_id, read_model
from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import settings as st
from worker_api.appkeys import DB, TOWN
from worker_api.db import Conn, to_json
from worker_api.front.mayor import DESK
from worker_api.reconciler.prompts import DEFAULT_MODEL

log = get_logger("worker_api.settings")


def _town(request: web.Request) -> str:
    return str(request[TOWN]["town_id"])


async def get_settings(request: web.Request) -> web.Response:
    town = await request.app[DB].run(st.load_town, _town(request), write=False)
    return web.json_response(st.town_settings(town))


async def patch_settings(request: web.Request) -> web.Response:
    body = await read_model(request, st.SettingsPatch, allow_empty=True)
    town_id = _town(request)
    settings = await request.app[DB].run(st.patch_town_tx, town_id, body)
    log.info("settings.updated", town=town_id, fields=sorted(body.model_fields_set),
             env_keys=sorted((body.env_vars or {}).keys()))  # names only: values may be secrets
    if body.model_fields_set & {"default_model", "small_model"}:  # a reset pushes the default the mayor now starts with
        request.app[DESK].push_model(town_id, settings["default_model"] or DEFAULT_MODEL, settings["small_model"])
    return web.json_response(settings)


def _patch_rig_tx(conn: Conn, town_id: str, rig_id: str, body: st.RigPatch) -> dict[str, Any]:
    rig = bx.get_rig(conn, town_id, rig_id)
    if rig is None:
        raise bx.not_found("rig", rig_id)
    config = st.patch_rig_config(rig["config"], body)
    conn.execute("UPDATE rigs SET config = ?, name = COALESCE(?, name) WHERE town_id = ? AND rig_id = ?",
                 (to_json(config), body.name, town_id, rig_id))
    return bx.get_rig(conn, town_id, rig_id) or {}


async def patch_rig(request: web.Request) -> web.Response:
    body = await read_model(request, st.RigPatch, allow_empty=True)
    town_id, rig_id = _town(request), path_id(request, "r")
    rig = await request.app[DB].run(_patch_rig_tx, town_id, rig_id, body)
    log.info("rig.updated", town=town_id, rig_id=rig_id, fields=sorted(body.model_fields_set))
    return web.json_response(rig)
