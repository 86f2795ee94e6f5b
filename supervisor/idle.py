"""What happens when an agent's session goes idle (docs/contract.md §5).

Non-mayor: deliver the first pending nudge as a new turn; if there is none, arm the idle timer
(refinery longer, 10 s while draining). Work starting again cancels it; on expiry the agent is
stopped and ``completed`` is reported. The mayor never exits: it reports ``waiting`` (its turns come
from the worker's mayor desk).

Only events that mean *new work* cancel the timer. ``session.turn.close`` and friends arrive right
after ``session.idle`` and must not disarm it.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from gastown.contract.agents import Role
from gastown.contract.wire import epoch_ms
from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.states import AgentState, Change
from supervisor.supervisor import Supervisor
from supervisor.tasks import Sleep, TaskOwner
from supervisor.worker_client import WorkerError

log = get_logger("supervisor.idle")

DRAIN_IDLE_TIMEOUT_S = 10.0
NUDGE_FETCH_TIMEOUT_S = 10.0
_WORK_EVENTS = frozenset({"session.turn.open", "message.part.delta", "message.part.updated"})


def is_work_event(event: dict[str, Any]) -> bool:
    etype = event.get("type")
    if etype in _WORK_EVENTS:
        return True
    if etype == "session.status":
        status = ((event.get("properties") or {}).get("status") or {}).get("type")
        return status in ("busy", "retry")
    return False


class IdleManager:
    def __init__(self, supervisor: Supervisor, *, is_draining: Callable[[], bool], sleep: Sleep = asyncio.sleep,
                 on_completed: Callable[[AgentRecord], Awaitable[None]] | None = None) -> None:
        self.supervisor = supervisor
        self.worker = supervisor.worker
        self.cfg = supervisor.cfg
        self.is_draining = is_draining
        self.sleep = sleep
        self.on_completed = on_completed
        self.timers: dict[str, asyncio.Task] = {}
        self.deadlines: dict[str, float] = {}
        self.owner = TaskOwner("idle")
        supervisor.event_hooks.append(self.on_event)
        supervisor.change_hooks.append(self._on_change)

    def _on_change(self, rec: AgentRecord, what: Change) -> None:
        if not rec.active:
            self.cancel(rec.agent_id)

    def timeout_for(self, rec: AgentRecord) -> float:
        if self.is_draining():
            return DRAIN_IDLE_TIMEOUT_S
        if rec.request.role == Role.refinery:
            return self.cfg.refinery_idle_timeout_s
        return self.cfg.idle_timeout_s

    async def on_event(self, rec: AgentRecord, event: dict[str, Any]) -> None:
        if event.get("type") == "session.idle":
            if rec.request.role == Role.mayor:
                rec.spawn_task(self._mayor_idle(rec, epoch_ms(time.time())), "waiting")
            else:
                rec.spawn_task(self._on_idle(rec), "idle")
        elif is_work_event(event):
            self.cancel(rec.agent_id)

    def cancel(self, agent_id: str) -> None:
        task = self.timers.pop(agent_id, None)
        self.deadlines.pop(agent_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _mayor_idle(self, rec: AgentRecord, fired_at_ms: int) -> None:
        """The mayor's turn ended: it waits. What was queued for it (a user's messages, escalations,
        mail, convoy and MR notices) comes from the worker's mayor desk, the one path of turns to
        the mayor: two senders racing for the same idle moment would be folded into one turn by kilo."""
        await self.worker.waiting(rec.agent_id, fired_at_ms)

    async def _on_idle(self, rec: AgentRecord) -> None:
        if not self.is_draining() and await self._deliver_nudge(rec):
            return
        self.arm(rec, self.timeout_for(rec))

    async def _deliver_nudge(self, rec: AgentRecord) -> bool:
        try:
            data = await self.worker.call("GET", f"/agents/{rec.agent_id}/pending-nudges", timeout=NUDGE_FETCH_TIMEOUT_S)
        except WorkerError as e:
            log.warning("idle.nudge_fetch_failed", agent_id=rec.agent_id, error=str(e))
            return False
        nudges = (data or {}).get("nudges") if isinstance(data, dict) else None
        if not nudges or rec.state != AgentState.running:
            return False
        nudge = nudges[0]
        try:
            await self.supervisor.send_message(rec.agent_id, str(nudge.get("message", "")))
        except Exception as e:
            log.warning("idle.nudge_send_failed", agent_id=rec.agent_id, error=str(e))
            return False
        log.info("idle.nudge_delivered", agent_id=rec.agent_id, nudge_id=nudge.get("nudge_id"))
        await self.worker.try_call("POST", f"/agents/{rec.agent_id}/nudge-delivered", {"nudge_id": nudge.get("nudge_id")})
        return True

    def arm(self, rec: AgentRecord, timeout: float) -> None:
        """(Re-)arm the idle timer of ``rec``; the drain calls this to shorten running timers."""
        self.cancel(rec.agent_id)
        self.deadlines[rec.agent_id] = time.time() + timeout
        self.timers[rec.agent_id] = rec.spawn_task(self._expire(rec, timeout), "idle-timer")
        log.info("idle.timer_armed", agent_id=rec.agent_id, timeout_s=timeout)

    def shorten_all(self, timeout: float = DRAIN_IDLE_TIMEOUT_S) -> None:
        for agent_id in list(self.timers):
            rec = self.supervisor.agents.get(agent_id)
            remaining = self.deadlines.get(agent_id, 0) - time.time()
            if rec is not None and remaining > timeout:
                self.arm(rec, timeout)

    async def _expire(self, rec: AgentRecord, timeout: float) -> None:
        await self.sleep(timeout)
        if self.timers.get(rec.agent_id) is asyncio.current_task():
            self.timers.pop(rec.agent_id, None)
            self.deadlines.pop(rec.agent_id, None)
        if rec.state != AgentState.running:
            return
        log.info("agent.idle_exit", agent_id=rec.agent_id, timeout_s=timeout)
        # Stopping cancels this task with the agent's others: finish the work in a task we own.
        self.owner.spawn(self._complete(rec), f"complete:{rec.agent_id}")

    async def _complete(self, rec: AgentRecord) -> None:
        stopped = await self.supervisor.stop(rec.agent_id, reason="completed")
        if stopped:
            if self.on_completed is not None:
                await self.on_completed(rec)
            await self.worker.completed(rec.agent_id, "completed", "idle timeout")
