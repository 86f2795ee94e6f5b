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


class WorkerBridge:
    def __init__(self, worker: WorkerClient) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        return self.worker.configured and self.loop is not None

    def call(self, method: str, path: str, body: Any = None, timeout: float = TIMEOUT_S) -> Any:
        """The worker's answer; :class:`WorkerError` (``status`` when it refused) when there is none."""
        loop = self.loop
        if loop is None:
            raise WorkerError("no event loop bound")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise WorkerError("called on the event loop's thread (it would wait on itself)")
        future = asyncio.run_coroutine_threadsafe(self.worker.call(method, path, body, timeout=timeout), loop)
        try:
            data = future.result(timeout + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise WorkerError("the worker did not answer in time") from None
        if data is None:
            raise WorkerError("the worker gave no answer (not configured?)")
        return data
