"""Start a town's container when its work needs one, and say when it may stop.

``ensure_running`` is what the reconciler (before it dispatches) and the mayor's desk (before it
delivers) call: a running container is used as is; a stopped one is started by the provider with the
town's environment — a freshly minted runtime token, the town's control token, the worker's URL and
the settings every town's container shares — then waited for until ``/ready`` (boot hydration done).
One start per town at a time (a lock), and after a failed start none for ``RETRY_S``.

Idle: a town's container may stop when it has no active work and no *user or work* activity for the
idle window. The watermark (:data:`K_LAST_ACTIVITY`) is set by a user's mayor message, by every
tick that finds work, by a start and by the end of a mayor's answer; agents' heartbeats do not
touch it (they say a process is alive, not that anyone needs it).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from gastown.core.jsonlog import get_logger
from worker_api import store
from worker_api.containers.base import RUNNING_STATES, ContainerProvider, Launch, ProviderError
from worker_api.db import Conn, Database
from worker_api.dispatch import Target, town_target
from worker_api.tokens import ContainerTokens

log = get_logger("worker_api.containers")

K_LAST_ACTIVITY = "town:last_user_or_work_at"
READY_TIMEOUT_S = 180.0   # image start + kilo-free boot + hydration (which may resume agents)
RETRY_S = 15.0
IDLE_STOP_S = 300.0       # docs/original-system.md §5.6: five quiet minutes
IDLE_STOP_THROTTLE_S = 120.0


@dataclass(frozen=True)
class LaunchSettings:
    """What every town's container gets besides its own tokens. ``base_env`` may hold secrets."""

    worker_url: str
    base_env: dict[str, str] = field(default_factory=dict, repr=False)
    brokered_snapshots: bool = False
    ready_timeout_s: float = READY_TIMEOUT_S
    idle_stop_s: float = IDLE_STOP_S
    idle_stop_throttle_s: float = IDLE_STOP_THROTTLE_S


def touch_activity(conn: Conn, town_id: str, now: int) -> None:
    store.kv_set(conn, town_id, K_LAST_ACTIVITY, now)


def last_activity(conn: Conn, town_id: str) -> int:
    return int(store.kv_get(conn, town_id, K_LAST_ACTIVITY, 0) or 0)


def _launch_tx(conn: Conn, town_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT control_token, token_generation FROM towns WHERE town_id = ?", (town_id,)).fetchone()
    return {"control_token": row[0], "generation": row[1]} if row else None


def _set_url_tx(conn: Conn, town_id: str, url: str) -> None:
    conn.execute("UPDATE towns SET container_url = ? WHERE town_id = ?", (url, town_id))


class TownContainers:
    def __init__(self, db: Database, provider: ContainerProvider, tokens: ContainerTokens, settings: LaunchSettings,
                 *, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.provider = provider
        self.tokens = tokens
        self.settings = settings
        self.clock_ms = clock_ms
        self.monotonic = monotonic
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed_at: dict[str, float] = {}
        self._http: aiohttp.ClientSession | None = None

    async def ensure_running(self, town_id: str) -> Target | None:
        """The town's container, started if it is not running; None when it cannot be had now."""
        async with self._locks.setdefault(town_id, asyncio.Lock()):
            state = await self.provider.state(town_id)
            target = await self.db.run(town_target, town_id, write=False)
            if target is None:
                return None
            if state in RUNNING_STATES:
                return target if await self._wait_ready(target, 0 if state == "healthy" else 5.0) else None
            failed = self._failed_at.get(town_id)
            if failed is not None and self.monotonic() - failed < RETRY_S:
                return None
            try:
                target = await self._start(town_id)
            except ProviderError as e:
                self._failed_at[town_id] = self.monotonic()
                log.error("container.start_failed", town=town_id, error=str(e))
                return None
            if not await self._wait_ready(target, self.settings.ready_timeout_s):
                self._failed_at[town_id] = self.monotonic()
                log.error("container.not_ready", town=town_id, timeout_s=self.settings.ready_timeout_s)
                return None
            self._failed_at.pop(town_id, None)
            return target

    async def _start(self, town_id: str) -> Target:
        row = await self.db.run(_launch_tx, town_id, write=False)
        if row is None:
            raise ProviderError("town not found")
        env = {**self.settings.base_env, "GASTOWN_TOWN_ID": town_id, "GASTOWN_API_URL": self.settings.worker_url,
               "GASTOWN_CONTROL_TOKEN": row["control_token"],
               "GASTOWN_CONTAINER_TOKEN": self.tokens.mint(town_id, generation=row["generation"])}
        if self.settings.brokered_snapshots:
            env["GASTOWN_SNAPSHOT_URL"] = "worker:"  # the worker holds the store's keys (snapshot_access)
        log.info("container.starting", town=town_id)
        await self.db.run(touch_activity, town_id, self.clock_ms())  # a start is activity: no instant stop
        url = await self.provider.start(Launch(town_id, env))
        await self.db.run(_set_url_tx, town_id, url)
        return Target(town_id, url, row["control_token"])

    async def _wait_ready(self, target: Target, timeout: float) -> bool:
        """``/ready`` answers 200 once boot hydration is done (the runtime's start contract)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        deadline = self.monotonic() + timeout
        while True:
            try:
                async with self._http.get(f"{target.url}/ready", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        return True
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                pass
            if self.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.25)

    async def stop_if_idle(self, town_id: str, now: int, *, active: bool, mayor_busy: bool,
                           last_stop_at: int) -> bool:
        """Stop the container when the town is idle; True when it was stopped (the caller throttles)."""
        s = self.settings
        if active or mayor_busy or now - last_stop_at < s.idle_stop_throttle_s * 1000:
            return False
        if now - await self.db.run(last_activity, town_id, write=False) < s.idle_stop_s * 1000:
            return False
        async with self._locks.setdefault(town_id, asyncio.Lock()):  # no start while it drains
            if await self.provider.state(town_id) not in RUNNING_STATES:
                return False
            try:
                await self.provider.stop(town_id)
            except ProviderError as e:
                log.warning("container.idle_stop_failed", town=town_id, error=str(e))
                return False
        return True

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self.provider.aclose()
