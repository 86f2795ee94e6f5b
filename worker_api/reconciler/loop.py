"""The per-town reconciler loop and the service that owns every town's loop.

Cadence: a tick every 5 s while the town has active work, every 5 min when idle. ``arm`` only ever
*shortens* the wait (new work must not be delayed by an idle timer, and a chatty caller must not
postpone a due tick). Time is injected (``clock`` in seconds, ``sleep``) so tests can drive the
loop in virtual time; the service owns its tasks and cancels them on shutdown.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from gastown.core.jsonlog import get_logger
from worker_api import store
from worker_api.db import Database
from worker_api.reconciler.constants import ACTIVE_INTERVAL_MS, IDLE_INTERVAL_MS
from worker_api.reconciler.tick import TickDeps, TickResult, run_tick

log = get_logger("worker_api.reconciler")

ACTIVE_S = ACTIVE_INTERVAL_MS / 1000
IDLE_S = IDLE_INTERVAL_MS / 1000
NEW_WORK_DELAY_S = 0.0       # a sling or convoy start ticks at once
CALLBACK_DELAY_S = ACTIVE_S  # container callbacks: within one active interval
ERROR_BACKOFF_S = ACTIVE_S

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TownLoop:
    def __init__(self, town_id: str, tick: Callable[[], Awaitable[TickResult | None]], *, clock: Clock,
                 sleep: Sleep, first_delay_s: float = 0.0) -> None:
        self.town_id = town_id
        self._tick = tick
        self._clock = clock
        self._sleep = sleep
        self.deadline = clock() + first_delay_s
        self._wake = asyncio.Event()
        self.ticks = 0
        self.last: TickResult | None = None

    def arm(self, delay_s: float = ACTIVE_S) -> None:
        """Tick within ``delay_s``; never postpones an earlier deadline."""
        when = self._clock() + delay_s
        if when < self.deadline:
            self.deadline = when
            self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            delay = self.deadline - self._clock()
            if delay > 0:
                await self._sleep_or_wake(delay)
                continue
            self.deadline = float("inf")  # arms during the tick set the next deadline
            try:
                result = await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop must survive a bad tick
                log.error("reconciler.tick_failed", town=self.town_id, error=repr(e), exc_info=True)
                self.deadline = min(self.deadline, self._clock() + ERROR_BACKOFF_S)
                continue
            self.ticks += 1
            if result is None:
                log.info("reconciler.town_gone", town=self.town_id)
                return
            self.last = result
            self.deadline = min(self.deadline, self._clock() + (ACTIVE_S if result.active else IDLE_S))

    async def _sleep_or_wake(self, delay: float) -> None:
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)


class ReconcilerService:
    """One ``TownLoop`` task per town. ``start`` loads the known towns; ``arm`` creates a loop on
    first use (a town created later); ``stop`` cancels and awaits every task."""

    def __init__(self, db: Database, deps: TickDeps, *, clock: Clock = time.time,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.db = db
        self.deps = deps
        self.clock = clock
        self.sleep = sleep
        self.loops: dict[str, TownLoop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.running = False

    def _clock_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self) -> None:
        self.running = True
        for town_id in await self.db.run(store.list_town_ids, write=False):
            self.ensure(town_id)
        log.info("reconciler.started", towns=len(self.loops))

    def ensure(self, town_id: str, first_delay_s: float = 0.0) -> TownLoop | None:
        if not self.running:
            return None
        loop = self.loops.get(town_id)
        if loop is None:
            loop = TownLoop(town_id, lambda: run_tick(self.db, town_id, self.deps, self._clock_ms),
                            clock=self.clock, sleep=self.sleep, first_delay_s=first_delay_s)
            self.loops[town_id] = loop
            task = asyncio.get_running_loop().create_task(loop.run(), name=f"reconciler:{town_id}")
            self._tasks[town_id] = task
            task.add_done_callback(lambda _t, tid=town_id: self._forget(tid, _t))
        return loop

    def _forget(self, town_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(town_id) is task:
            self._tasks.pop(town_id, None)
            self.loops.pop(town_id, None)

    def arm(self, town_id: str, delay_s: float = ACTIVE_S) -> None:
        loop = self.ensure(town_id, first_delay_s=delay_s)
        if loop is not None:
            loop.arm(delay_s)

    async def stop(self) -> None:
        self.running = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self.loops.clear()
        for client in (self.deps.container, self.deps.scm):
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()
        log.info("reconciler.stopped")
