"""The mayor's routes on the worker (issue 12, item 2): a user's message is queued for the town's
mayor and handed to the desk (``desk.py``), which starts the mayor if needed and delivers it as a
user turn; the mayor's status; and the conversation, read back from the event archive so it survives
the container too.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable

from aiohttp import web
from pydantic import Field

from gastown.core.http import ApiError, read_model
from worker_api import store
from worker_api.appkeys import BUS, CONTAINERS, DB, LEASES, TOWN, now_ms
from worker_api.db import Conn, from_json
from worker_api.dispatch import Target, town_target
from worker_api.front.desk import MayorDesk, enqueue_tx
from worker_api.models import Body
from worker_api.reconciler.service import RECONCILER


class MayorMessage(Body):
    text: Annotated[str, Field(min_length=1, max_length=60000)]


DESK = web.AppKey("worker_mayor_desk", MayorDesk)


async def post_message(request: web.Request) -> web.Response:
    body = await read_model(request, MayorMessage)
    town_id = request[TOWN]["town_id"]
    message_id, agent_id = await request.app[DB].run(enqueue_tx, town_id, body.text, now_ms(request))
    request.app[DESK].wake(town_id)
    return web.json_response({"accepted": True, "agent_id": agent_id, "message_id": message_id}, status=202)


def _mayor_tx(conn: Conn, town_id: str) -> tuple[dict[str, Any] | None, Target | None]:
    return store.get_mayor(conn, town_id), town_target(conn, town_id)


def _last_event_tx(conn: Conn, town_id: str, agent_id: str) -> int:
    row = conn.execute("SELECT MAX(seq) FROM agent_events WHERE town_id = ? AND agent_id = ?", (town_id, agent_id))
    return int(row.fetchone()[0] or 0)


async def get_mayor(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    mayor, target = await request.app[DB].run(_mayor_tx, town_id, write=False)
    if mayor is None or target is None:
        raise ApiError(404, "AGENT_NOT_FOUND", "this town has no mayor yet: send it a message")
    info = await request.app[DESK].client.agent_status(target, mayor["agent_id"])
    last = await request.app[DB].run(_last_event_tx, town_id, mayor["agent_id"], write=False)
    return web.json_response({"agent_id": mayor["agent_id"], "status": (info or {}).get("status", "unknown"),
                              "model": (info or {}).get("model"), "session_id": (info or {}).get("session_id"),
                              "last_activity_at": (info or {}).get("last_activity_at") or mayor.get("last_activity_at"),
                              "last_event_id": last})


def conversation(conn: Conn, town_id: str, agent_id: str) -> list[dict[str, Any]]:
    """User and assistant messages (text only) of the agent, rebuilt from its archived events."""
    roles: dict[str, str] = {}
    parts: dict[str, dict[str, str]] = {}
    first: dict[str, tuple[int, int]] = {}
    for etype, data, seq, ts in conn.execute(
            "SELECT type, data, seq, ts FROM agent_events WHERE town_id = ? AND agent_id = ? AND type IN"
            " ('message.updated', 'message.part.updated') ORDER BY seq", (town_id, agent_id)):
        d = from_json(data, {}) or {}
        if etype == "message.updated":
            info = d.get("info") or {}
            if isinstance(info.get("id"), str) and info.get("role") in ("user", "assistant"):
                roles[info["id"]] = info["role"]
                first.setdefault(info["id"], (seq, ts))
            continue
        part = d.get("part") or {}
        mid = part.get("messageID")
        if part.get("type") == "text" and isinstance(mid, str) and isinstance(part.get("text"), str) \
                and not part.get("synthetic"):
            parts.setdefault(mid, {})[str(part.get("id"))] = part["text"]
            first.setdefault(mid, (seq, ts))
    out = []
    for mid in sorted(first, key=lambda m: first[m][0]):
        text = "\n".join(parts.get(mid, {}).values()).strip()
        if mid in roles and text:
            out.append({"n": len(out) + 1, "role": roles[mid], "text": text, "ts": first[mid][1]})
    return out


async def get_messages(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    raw = request.query.get("after", "0")
    if not raw.isdigit() or len(raw) > 9:
        raise ApiError(400, "INVALID_REQUEST", "after must be a non-negative integer")
    mayor, _ = await request.app[DB].run(_mayor_tx, town_id, write=False)
    if mayor is None:
        return web.json_response({"messages": []})
    messages = await request.app[DB].run(conversation, town_id, mayor["agent_id"], write=False)
    return web.json_response({"messages": [m for m in messages if m["n"] > int(raw)]})


def install(app: web.Application, clock_ms: Callable[[], int]) -> None:
    async def _desk(app: web.Application):  # noqa: ANN202
        service = app.get(RECONCILER)

        def owns(town_id: str) -> bool:  # without loops (tests on a fake clock) this replica is all there is
            return service is None or not service.enabled or app[LEASES].owns(town_id)
        app[DESK] = MayorDesk(app[DB], clock_ms, containers=app.get(CONTAINERS), owns=owns, bus=app[BUS])
        if service is not None:
            service.on_adopt(app[DESK].adopted)  # what waited for the town's mayor while nobody held the town
        app[DESK].start()
        yield
        await app[DESK].close()

    app.cleanup_ctx.append(_desk)
