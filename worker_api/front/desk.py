"""The mayor's desk: the one path by which turns reach the town's mayor (issue 12, items 2 and 5).

Two kinds of turn wait in the worker's database: a user's messages (``mayor_messages``) and notices
for the mayor (its ``nudges``: escalations, mail, convoys landed or failed, merge requests merged or
failed). Why one path for both: kilo folds prompts that queue up during a turn into one next turn,
which answers only the last, so two senders racing for the same idle moment would lose one. The desk
sends one turn at a time, each after the mayor's previous turn has ended, in the order they were
queued, and marks each delivered once the container accepted it.

A user's message starts the mayor when the container does not report it running (the container
resumes its latest session, restored from the snapshot). A notice never starts a mayor or a
container on its own: it waits until the mayor is up (the next user message, or a mayor already
idle). One task per town delivers; a sweep every few seconds finds towns with something to deliver
(after a restart of the worker, or a notice queued by the reconciler inside its transaction).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from gastown.core.jsonlog import get_logger
from worker_api import nudges, settings, store
from worker_api.bus import Bus
from worker_api.db import Conn, Database
from worker_api.containers.service import TownContainers, touch_activity
from worker_api.dispatch import HttpContainerClient, Target, town_target
from worker_api.reconciler.prompts import DEFAULT_MODEL

log = get_logger("worker_api.mayor")

MAYOR_ID = "mayor"
MAYOR_SYSTEM = (
    "You are the mayor of this Gas Town, the user's point of contact. Answer the user plainly. Turn requests "
    "for code into work: gt_sling one bead per task (or a convoy for related tasks) on the right rig, then tell "
    "the user what you slung. Notices from the town (escalations, mail, merged or failed work, landed convoys) "
    "arrive as messages: act on them, tell the user what matters, and acknowledge escalations with "
    "gt_escalation_ack once handled. Read your mail with gt_mail_check."
)
MAYOR_STARTUP = "You are on duty as the mayor. Wait for the user's messages."
START_WAIT_S = 90.0
TURN_WAIT_S = 600.0      # a turn that runs longer than this no longer holds the next message back
MAX_BACKOFF_S = 30.0
MODEL_PUSH_ATTEMPTS = 6   # ~1 min of retries (1+2+4+8+16 s) before a model push gives up
SWEEP_S = 2.0
NOT_UP_RECHECK_S = 60.0  # a town whose mayor was not running is looked at again for notices after this
IDLE_EVENTS = frozenset({"session.idle", "session.turn.close"})


@dataclass(frozen=True)
class Turn:
    kind: str            # "message" (a user's) | "notice" (a nudge of the mayor)
    ref: str             # message id or nudge id
    text: str


def mayor_fields(town: dict[str, Any], agent_id: str) -> dict[str, Any]:
    """Who the mayor is and how it runs, from the town's settings: the start and the container's
    prewarm use exactly these, so a prewarmed mayor is adopted only when nothing changed since."""
    eff = settings.effective(town)
    return {"agent_id": agent_id, "name": "Mayor", "identity": f"Mayor of {town.get('name') or town['town_id']}",
            "model": eff.model or DEFAULT_MODEL, "system_prompt": MAYOR_SYSTEM, **eff.start_fields()}


def start_request(town: dict[str, Any], agent_id: str) -> dict[str, Any]:
    town_id = town["town_id"]
    return {**mayor_fields(town, agent_id), "town_id": town_id, "rig_id": f"mayor-{town_id}", "role": "mayor",
            "prompt": MAYOR_STARTUP}


def enqueue_tx(conn: Conn, town_id: str, text: str, now: int) -> tuple[int, str]:
    mayor = store.get_mayor(conn, town_id)
    if mayor is None:
        mayor = store.create_agent(conn, town_id, agent_id=MAYOR_ID, role="mayor", name="Mayor", rig_id=None,
                                   now_ms=now)
    row = conn.execute("INSERT INTO mayor_messages (town_id, text, created_at) VALUES (?, ?, ?) RETURNING id",
                       (town_id, text, now)).fetchone()
    touch_activity(conn, town_id, now)  # a user's message keeps (or brings) the town's container up
    return int(row[0]), str(mayor["agent_id"])


def _pending_tx(conn: Conn, town_id: str, now: int) -> tuple[Target | None, dict[str, Any] | None,
                                                                          str | None, list[Turn]]:
    """Where to deliver (the container, the town, its mayor) and what, in the order it was queued."""
    # The person waiting comes first: a user's messages before notices, each kind in its own order.
    turns = [Turn("message", str(r[0]), str(r[1])) for r in conn.execute(
        "SELECT id, text FROM mayor_messages WHERE town_id = ? AND delivered_at IS NULL ORDER BY id", (town_id,))]
    mayor = store.get_mayor(conn, town_id)
    if mayor is not None:
        turns += [Turn("notice", n["nudge_id"], str(n["message"]))
                  for n in nudges.pending_nudges(conn, town_id, mayor["agent_id"], now)]
    town = store.get_town(conn, town_id, with_settings=True)
    return town_target(conn, town_id), town, mayor and mayor["agent_id"], turns


def _towns_due_tx(conn: Conn, now: int) -> dict[str, bool]:
    """Towns with something to deliver: town -> whether a user's message is among it (a notice for
    a mayor found not running waits a while: see ``_sweep``)."""
    due = {r[0]: True for r in conn.execute("SELECT DISTINCT town_id FROM mayor_messages WHERE delivered_at IS NULL")}
    for (town_id,) in conn.execute(
            "SELECT DISTINCT n.town_id FROM nudges n JOIN agents a ON a.town_id = n.town_id AND a.agent_id = n.agent_id"
            " WHERE a.role = 'mayor' AND a.status != 'dead' AND n.delivered_at IS NULL"
            " AND (n.expires_at IS NULL OR n.expires_at > ?)", (now,)):
        due.setdefault(town_id, False)
    return due


def _delivered_tx(conn: Conn, town_id: str, mayor_id: str, turn: Turn, now: int) -> None:
    if turn.kind == "message":
        conn.execute("UPDATE mayor_messages SET delivered_at = ? WHERE town_id = ? AND id = ?",
                     (now, town_id, int(turn.ref)))
    else:
        nudges.mark_nudge_delivered(conn, town_id, mayor_id, turn.ref, now)


def _working_tx(conn: Conn, town_id: str, mayor_id: str, since: int) -> str | None:
    """The mayor working since ``since`` (just before a prompt): its idle callback for that turn
    fires after it and flips it back to waiting; an older one is stale (routes_container.waiting).
    Marked before the prompt is sent, so a turn that ends at once cannot be overtaken. The status
    it had, to put back if the prompt is not accepted."""
    row = conn.execute("SELECT status FROM agents WHERE town_id = ? AND agent_id = ?", (town_id, mayor_id)).fetchone()
    conn.execute("UPDATE agents SET status = 'working', working_since = ?, last_activity_at = ? WHERE town_id = ?"
                 " AND agent_id = ?", (since, since, town_id, mayor_id))
    return row[0] if row else None


def _status_tx(conn: Conn, town_id: str, mayor_id: str, status: str) -> None:
    conn.execute("UPDATE agents SET status = ? WHERE town_id = ? AND agent_id = ? AND status = 'working'",
                 (status, town_id, mayor_id))


def _failed_tx(conn: Conn, town_id: str, turn: Turn, error: str) -> None:
    if turn.kind == "message":
        conn.execute("UPDATE mayor_messages SET attempts = attempts + 1, last_error = ? WHERE town_id = ? AND id = ?",
                     (error[:300], town_id, int(turn.ref)))


class MayorDesk:
    """One delivery task per town with something to deliver, and the sweep; owned by the app."""

    def __init__(self, db: Database, clock_ms: Callable[[], int], client: HttpContainerClient | None = None, *,
                 containers: TownContainers | None = None,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000), sweep_s: float = SWEEP_S,
                 backoff: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 owns: Callable[[str], bool] = lambda _town: True, bus: Bus | None = None) -> None:
        self.db = db
        # With several replicas only the holder of a town's lease delivers to its mayor (two desks
        # would send the same turn twice); the others pass a wake or a model on through the bus.
        self.owns = owns
        self.bus = bus
        if bus is not None:
            bus.subscribe(self._nudged)
        self.clock_ms = clock_ms
        self.wall_ms = wall_ms  # the container's clock is wall time: what its events and callbacks are compared to
        self.client = client or HttpContainerClient()
        self.containers = containers  # starts a stopped container for a user's message
        self.sweep_s = sweep_s
        self.backoff = backoff  # the wait between model pushes (tests pass one that does not wait)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._sent_at: dict[str, int] = {}     # town -> when its mayor was last sent a turn (wall ms)
        self._not_up: dict[str, float] = {}    # town -> when its mayor was last found not running (monotonic)
        self._sweeper: asyncio.Task[None] | None = None
        self._model_tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._quiet: set[str] = set()            # towns whose mayor is known idle since its last prompt

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="mayor-desk:sweep")

    def wake(self, town_id: str) -> None:
        if not self.owns(town_id):
            if self.bus is not None:
                self.bus.publish("desk", town_id)
            return
        self._not_up.pop(town_id, None)
        task = self._tasks.get(town_id)
        if task is not None and not task.done():
            self._again.add(town_id)  # the running task looks again before it ends
            return
        self._tasks[town_id] = asyncio.create_task(self._deliver(town_id), name=f"mayor-desk:{town_id}")

    def _lock(self, town_id: str) -> asyncio.Lock:
        """One prompt (or model swap) at a time per town's mayor: a swap in the middle of a turn
        would cut the turn short."""
        return self._locks.setdefault(town_id, asyncio.Lock())

    def push_model(self, town_id: str, model: str, small_model: str | None) -> None:
        """A new town model reaches a running mayor (its session kept: the container swaps its
        server and pushes the model without a turn) once its current turn has ended; a mayor not
        running starts with it later."""
        if not self.owns(town_id):
            if self.bus is not None:
                self.bus.publish("model", town_id, model=model, small_model=small_model)
            return
        old = self._model_tasks.pop(town_id, None)
        if old is not None:
            old.cancel()  # the latest setting wins
        self._model_tasks[town_id] = asyncio.create_task(self._push_model(town_id, model, small_model),
                                                         name=f"mayor-desk:model:{town_id}")

    def adopted(self, town_id: str) -> None:
        """This replica now holds the town: deliver what waits, and finish a model push the previous
        holder may have had in flight (the setting is in the database; its task died with it)."""
        self.wake(town_id)
        running = self._model_tasks.get(town_id)
        if running is None or running.done():
            self._model_tasks[town_id] = asyncio.create_task(self._model_check(town_id),
                                                             name=f"mayor-desk:model-check:{town_id}")

    async def _model_check(self, town_id: str) -> None:
        target, town, mayor_id, _ = await self.db.run(_pending_tx, town_id, self.clock_ms(), write=False)
        if target is None or town is None or mayor_id is None or not target.url:
            return
        status = await self.client.agent_status(target, mayor_id) or {}
        wanted = mayor_fields(town, mayor_id)["model"]
        if status.get("status") == "running" and status.get("model") not in (None, wanted):
            self._model_tasks.pop(town_id, None)
            self.push_model(town_id, wanted, settings.effective(town).small_model)

    def _nudged(self, kind: str, town_id: str, data: dict[str, Any]) -> None:
        if not self.owns(town_id):
            return
        if kind == "desk":
            self.wake(town_id)
        elif kind == "model" and isinstance(data.get("model"), str):
            self.push_model(town_id, data["model"], data.get("small_model") or None)

    async def _push_model(self, town_id: str, model: str, small_model: str | None) -> None:
        """Pushes until the container took the model or the mayor is no longer running (it starts
        on the new model later). A swap that failed (its new server slow to boot on a busy box: the
        container rolls back to the old model) is tried again: the setting is what the user asked."""
        delay = 1.0
        for _ in range(MODEL_PUSH_ATTEMPTS):
            code = await self._push_model_once(town_id, model, small_model)
            log.info("mayor.model_pushed", town=town_id, model=model, status=code)
            if code is not None and code < 500 and code != 409:
                return
            await self.backoff(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        log.warning("mayor.model_push_gave_up", town=town_id, model=model)

    async def _push_model_once(self, town_id: str, model: str, small_model: str | None) -> int | None:
        """The container's answer to one push; 200 also when there is no running mayor to push to."""
        target, _, mayor_id, _ = await self.db.run(_pending_tx, town_id, self.clock_ms(), write=False)
        if target is None or mayor_id is None:
            return 200
        status = (await self.client.agent_statuses(target, [mayor_id]))[mayor_id]
        if status in ("starting", "recycling", "backoff") and not await self._wait_running(target, mayor_id):
            return None
        if status not in ("running", "starting", "recycling", "backoff"):
            return None if status == "unknown" else 200
        async with self._lock(town_id):
            await self._wait_idle(target, mayor_id)
            if not self.owns(town_id):
                return 200  # handed over: the new holder checks the mayor's model when it adopts the town
            code = await self.client.patch_model(target, mayor_id, model, small_model)
            if code == 200:
                # Its turn had ended and a swap runs none, but the swap's own events (the noReply model
                # push) are not an idle one: without this the next prompt waited out TURN_WAIT_S.
                self._quiet.add(town_id)
        return code

    async def close(self) -> None:
        tasks = [t for t in (self._sweeper, *self._tasks.values(), *self._model_tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                due = await self.db.run(_towns_due_tx, self.clock_ms(), write=False)
            except Exception as e:  # the sweep outlives a bad moment of the database
                log.warning("mayor.sweep_failed", error=str(e))
                continue
            now = time.monotonic()
            for town_id, has_message in due.items():
                if not self.owns(town_id):
                    continue
                task = self._tasks.get(town_id)
                if task is not None and not task.done():
                    continue
                if has_message or now - self._not_up.get(town_id, -1e9) >= NOT_UP_RECHECK_S:
                    self._tasks[town_id] = asyncio.create_task(self._deliver(town_id), name=f"mayor-desk:{town_id}")

    async def _deliver(self, town_id: str) -> None:
        """One turn per pass, then a fresh look: a user's message sent meanwhile goes next."""
        delay = 1.0
        while self.owns(town_id):  # a town handed to another replica is its desk's from then on
            self._again.discard(town_id)
            target, town, mayor_id, turns = await self.db.run(_pending_tx, town_id, self.clock_ms(), write=False)
            if target is None or town is None or mayor_id is None:
                return
            if not turns:
                if town_id in self._again:
                    continue
                return
            if turns[0].kind == "message" and self.containers is not None:
                target = await self.containers.ensure_running(town_id) or target
            running = await self._ensure_running(target, town, mayor_id, start=turns[0].kind == "message")
            if running is None:
                if town_id in self._again:
                    continue  # a user's message arrived while we looked
                self._not_up[town_id] = time.monotonic()  # only notices: they wait for the mayor to be up
                return
            if running and await self._send(town_id, target, mayor_id, turns[0]):
                delay = 1.0
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def _send(self, town_id: str, target: Target, mayor_id: str, turn: Turn) -> bool:
        async with self._lock(town_id):
            await self._wait_idle(target, mayor_id)
            if not self.owns(town_id):
                return False  # handed over while the mayor finished its turn: the new holder sends it
            before = self.wall_ms()
            previous = await self.db.run(_working_tx, town_id, mayor_id, before)
            if not await self.client.send_message(target, mayor_id, turn.text):
                await self.db.run(_status_tx, town_id, mayor_id, previous or "idle")
                await self.db.run(_failed_tx, town_id, turn, "the container did not accept the message")
                return False
            self._sent_at[town_id] = before
            self._quiet.discard(town_id)
            await self.db.run(_delivered_tx, town_id, mayor_id, turn, self.clock_ms())
        log.info("mayor.turn_delivered", town=town_id, kind=turn.kind, ref=turn.ref)
        return True

    async def _ensure_running(self, target: Target, town: dict[str, Any], mayor_id: str, *,
                              start: bool) -> bool | None:
        """True once the container reports the mayor running, starting it when ``start``; False to
        retry later; None when it is not running and must not be started for what is queued."""
        status = (await self.client.agent_statuses(target, [mayor_id]))[mayor_id]
        if status == "running":
            return True
        if status in ("starting", "recycling", "backoff"):
            return await self._wait_running(target, mayor_id)
        if not start:
            return None
        if status == "unknown":
            return False  # the container does not answer: retry later
        before = self.wall_ms()
        self._quiet.discard(town["town_id"])  # a fresh start runs its startup turn
        previous = await self.db.run(_working_tx, town["town_id"], mayor_id, before)  # on its startup turn
        res = await self.client.start_agent(target, start_request(town, mayor_id))
        log.info("mayor.start", town=town["town_id"], outcome=res.outcome, status=res.status)
        if not res.started:
            await self.db.run(_status_tx, town["town_id"], mayor_id, previous or "idle")
        return res.started and await self._wait_running(target, mayor_id)

    async def _wait_idle(self, target: Target, mayor_id: str) -> None:
        """Until the mayor's current turn (if any) has ended: its last event is an idle one and
        came after the last prompt it was sent (the startup prompt, or the previous turn)."""
        if target.town_id in self._quiet:
            return  # known idle: nothing was prompted since the mayor's last turn ended
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TURN_WAIT_S
        sent_at = self._sent_at.get(target.town_id, 0)
        while loop.time() < deadline:
            st = await self.client.agent_status(target, mayor_id) or {}
            if st.get("status") != "running":
                return  # the send fails and the delivery loop starts it again
            started = int(st.get("started_at") or 0)
            # What this life of the mayor was last prompted with: our last turn, else its startup prompt.
            baseline = sent_at if sent_at > started else (started if int(st.get("message_count") or 0) else 0)
            if not baseline or (st.get("last_event_type") in IDLE_EVENTS
                                and int(st.get("last_event_at") or 0) > baseline):
                return
            await asyncio.sleep(0.5)
        log.warning("mayor.turn_wait_timeout", town=target.town_id)

    async def _wait_running(self, target: Target, mayor_id: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WAIT_S
        while loop.time() < deadline:
            if (await self.client.agent_statuses(target, [mayor_id]))[mayor_id] == "running":
                return True
            await asyncio.sleep(0.5)
        return False
