"""Snapshot manifests sealed by the worker (``worker_api/snapshot_seals.py``): the runtime cannot
forge a seal, so a manifest edited in the bucket is refused at restore.

The snapshot code is synchronous (it runs in a thread); the worker client lives on the event loop.
:class:`WorkerSealer` bridges the two with ``run_coroutine_threadsafe`` and a timeout, and refuses
to be called from the loop's own thread (that would wait on itself).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Protocol

from supervisor.worker_client import WorkerClient, WorkerError

TIMEOUT_S = 15.0


class SealUnavailable(Exception):
    """The worker could not seal or check a manifest now (not configured, unreachable, refused)."""


class Sealer(Protocol):
    @property
    def active(self) -> bool: ...
    def seal(self, agent_id: str, manifest: dict[str, Any]) -> str: ...
    def verify(self, agent_id: str, manifest: dict[str, Any], seal: str) -> bool: ...


class WorkerSealer:
    def __init__(self, worker: WorkerClient) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        """Sealing applies once the runtime talks to a worker (a store without one stays unsealed)."""
        return self.worker.configured and self.loop is not None

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        loop = self.loop
        if loop is None:
            raise SealUnavailable("no event loop bound")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise SealUnavailable("called on the event loop's thread (it would wait on itself)")
        future = asyncio.run_coroutine_threadsafe(self.worker.call("POST", path, body, timeout=TIMEOUT_S), loop)
        try:
            data = future.result(TIMEOUT_S + 5)
        except (WorkerError, concurrent.futures.TimeoutError) as e:
            future.cancel()
            raise SealUnavailable(str(e) or type(e).__name__) from None
        if not isinstance(data, dict):
            raise SealUnavailable("the worker gave no answer")
        return data

    def seal(self, agent_id: str, manifest: dict[str, Any]) -> str:
        seal = self._call(f"/agents/{agent_id}/snapshot-seal", {"manifest": manifest}).get("seal")
        if not isinstance(seal, str) or not seal:
            raise SealUnavailable("the worker gave no seal")
        return seal

    def verify(self, agent_id: str, manifest: dict[str, Any], seal: str) -> bool:
        return self._call(f"/agents/{agent_id}/snapshot-verify", {"manifest": manifest, "seal": seal}).get("valid") is True
