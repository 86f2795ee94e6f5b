"""Forwards every agent's events to the worker's archive, so history and live streams survive the
container (issue 12, item 3). Events go in batches (at most ``BATCH``, gathered for ``LINGER_S``)
to ``POST /api/towns/{t}/agent-events``; a failed batch is retried with a doubling delay and kept in
order. The queue is bounded: past ``MAX_QUEUE`` the oldest events are dropped and counted, because a
worker that is down for long must not take the container's memory with it. ``flush`` sends what is
queued on shutdown, within a deadline.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from gastown.core.jsonlog import get_logger
from supervisor.worker_client import WorkerClient, WorkerError

log = get_logger("supervisor.event_forward")

BATCH = 200
LINGER_S = 0.2
MAX_QUEUE = 20_000
MAX_BACKOFF_S = 30.0


class EventForwarder:
    def __init__(self, worker: WorkerClient, *, linger_s: float = LINGER_S, max_queue: int = MAX_QUEUE) -> None:
        self.worker = worker
        self.linger_s = linger_s
        self.max_queue = max_queue
        self.queue: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.sent = 0
        self._wake = asyncio.Event()

    def push(self, agent_id: str, event: dict[str, Any]) -> None:
        """Called synchronously for each event an agent's buffer takes; never blocks."""
        if len(self.queue) >= self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.warning("events.forward_dropped", dropped=self.dropped)
        self.queue.append({"agent_id": agent_id, **event})
        self._wake.set()

    async def _send_batch(self) -> bool:
        batch = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
        try:
            await self.worker.call("POST", "/agent-events", {"events": batch})
        except WorkerError as e:
            if e.status is not None and 400 <= e.status < 500 and e.status not in (401, 408, 429):
                # The worker refuses this batch for good (e.g. an event it cannot validate): drop it,
                # or it would block every later event for ever.
                log.warning("events.forward_refused", status=e.status, events=len(batch), error=str(e)[:300])
                self._pop(len(batch))
                return True
            log.warning("events.forward_failed", status=e.status, queued=len(self.queue))
            return False
        self._pop(len(batch))
        if not self.sent:
            log.info("events.forward_started", events=len(batch))
        self.sent += len(batch)
        return True

    def _pop(self, n: int) -> None:
        for _ in range(min(n, len(self.queue))):
            self.queue.popleft()

    async def run(self) -> None:
        """The forwarding loop (owned by the runtime's task owner)."""
        delay = 1.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.linger_s)
            while self.queue:
                if not self.worker.configured:
                    break  # kept until the worker's address and token arrive
                if await self._send_batch():
                    delay = 1.0
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def flush(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while self.queue and self.worker.configured and await self._send_batch():
                    pass
        except TimeoutError:
            log.warning("events.flush_timeout", queued=len(self.queue))
