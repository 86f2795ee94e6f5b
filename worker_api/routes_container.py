"""Container-facing agent routes: heartbeat, lifecycle callbacks, nudges, drain handshake, telemetry.

These routes record facts; they do not run the town. Callbacks become ``town_events`` rows for the
reconciler (see ``worker_api.events``). The only direct writes are the heartbeat's activity
watermark, the drain state, nudge delivery, and the mayor's guarded working → waiting flip.

Unknown agents: a callback for an agent the worker never created is a 404 ``AGENT_NOT_FOUND``.
A heartbeat may instead *register* the agent when its body carries ``role`` (and optionally
``name``, ``rig_id``): a fresh container can run agents started before the worker knew them, and
the role is the one fact that cannot be invented. Without ``role`` it is a 404 too.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from gastown.contract.agents import DEAD_STATUSES
from gastown.core.http import ApiError, path_id, read_model
from gastown.core.jsonlog import get_logger
from worker_api import drain, events, nudges, store
from worker_api.appkeys import DB, TOWN, now_ms
from worker_api.auth import acting_agent, require_sender
from worker_api.containers.service import touch_activity
from worker_api.db import Conn, to_json
from worker_api.models import (
    Completed,
    ContainerEvent,
    ContainerReady,
    Done,
    EnqueueNudge,
    EvictionContext,
    Heartbeat,
    NudgeDelivered,
    Waiting,
)

log = get_logger("worker_api.container")


def _ids(request: web.Request) -> tuple[str, str]:
    return request[TOWN]["town_id"], path_id(request, "a")


def _require_agent(conn: Conn, town_id: str, agent_id: str) -> dict[str, Any]:
    agent = store.get_agent(conn, town_id, agent_id)
    if agent is None:
        raise ApiError(404, "AGENT_NOT_FOUND", f"agent {agent_id} not found")
    return agent


def _record_agent_event(
    conn: Conn, town_id: str, agent_id: str, event_type: str, payload: dict[str, Any], now: int
) -> int:
    _require_agent(conn, town_id, agent_id)
    return events.insert_event(conn, town_id, event_type, agent_id=agent_id, payload=payload, now_ms=now)


# ---------------------------------------------------------------- heartbeat


def _heartbeat_tx(conn: Conn, town_id: str, agent_id: str, hb: Heartbeat, now: int) -> str | None:
    agent = store.get_agent(conn, town_id, agent_id)
    if agent is None:
        if hb.role is None:
            raise ApiError(404, "AGENT_NOT_FOUND", f"agent {agent_id} not found (send role to register it)")
        store.create_agent(
            conn, town_id, agent_id=agent_id, role=hb.role, name=hb.name or agent_id, rig_id=hb.rig_id, now_ms=now
        )
        log.info("agent.registered_by_heartbeat", town=town_id, agent_id=agent_id, role=hb.role)
    store.touch_agent_heartbeat(
        conn,
        town_id,
        agent_id,
        container_status=hb.status,
        last_event_type=hb.last_event_type,
        last_event_at=hb.last_event_at,
        active_tools=hb.active_tools,
        message_count=hb.message_count,
        container_instance_id=hb.container_instance_id,
        now_ms=now,
    )
    if agent is not None:
        _mayor_turn_over(conn, town_id, agent, hb)
    drain.observe_container_instance(conn, town_id, hb.container_instance_id, now)
    state = drain.drain_state(conn, town_id, now)
    return state["nonce"] if state else None


def _mayor_turn_over(conn: Conn, town_id: str, agent: dict[str, Any], hb: Heartbeat) -> None:
    """A working mayor whose heartbeat shows its turn ended (an idle event after it was marked
    working) or its server gone is waiting: the idle callback of that turn may never come (the turn
    ended before it was marked, kilo crashed, a model swap cut it), and a mayor left working keeps
    its town's container from ever being stopped for idleness."""
    agent_id = agent["agent_id"]
    if agent["role"] != "mayor" or agent["status"] != "working":
        return
    since = agent["working_since"] or 0
    idle_after = hb.last_event_type in ("session.idle", "session.turn.close") and (hb.last_event_at or 0) > since
    if idle_after or hb.status in DEAD_STATUSES:
        store.set_agent_status(conn, town_id, agent_id, "waiting", hb.last_event_at or since)
        log.info("mayor.turn_over_by_heartbeat", town=town_id, agent_id=agent_id, container_status=hb.status)


