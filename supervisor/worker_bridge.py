"""Synchronous calls to the worker from the snapshot threads.

Snapshots and restores run in threads (SQLite and the network block); the worker client lives on
the event loop. :class:`WorkerBridge` runs one call on the loop and waits for it with a timeout,
and refuses to be used from the loop's own thread (it would wait on itself).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from supervisor.worker_client import WorkerClient, WorkerError

TIMEOUT_S = 15.0


class BridgeError(Exception):
    """The worker could not answer now (not configured, unreachable, or refused: ``status``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WorkerBridge:
    def __init__(self, worker: WorkerClient) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        return self.worker.configured and self.loop is not None

    def call(self, method: str, path: str, body: Any = None, timeout: float = TIMEOUT_S) -> Any:
        loop = self.loop
        if loop is None:
            raise BridgeError("no event loop bound")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise BridgeError("called on the event loop's thread (it would wait on itself)")
        future = asyncio.run_coroutine_threadsafe(self.worker.call(method, path, body, timeout=timeout), loop)
        try:
            data = future.result(timeout + 5)
        except WorkerError as e:
            raise BridgeError(str(e), e.status) from None
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BridgeError("the worker did not answer in time") from None
        if data is None:
            raise BridgeError("the worker gave no answer (not configured?)")
        return data
