"""Heartbeats to the worker: one per active agent every interval, and one right after a start, so the
worker learns of a dispatch that its own start call may have timed out on."""
from __future__ import annotations

import asyncio
import uuid
from typing import Callable

from gastown.contract.reports import Heartbeat
from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.supervisor import Supervisor
from supervisor.worker_client import WorkerError

log = get_logger("supervisor.heartbeat")

CONTAINER_INSTANCE_ID = uuid.uuid4().hex


class Heartbeats:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.worker = supervisor.worker
        self.drain_nonce: str | None = None
        self.on_drain_nonce: Callable[[str], None] | None = None  # the runtime acknowledges it when ready
        self.sent = 0

    def body(self, rec: AgentRecord) -> dict:
        st = rec.status()
        # Built, not validated: the worker validates (a report that fails there is logged, not lost).
        return Heartbeat.model_construct(
            status=st["status"], role=st["role"], name=st["name"], rig_id=st["rig_id"],
            last_event_type=st["last_event_type"], last_event_at=st["last_event_at"], active_tools=st["active_tools"],
            message_count=st["message_count"], container_instance_id=CONTAINER_INSTANCE_ID,
        ).model_dump(mode="json")

    async def beat(self, rec: AgentRecord) -> None:
        try:
            data = await self.worker.heartbeat(rec.agent_id, self.body(rec))
        except WorkerError as e:
            log.warning("heartbeat.failed", agent_id=rec.agent_id, status=e.status, error=str(e))
            return
        if data is not None:
            self.sent += 1
        nonce = data.get("drain_nonce") if isinstance(data, dict) else None
        if nonce:
            self.drain_nonce = nonce
            if self.on_drain_nonce is not None:
                self.on_drain_nonce(nonce)

    async def beat_all(self) -> None:
        agents = self.supervisor.active_agents()
        if agents:
            await asyncio.gather(*(self.beat(a) for a in agents))