async def heartbeat(request: web.Request) -> web.Response:
    town_id, agent_id = _ids(request)
    hb = await read_model(request, Heartbeat)
    nonce = await request.app[DB].run(_heartbeat_tx, town_id, agent_id, hb, now_ms(request))
    body: dict[str, Any] = {"heartbeat": True}
    if nonce is not None:
        body["drain_nonce"] = nonce
    return web.json_response(body)


# ---------------------------------------------------------------- lifecycle callbacks


async def completed(request: web.Request) -> web.Response:
    town_id, agent_id = _ids(request)
    body = await read_model(request, Completed)
    payload = {"status": body.status, "reason": body.reason}
    await request.app[DB].run(
        _record_agent_event, town_id, agent_id, events.AGENT_COMPLETED, payload, now_ms(request)
    )
    log.info("agent.completed", town=town_id, agent_id=agent_id, status=body.status, reason=body.reason)
    return web.json_response({"completed": True})


def _waiting_tx(conn: Conn, town_id: str, agent_id: str, fired_at: int, now: int) -> bool:
    """Mayor working → waiting, unless the idle callback fired before the mayor was last marked
    working: such a callback belongs to an earlier turn (docs/original-system.md §4.6, bug 31)."""
    agent = _require_agent(conn, town_id, agent_id)
    since = agent["working_since"]
    applied = False
    if agent["role"] == "mayor" and agent["status"] == "working":
        if since is None or fired_at >= since:
            store.set_agent_status(conn, town_id, agent_id, "waiting", now)
            touch_activity(conn, town_id, now)  # the idle window counts from the end of the mayor's answer
            applied = True
        else:
            log.info("mayor.stale_waiting_ignored", town=town_id, agent_id=agent_id, fired_at=fired_at,
                     working_since=since)
    events.insert_event(
        conn, town_id, events.AGENT_WAITING, agent_id=agent_id,
        payload={"fired_at": fired_at, "applied": applied}, now_ms=now,
    )
    return applied


async def waiting(request: web.Request) -> web.Response:
    town_id, agent_id = _ids(request)
    body = await read_model(request, Waiting)
    await request.app[DB].run(_waiting_tx, town_id, agent_id, body.fired_at, now_ms(request))
    return web.json_response({"acknowledged": True})


async def done(request: web.Request) -> web.Response:
    town_id, agent_id = _ids(request)
    body = await read_model(request, Done)
    payload = {"branch": body.branch, "pr_url": body.pr_url, "summary": body.summary}
    await request.app[DB].run(_record_agent_event, town_id, agent_id, events.AGENT_DONE, payload, now_ms(request))
    log.info("agent.done", town=town_id, agent_id=agent_id, branch=body.branch, pr_url=body.pr_url)
    return web.json_response({"done": True})


async def eviction_context(request: web.Request) -> web.Response:
    town_id, agent_id = _ids(request)
    body = await read_model(request, EvictionContext)
    payload = {"branch": body.branch, "agent_name": body.agent_name, "saved_at": body.saved_at}
    await request.app[DB].run(
        _record_agent_event, town_id, agent_id, events.AGENT_EVICTION_CONTEXT, payload, now_ms(request)
    )
    return web.json_response({"recorded": True})


# ---------------------------------------------------------------- nudges


def _pending_tx(conn: Conn, town_id: str, agent_id: str, now: int) -> list[dict[str, Any]]:
    _require_agent(conn, town_id, agent_id)
    return nudges.pending_nudges(conn, town_id, agent_id, now)


async def pending_nudges(request: web.Request) -> web.Response:
    town_id, agent_id = _ids(request)
    items = await request.app[DB].run(_pending_tx, town_id, agent_id, now_ms(request), write=False)
    return web.json_response({"nudges": items})


