"""Keeps the worker's ``container-registry`` equal to this container's live agents.

Entries carry the start request **without secrets** (tokens come fresh from the worker on resume).
Syncs are single-flight and coalesced: a burst of changes costs at most one extra POST, and the last
state always wins.
"""
from __future__ import annotations

import asyncio
from typing import Any

from gastown.core.jsonlog import get_logger
from supervisor.models import public_request
from supervisor.supervisor import Supervisor

log = get_logger("supervisor.registry")


class RegistrySync:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._dirty = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.synced = 0

    def entries(self) -> list[dict[str, Any]]:
        return [
            {
                "agent_id": a.agent_id,
                "request": public_request(a.request),
                "workdir": str(a.paths.workdir),
            }
            for a in self.supervisor.active_agents()
        ]

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        """Owned loop: waits for a change, then pushes the current state."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.sync_now()

    async def sync_now(self) -> bool:
        worker = self.supervisor.worker
        if not worker.configured:
            return False
        result = await worker.try_call("POST", "/container-registry", self.entries())
        if result is not None:
            self.synced += 1
            return True
        return False
