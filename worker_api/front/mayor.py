"""The mayor as the town's front door (issue 12, item 2): a user's message goes to the worker, which
makes sure the town's mayor is running and delivers it as a user turn.

Why an inbox table and one delivery task per town: messages sent while the mayor starts (after an
eviction, an idle stop, a new container) must all arrive, in order, exactly once. ``POST`` only
stores the message and wakes the town's task; the task starts the mayor when the container does not
report it running (the container resumes its latest session, restored from the snapshot), then
sends each pending message in id order with ``POST /agents/{id}/message`` and marks it delivered
when the container accepted it. One message per turn: before each message the desk waits until the
mayor's last turn has ended (its status shows ``session.idle`` after the previous send), because
kilo folds prompts that queue up during a turn into one next turn, which answers only the last.
A failure leaves the message pending and is retried with a doubling delay. The conversation (``GET …/mayor/messages``)
is read back from the event archive, so it survives the container too.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Annotated, Any, Callable

from aiohttp import web
from pydantic import Field

from gastown.core.http import ApiError, read_model
from gastown.core.jsonlog import get_logger
from worker_api import store
from worker_api.appkeys import DB, TOWN, now_ms
from worker_api.db import Database, from_json
from worker_api.dispatch import HttpContainerClient, Target, town_target
from worker_api.models import Body
from worker_api.reconciler.prompts import DEFAULT_MODEL

log = get_logger("worker_api.mayor")

MAYOR_ID = "mayor"
MAYOR_SYSTEM = (
    "You are the mayor of this Gas Town, the user's point of contact. Answer the user plainly. Turn requests "
    "for code into work: gt_sling one bead per task (or a convoy for related tasks) on the right rig, then tell "
    "the user what you slung. Report progress, escalations and merged work when asked or notified."
)
MAYOR_STARTUP = "You are on duty as the mayor. Wait for the user's messages."
START_WAIT_S = 90.0
TURN_WAIT_S = 600.0      # a turn that runs longer than this no longer holds the next message back
MAX_BACKOFF_S = 30.0
IDLE_EVENTS = frozenset({"session.idle", "session.turn.close"})


class MayorMessage(Body):
    text: Annotated[str, Field(min_length=1, max_length=60000)]


def _enqueue_tx(conn: sqlite3.Connection, town_id: str, text: str, now: int) -> tuple[int, str]:
    mayor = store.get_mayor(conn, town_id)
    if mayor is None:
        mayor = store.create_agent(conn, town_id, agent_id=MAYOR_ID, role="mayor", name="Mayor", rig_id=None,
                                   now_ms=now)
    cur = conn.execute("INSERT INTO mayor_messages (town_id, text, created_at) VALUES (?, ?, ?)", (town_id, text, now))
    return int(cur.lastrowid or 0), str(mayor["agent_id"])


def _pending_tx(conn: sqlite3.Connection, town_id: str) -> tuple[Target | None, dict[str, Any] | None,
                                                                 str | None, list[tuple[int, str]]]:
    """Where to deliver (the container, the town, its mayor) and what (the undelivered messages, in order)."""
    pending = [(int(r[0]), str(r[1])) for r in conn.execute(
        "SELECT id, text FROM mayor_messages WHERE town_id = ? AND delivered_at IS NULL ORDER BY id", (town_id,))]
    mayor = store.get_mayor(conn, town_id)
    return town_target(conn, town_id), store.get_town(conn, town_id), mayor and mayor["agent_id"], pending


def _delivered_tx(conn: sqlite3.Connection, town_id: str, message_id: int, now: int) -> None:
    conn.execute("UPDATE mayor_messages SET delivered_at = ? WHERE town_id = ? AND id = ?", (now, town_id, message_id))


def _failed_tx(conn: sqlite3.Connection, town_id: str, message_id: int, error: str) -> None:
    conn.execute("UPDATE mayor_messages SET attempts = attempts + 1, last_error = ? WHERE town_id = ? AND id = ?",
                 (error[:300], town_id, message_id))


def start_request(town: dict[str, Any], agent_id: str) -> dict[str, Any]:
    town_id = town["town_id"]
    return {"agent_id": agent_id, "town_id": town_id, "rig_id": f"mayor-{town_id}", "role": "mayor",
            "name": "Mayor", "identity": "Mayor (mayor)", "model": town.get("default_model") or DEFAULT_MODEL,
            "system_prompt": MAYOR_SYSTEM, "prompt": MAYOR_STARTUP}


class MayorDesk:
    """One delivery task per town with pending messages; owned by the app (closed on cleanup)."""

    def __init__(self, db: Database, clock_ms: Callable[[], int], client: HttpContainerClient | None = None) -> None:
        self.db = db
        self.clock_ms = clock_ms
        self.client = client or HttpContainerClient()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._sent_at: dict[str, int] = {}  # town -> when its mayor was last sent a message (epoch ms)

    def wake(self, town_id: str) -> None:
        task = self._tasks.get(town_id)
        if task is not None and not task.done():
            self._again.add(town_id)  # the running task looks again before it ends
            return
        self._tasks[town_id] = asyncio.create_task(self._deliver(town_id), name=f"mayor-desk:{town_id}")

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    async def _deliver(self, town_id: str) -> None:
        delay = 1.0
        while True:
            self._again.discard(town_id)
            target, town, mayor_id, pending = await self.db.run(_pending_tx, town_id, write=False)
            if target is None or town is None:
                return
            if not pending:
                if town_id in self._again:
                    continue
                return
            if mayor_id and await self._ensure_running(target, town, mayor_id):
                if await self._send(town_id, target, mayor_id, pending):
                    delay = 1.0
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def _send(self, town_id: str, target: Target, mayor_id: str, pending: list[tuple[int, str]]) -> bool:
        for message_id, text in pending:
            await self._wait_idle(target, mayor_id)
            before = int(time.time() * 1000)  # the container's clock is wall time too
            if not await self.client.send_message(target, mayor_id, text):
                await self.db.run(_failed_tx, town_id, message_id, "the container did not accept the message")
                return False
            self._sent_at[town_id] = before
            await self.db.run(_delivered_tx, town_id, message_id, self.clock_ms())
            log.info("mayor.message_delivered", town=town_id, message_id=message_id)
        return True

    async def _ensure_running(self, target: Target, town: dict[str, Any], mayor_id: str) -> bool:
        """True once the container reports the mayor running, starting it when it is not."""
        status = (await self.client.agent_statuses(target, [mayor_id]))[mayor_id]
        if status == "running":
            return True
        if status in ("starting", "recycling", "backoff"):
            return await self._wait_running(target, mayor_id)
        if status == "unknown":
            return False  # the container does not answer: retry later
        res = await self.client.start_agent(target, start_request(town, mayor_id))
        log.info("mayor.start", town=town["town_id"], outcome=res.outcome, status=res.status)
        return res.started and await self._wait_running(target, mayor_id)

    async def _wait_idle(self, target: Target, mayor_id: str) -> None:
        """Until the mayor's current turn (if any) has ended: its last event is an idle one and
        came after the last prompt it was sent (the startup prompt, or the previous message)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TURN_WAIT_S
        sent_at = self._sent_at.get(target.town_id, 0)
        while loop.time() < deadline:
            st = await self.client.agent_status(target, mayor_id) or {}
            if st.get("status") != "running":
                return  # the send fails and the delivery loop starts it again
            started = int(st.get("started_at") or 0)
            # What this life of the mayor was last prompted with: our last message, else its startup prompt.
            baseline = sent_at if sent_at > started else (started if int(st.get("message_count") or 0) else 0)
            if not baseline or (st.get("last_event_type") in IDLE_EVENTS
                                and int(st.get("last_event_at") or 0) > baseline):
                return
            await asyncio.sleep(0.25)
        log.warning("mayor.turn_wait_timeout", town=target.town_id)

    async def _wait_running(self, target: Target, mayor_id: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WAIT_S
        while loop.time() < deadline:
            if (await self.client.agent_statuses(target, [mayor_id]))[mayor_id] == "running":
                return True
            await asyncio.sleep(0.5)
        return False


DESK = web.AppKey("worker_mayor_desk", MayorDesk)


async def post_message(request: web.Request) -> web.Response:
    body = await read_model(request, MayorMessage)
    town_id = request[TOWN]["town_id"]
    message_id, agent_id = await request.app[DB].run(_enqueue_tx, town_id, body.text, now_ms(request))
    request.app[DESK].wake(town_id)
    return web.json_response({"accepted": True, "agent_id": agent_id, "message_id": message_id}, status=202)


def _mayor_tx(conn: sqlite3.Connection, town_id: str) -> tuple[dict[str, Any] | None, Target | None]:
    return store.get_mayor(conn, town_id), town_target(conn, town_id)


async def get_mayor(request: web.Request) -> web.Response:
    town_id = request[TOWN]["town_id"]
    mayor, target = await request.app[DB].run(_mayor_tx, town_id, write=False)
    if mayor is None or target is None:
        raise ApiError(404, "AGENT_NOT_FOUND", "this town has no mayor yet: send it a message")
    info = await request.app[DESK].client.agent_status(target, mayor["agent_id"])
    return web.json_response({"agent_id": mayor["agent_id"], "status": (info or {}).get("status", "unknown"),
                              "model": (info or {}).get("model"), "session_id": (info or {}).get("session_id"),
                              "last_activity_at": (info or {}).get("last_activity_at") or mayor.get("last_activity_at")})


def conversation(conn: sqlite3.Connection, town_id: str, agent_id: str) -> list[dict[str, Any]]:
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
        app[DESK] = MayorDesk(app[DB], clock_ms)
        yield
        await app[DESK].close()

    app.cleanup_ctx.append(_desk)