def _delivered_tx(conn: Conn, town_id: str, agent_id: str, nudge_id: str, now: int) -> None:
    _require_agent(conn, town_id, agent_id)
    if not nudges.mark_nudge_delivered(conn, town_id, agent_id, nudge_id, now):
        raise ApiError(404, "NUDGE_NOT_FOUND", f"nudge {nudge_id} not found for agent {agent_id}")


async def nudge_delivered(request: web.Request) -> web.Response:
    town_id, agent_id = _ids(request)
    body = await read_model(request, NudgeDelivered)
    await request.app[DB].run(_delivered_tx, town_id, agent_id, body.nudge_id, now_ms(request))
    return web.json_response({"marked": True})


def _enqueue_tx(conn: Conn, town_id: str, agent_id: str, body: EnqueueNudge, now: int) -> dict:
    _require_agent(conn, town_id, agent_id)
    return nudges.enqueue_nudge(
        conn, town_id, agent_id, message=body.message, mode=body.mode, priority=body.priority,
        source=body.source, ttl_ms=body.ttl_s * 1000 if body.ttl_s else None, now_ms=now,
    )


async def enqueue_nudge(request: web.Request) -> web.Response:
    town_id, agent_id = _ids(request)
    body = await read_model(request, EnqueueNudge)
    if acting_agent(request) is not None:
        require_sender(request, body.source)
    nudge = await request.app[DB].run(_enqueue_tx, town_id, agent_id, body, now_ms(request))
    return web.json_response(nudge, status=201)


# ---------------------------------------------------------------- container-level


MAX_TELEMETRY_BYTES = 16 * 1024   # one telemetry event (memory samples, prewarm times) is a few hundred bytes
KEEP_TELEMETRY_PER_TOWN = 5000     # newest kept: at one memory sample per 30 s, about two days


def _telemetry_tx(conn: Conn, town_id: str, agent_id: str | None, payload: dict[str, Any],
                  now: int) -> None:
    """Store one telemetry event and drop the town's oldest beyond the cap (every row used to stay a
    week: 1 MiB rows filled the shared store at 25 MB/s)."""
    events.insert_event(conn, town_id, events.CONTAINER_TELEMETRY, agent_id=agent_id, payload=payload, now_ms=now)
    row = conn.execute("SELECT id FROM town_events WHERE town_id = ? AND event_type = ? ORDER BY id DESC"
                       " LIMIT 1 OFFSET ?", (town_id, events.CONTAINER_TELEMETRY, KEEP_TELEMETRY_PER_TOWN)).fetchone()
    if row is not None:
        conn.execute("DELETE FROM town_events WHERE town_id = ? AND event_type = ? AND id <= ?",
                     (town_id, events.CONTAINER_TELEMETRY, row[0]))


async def container_events(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    body = await read_model(request, ContainerEvent)
    payload = body.model_dump()
    if len(to_json(payload).encode()) > MAX_TELEMETRY_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"a telemetry event is at most {MAX_TELEMETRY_BYTES} bytes")
    await request.app[DB].run(_telemetry_tx, town_id, body.agent_id, payload, now_ms(request))
    return web.json_response({"accepted": True}, status=202)


def _eviction_tx(conn: Conn, town_id: str, now: int) -> str:
    nonce = drain.start_drain(conn, town_id, now)
    events.insert_event(conn, town_id, events.CONTAINER_EVICTION, payload={}, now_ms=now)
    return nonce


async def container_eviction(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    nonce = await request.app[DB].run(_eviction_tx, town_id, now_ms(request))
    return web.json_response({"drain_nonce": nonce})


async def get_drain_state(request: web.Request) -> web.Response:
    """What a booting container asks once it is ready: whether an older container of its town is
    draining, and the nonce to acknowledge it with (``container-ready``)."""
    state = await request.app[DB].run(drain.drain_state, request[TOWN]["town_id"], now_ms(request))
    return web.json_response({"draining": state is not None, "drain_nonce": (state or {}).get("nonce") or ""})


async def container_ready(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    body = await read_model(request, ContainerReady)
    cleared = await request.app[DB].run(drain.acknowledge_ready, town_id, body.nonce, now_ms(request))
    return web.json_response({"cleared": cleared})

