"""The per-town reconciler loop and the service that owns the loops of the towns this replica holds.

Cadence: a tick every 5 s while the town has active work, every 5 min when idle. ``arm`` only ever
*shortens* the wait (new work must not be delayed by an idle timer, and a chatty caller must not
postpone a due tick). Time is injected (``clock`` in seconds, ``sleep``) so tests can drive the
loop in virtual time; the service owns its tasks and cancels them on shutdown.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from typing import Any, Awaitable, Callable

from gastown.core.jsonlog import get_logger
from worker_api.bus import Bus
from worker_api.db import Database
from worker_api import leases
from worker_api.leases import LEASE_TTL_MS, RENEW_S, LeaseLost, TownLeases
from worker_api.reconciler.constants import ACTIVE_INTERVAL_MS, IDLE_INTERVAL_MS
from worker_api.reconciler.tick import TickDeps, TickResult, run_tick

log = get_logger("worker_api.reconciler")

ACTIVE_S = ACTIVE_INTERVAL_MS / 1000
IDLE_S = IDLE_INTERVAL_MS / 1000
NEW_WORK_DELAY_S = 0.0       # a sling or convoy start ticks at once
CALLBACK_DELAY_S = ACTIVE_S  # container callbacks: within one active interval
ERROR_BACKOFF_S = ACTIVE_S
RETIRE_S = 10.0              # shutdown: how long the ticks in progress may take to finish

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
        self.retired = False

    def retire(self) -> None:
        """End after the tick in progress, if any: cancelling it instead could leave a committed
        dispatch whose start call never went out (its agent would look working for minutes)."""
        self.retired = True
        self._wake.set()

    def arm(self, delay_s: float = ACTIVE_S) -> None:
        """Tick within ``delay_s``; never postpones an earlier deadline."""
        when = self._clock() + delay_s
        if when < self.deadline:
            self.deadline = when
            self._wake.set()

    async def run(self) -> None:
        while not self.retired:
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
    """One ``TownLoop`` task per town this replica holds the lease of (worker_api/leases.py).

    ``start`` claims its share of the towns and keeps a membership task that renews, rebalances and
    claims every ``RENEW_S``; ``arm`` ticks a held town, claims a town nobody holds (a new one), and
    nudges the holder of any other through the bus; ``stop`` lets the ticks in progress finish,
    cancels the rest and hands the leases back. Each tick commits only under the fence its lease was claimed with."""

    def __init__(self, db: Database, deps: TickDeps, *, clock: Clock = time.time,
                 sleep: Sleep = asyncio.sleep, leases: TownLeases | None = None, bus: Bus | None = None) -> None:
        self.db = db
        self.deps = deps
        self.clock = clock
        self.sleep = sleep
        self.leases = leases or TownLeases(new_replica_id())
        self.bus = bus or Bus(self.leases.replica_id)
        self.bus.subscribe(self._nudged)
        self.loops: dict[str, TownLoop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._aside: set[asyncio.Task[Any]] = set()   # membership and claims: cancelled on stop
        self._retiring: dict[str, asyncio.Task[None]] = {}  # loops of towns given up, finishing their tick
        self._lost: dict[str, int] = {}    # town -> the fence a tick found lost (a later sync may still list it)
        self._lease_lock = asyncio.Lock()  # one lease transaction at a time: a sync's snapshot never undoes a claim
        self._synced_at = 0.0              # clock() of the last sync that went through
        self._adopted: list[Callable[[str], None]] = []
        self.running = False
        self.enabled = True   # False: this app runs no loops (tests tick by hand) and holds no leases

    @property
    def replica_id(self) -> str:
        return self.leases.replica_id

    def on_adopt(self, callback: Callable[[str], None]) -> None:
        """Called with each town this replica takes over (the desk delivers what waits for its mayor)."""
        self._adopted.append(callback)

    def _clock_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self) -> None:
        self.running = True
        async with self._lease_lock:
            await self.sync()
        self._spawn(self._membership(), "reconciler:membership")
        log.info("reconciler.started", replica=self.replica_id, towns=len(self.loops))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._aside.add(task)
        task.add_done_callback(self._aside.discard)

    async def _membership(self) -> None:
        while True:
            await self.sleep(RENEW_S)
            try:
                async with self._lease_lock:
                    await self.sync()
            except Exception as e:  # noqa: BLE001 - the next round tries again; leases outlive a few misses
                self._sync_failed(e)

    def _sync_failed(self, error: Exception) -> None:
        log.warning("reconciler.lease_sync_failed", replica=self.replica_id, error=repr(error))
        if self.clock() - self._synced_at > LEASE_TTL_MS / 1000 - RENEW_S and self.leases.fences:
            # Unrenewed, our leases are about to be others' to take: stop acting on them first (the
            # desk reads the same fences, so it stops delivering too).
            log.warning("reconciler.leases_expiring", replica=self.replica_id, towns=len(self.leases.fences))
            for town_id in list(self.leases.fences):
                self._drop(town_id)

    async def sync(self) -> None:
        """Renew, rebalance and claim; start the loops of towns gained, stop those of towns lost
        (called under ``_lease_lock``)."""
        held = await self.db.run(leases.sync_tx, self.replica_id, self._clock_ms())
        self._synced_at = self.clock()
        self.leases.others = held.others
        for town_id in set(self.leases.fences) - set(held.mine):
            self._drop(town_id)
        for town_id, fence in held.mine.items():
            self._adopt(town_id, fence)

    def _adopt(self, town_id: str, fence: int, first_delay_s: float = 0.0) -> None:
        if not self.running or self.leases.fences.get(town_id) == fence or fence <= self._lost.get(town_id, 0):
            return
        if town_id in self.leases.fences:
            self._drop(town_id)  # held again under a new fence: the old loop's ticks cannot commit
        self.leases.fences[town_id] = fence
        self._start_loop(town_id, fence, first_delay_s)
        log.info("reconciler.town_adopted", town=town_id, replica=self.replica_id, fence=fence)
        for callback in self._adopted:
            callback(town_id)

    def _drop(self, town_id: str) -> None:
        self.leases.fences.pop(town_id, None)
        task = self._tasks.pop(town_id, None)
        loop = self.loops.pop(town_id, None)
        if loop is not None:
            loop.retire()  # its next tick would not commit anyway (the fence)
        if task is not None and not task.done():
            self._retiring[town_id] = task  # awaited (or cancelled) by stop(); a new loop waits for it
            task.add_done_callback(lambda t, tid=town_id: self._retiring.pop(tid, None) if self._retiring.get(tid)
                                   is t else None)
        log.info("reconciler.town_released", town=town_id, replica=self.replica_id)

    def _start_loop(self, town_id: str, fence: int, first_delay_s: float) -> None:
        loop = TownLoop(town_id, lambda: self._tick(town_id, fence), clock=self.clock, sleep=self.sleep,
                        first_delay_s=first_delay_s)
        self.loops[town_id] = loop
        task = asyncio.get_running_loop().create_task(self._run_after(self._retiring.get(town_id), loop),
                                                      name=f"reconciler:{town_id}")
        self._tasks[town_id] = task
        task.add_done_callback(lambda _t, tid=town_id: self._forget(tid, _t))

    @staticmethod
    async def _run_after(previous: asyncio.Task[None] | None, loop: TownLoop) -> None:
        """One loop per town at a time: a town held again waits for its retired loop's last tick."""
        if previous is not None:
            await asyncio.wait({previous})
        await loop.run()

    async def _tick(self, town_id: str, fence: int) -> TickResult | None:
        def guard(conn: Any) -> None:
            leases.check(conn, town_id, self.replica_id, fence)
        try:
            return await run_tick(self.db, town_id, self.deps, self._clock_ms, guard)
        except LeaseLost:
            log.warning("reconciler.lease_lost", town=town_id, replica=self.replica_id, fence=fence)
            self._lost[town_id] = max(fence, self._lost.get(town_id, 0))
            if self.leases.fences.get(town_id) == fence:
                self.leases.fences.pop(town_id, None)  # at once: the desk stops before the loop has ended
            return None

    async def _claim(self, town_id: str, first_delay_s: float) -> None:
        try:
            async with self._lease_lock:
                if not self.running or self.leases.owns(town_id):
                    return
                fence = await self.db.run(leases.claim_tx, town_id, self.replica_id, self._clock_ms())
                if fence is not None:
                    self._adopt(town_id, fence, first_delay_s)
        except Exception as e:  # noqa: BLE001 - the membership's next round claims it, or another replica does
            log.warning("reconciler.claim_failed", town=town_id, error=repr(e))
            return
        if fence is None:
            self.bus.publish("arm", town_id, delay_s=first_delay_s)  # another replica was first

    def _forget(self, town_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(town_id) is task:
            self._tasks.pop(town_id, None)
            self.loops.pop(town_id, None)
            if not task.cancelled():
                self.leases.fences.pop(town_id, None)  # gone or lost: the next sync may claim it again

    def arm(self, town_id: str, delay_s: float = ACTIVE_S) -> None:
        if self.leases.owns(town_id) or not self.running:
            loop = self.loops.get(town_id)
            if loop is not None:
                loop.arm(delay_s)
            return
        if self.leases.held_elsewhere(town_id, self._clock_ms()):
            self.bus.publish("arm", town_id, delay_s=delay_s)
        else:  # nobody holds it (a new town): claim it, its first tick after delay_s
            self._spawn(self._claim(town_id, delay_s), f"reconciler:claim:{town_id}")

    def _nudged(self, kind: str, town_id: str, data: dict[str, Any]) -> None:
        if kind == "resync":  # the bus was away: tick every held town and let the desk look at it again
            for held, loop in list(self.loops.items()):
                loop.arm(0.0)
                for callback in self._adopted:
                    callback(held)
            return
        if kind == "arm" and self.leases.owns(town_id):
            loop = self.loops.get(town_id)
            if loop is not None:
                loop.arm(float(data.get("delay_s") or 0.0))

    async def stop(self) -> None:
        """Let the ticks in progress finish (up to ``RETIRE_S``), cancel what is left, hand the leases back."""
        self.running = False
        async with self._lease_lock:  # a lease transaction in flight commits before the release below
            aside = list(self._aside)
            for task in aside:
                task.cancel()
            await asyncio.gather(*aside, return_exceptions=True)
            for loop in self.loops.values():
                loop.retire()
            tasks = [*self._tasks.values(), *self._retiring.values()]
            if tasks:
                await asyncio.wait(tasks, timeout=RETIRE_S)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()
            self.loops.clear()
            try:
                await self.db.run(leases.release_tx, self.replica_id)
            except Exception as e:  # noqa: BLE001 - they expire by themselves
                log.warning("reconciler.release_failed", error=repr(e))
        self.leases.fences.clear()
        for client in (self.deps.container, self.deps.scm):
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()
        log.info("reconciler.stopped", replica=self.replica_id)


def new_replica_id() -> str:
    return f"replica-{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"
