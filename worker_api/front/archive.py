"""The agents' event archive: what every agent did survives its container (issue 12, item 3).

The container forwards each agent's events in batches (``POST /api/towns/{t}/agent-events``); the
worker stores them with one increasing ``seq`` (the SSE id), bounded per agent by count and age,
and wakes the town's live streams. A resent batch (the container retried after a lost answer) is
recognised by (agent, container event id, ts) and stored once; a new container's ids restart at 1
but with later timestamps, so nothing of it is mistaken for a duplicate.

Streaming: ``GET /api/towns/{t}/events/stream`` (Server-Sent Events, aiohttp-sse) sends the stored
events after ``Last-Event-ID`` (or ``?after=``) and then each new one as it is ingested: resumable
without gaps or duplicates because the id is the archive's own sequence, not the container's.
"""
from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Annotated, Any, Mapping

from aiohttp import web
from aiohttp_sse import sse_response
from pydantic import Field

from gastown.core.http import ApiError, read_model
from gastown.core.ids import is_valid_id
from worker_api.appkeys import BUS, DB, QUIET, TOWN, now_ms
from worker_api.db import Conn, from_json, to_json
from worker_api.models import Body, Id

MAX_BATCH = 500
MAX_EVENT_BYTES = 64 * 1024
KEEP_PER_AGENT = 5000                       # newest events kept per agent
KEEP_MS = 7 * 24 * 3600 * 1000              # and none older than a week
PAGE = 500
PING_S = 15.0


class IngestedEvent(Body):
    agent_id: Id
    id: Annotated[int, Field(ge=0, le=2**53)]
    type: Annotated[str, Field(min_length=1, max_length=200)]
    data: Any = None
    ts: Annotated[int, Field(ge=0, le=2**53)]


class IngestBatch(Body):
    events: Annotated[list[IngestedEvent], Field(max_length=MAX_BATCH)]


class EventHub:
    """Wakes a town's live streams when events were stored, by this replica or another (the bus)."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Event] = {}

    def notify(self, town_id: str) -> None:
        waiter = self._waiters.pop(town_id, None)
        if waiter is not None:
            waiter.set()

    async def wait(self, town_id: str, timeout: float) -> None:
        waiter = self._waiters.setdefault(town_id, asyncio.Event())
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            pass


HUB = web.AppKey("worker_event_hub", EventHub)


def _data_json(data: Any) -> str:
    text = to_json(data)
    return text if len(text) <= MAX_EVENT_BYTES else to_json({"truncated": True, "bytes": len(text)})


@dataclass(frozen=True)
class Retention:
    """How much of each agent's history the archive keeps (``GASTOWN_ARCHIVE_KEEP_EVENTS``,
    ``GASTOWN_ARCHIVE_KEEP_HOURS`` for the worker)."""

    per_agent: int = KEEP_PER_AGENT
    max_age_ms: int = KEEP_MS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Retention":
        events, hours = env.get("GASTOWN_ARCHIVE_KEEP_EVENTS"), env.get("GASTOWN_ARCHIVE_KEEP_HOURS")
        out = cls(int(events) if events else KEEP_PER_AGENT, int(float(hours) * 3_600_000) if hours else KEEP_MS)
        if out.per_agent < 1 or out.max_age_ms < 60_000:
            raise ValueError("the archive must keep at least one event per agent for at least a minute")
        return out


RETENTION = web.AppKey("archive_retention", Retention)


def ingest_tx(conn: Conn, town_id: str, events: list[IngestedEvent], now: int,
              keep: Retention = Retention()) -> tuple[int, int]:
    stored = dup = 0
    agents = set()
    for e in events:
        if conn.execute("SELECT 1 FROM agent_events WHERE town_id = ? AND agent_id = ? AND source_id = ? AND ts = ?",
                        (town_id, e.agent_id, e.id, e.ts)).fetchone():
            dup += 1
            continue
        conn.execute("INSERT INTO agent_events (town_id, agent_id, source_id, type, data, ts, received_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", (town_id, e.agent_id, e.id, e.type, _data_json(e.data), e.ts, now))
        agents.add(e.agent_id)
        stored += 1
    for agent_id in agents:
        _prune(conn, town_id, agent_id, now, keep)
    return stored, dup


def _prune(conn: Conn, town_id: str, agent_id: str, now: int, keep: Retention) -> None:
    row = conn.execute("SELECT seq FROM agent_events WHERE town_id = ? AND agent_id = ? ORDER BY seq DESC"
                       " LIMIT 1 OFFSET ?", (town_id, agent_id, keep.per_agent)).fetchone()
    if row is not None:
        conn.execute("DELETE FROM agent_events WHERE town_id = ? AND agent_id = ? AND seq <= ?",
                     (town_id, agent_id, row[0]))
    conn.execute("DELETE FROM agent_events WHERE town_id = ? AND agent_id = ? AND received_at < ?",
                 (town_id, agent_id, now - keep.max_age_ms))


def events_after(conn: Conn, town_id: str, after: int, agent_id: str | None = None,
                 limit: int = PAGE) -> list[dict[str, Any]]:
    sql = "SELECT seq, agent_id, type, data, ts FROM agent_events WHERE town_id = ? AND seq > ?"
    args: list[Any] = [town_id, after]
    if agent_id is not None:
        sql += " AND agent_id = ?"
        args.append(agent_id)
    rows = conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit))
    return [{"id": r[0], "agent_id": r[1], "type": r[2], "data": from_json(r[3], None), "ts": r[4]} for r in rows]


def parse_after(value: str | None) -> int:
    """An ``after`` / ``Last-Event-ID`` cursor: absent is 0; anything but a non-negative integer is a 400."""
    if value is None or value == "":
        return 0
    if not value.isdigit() or len(value) > 15:
        raise ApiError(400, "INVALID_REQUEST", "after / Last-Event-ID must be a non-negative integer")
    return int(value)


async def ingest(request: web.Request) -> web.Response:
    body = await read_model(request, IngestBatch)
    town_id = request[TOWN]["town_id"]
    request[QUIET] = True
    stored, dup = await request.app[DB].run(ingest_tx, town_id, body.events, now_ms(request), request.app[RETENTION])
    if stored:
        request.app[BUS].publish("events", town_id)  # this replica's streams and the others' (worker_api/bus.py)
    return web.json_response({"stored": stored, "duplicates": dup})


async def agent_history(request: web.Request) -> web.Response:
    agent_id = request.match_info["a"]
    after = parse_after(request.query.get("after"))
    events = await request.app[DB].run(events_after, request[TOWN]["town_id"], after, agent_id, write=False)
    return web.json_response({"events": events})


async def stream(request: web.Request) -> web.StreamResponse:
    """SSE: every archived event of the town after the client's last id, then live ones."""
    town_id = request[TOWN]["town_id"]
    last = parse_after(request.headers.get("Last-Event-ID") or request.query.get("after"))
    agent = request.query.get("agent_id")
    if agent is not None and not is_valid_id(agent):
        raise ApiError(400, "INVALID_ID", "agent_id is not a valid id")
    follow = request.query.get("follow", "true")
    if follow not in ("true", "false"):
        raise ApiError(400, "INVALID_REQUEST", "follow must be true or false")
    db, hub = request.app[DB], request.app[HUB]
    async with sse_response(request, ping_interval=PING_S) as sse:
        try:
            while sse.is_connected():
                events = await db.run(events_after, town_id, last, agent, write=False)
                for e in events:
                    await sse.send(json.dumps({k: e[k] for k in ("agent_id", "type", "data", "ts")}),
                                   id=str(e["id"]), event="agent_event")
                    last = e["id"]
                if len(events) < PAGE:
                    if follow == "false":
                        break  # what is archived now, then the end (backfills, scripts)
                    await hub.wait(town_id, PING_S)
        except (ConnectionResetError, TimeoutError):
            pass  # the client went away (or stalled): its next connection resumes from Last-Event-ID
    return sse


def install(app: web.Application, retention: Retention | None = None) -> None:
    hub = app[HUB] = EventHub()
    app[BUS].subscribe(lambda kind, town_id, _data: hub.notify(town_id) if kind == "events" else None)
    app[RETENTION] = retention or Retention.from_env(os.environ)
