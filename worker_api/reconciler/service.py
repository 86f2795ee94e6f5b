"""Wiring of the reconciler into the aiohttp app: the service key, arming, startup and cleanup.

Arming rules: routes that create work (sling, convoy, bead create, reassign) tick the town at
once; any other successful write to a town route (container callbacks: done, completed, heartbeat,
eviction) arms it within one active interval, so container routes only record events and the loop
picks them up promptly without the routes knowing about the loop.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from worker_api.appkeys import DB, QUIET
from worker_api.bus import Bus
from worker_api.containers.service import TownContainers
from worker_api.dispatch import ContainerClient, HttpContainerClient
from worker_api.reconciler.loop import (
    CALLBACK_DELAY_S,
    NEW_WORK_DELAY_S,
    ReconcilerService,
)
from worker_api.leases import TownLeases
from worker_api.reconciler.tick import TickDeps
from worker_api.scm.base import ScmProvider

RECONCILER = web.AppKey("worker_reconciler", ReconcilerService)


def arm_new_work(app: web.Application, town_id: str) -> None:
    service = app.get(RECONCILER)
    if service is not None:
        service.arm(town_id, NEW_WORK_DELAY_S)


@web.middleware
async def arm_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    response = await handler(request)
    town_id = request.match_info.get("t")
    if town_id and request.method != "GET" and response.status < 400 and not request.get(QUIET):
        service = request.app.get(RECONCILER)
        if service is not None:
            service.arm(town_id, CALLBACK_DELAY_S)
    return response


def install(app: web.Application, *, run: bool, clock: Callable[[], float] = time.time,
            sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, container: ContainerClient | None = None,
            containers: TownContainers | None = None, scm: ScmProvider | None = None,
            leases: TownLeases | None = None, bus: Bus | None = None) -> ReconcilerService:
    """Create the service (always: routes use it) and, when ``run``, run its loops in a cleanup
    context of the app (install after the store's context: contexts unwind in reverse)."""
    deps = TickDeps(container=container or HttpContainerClient(), containers=containers, scm=scm)
    service = ReconcilerService(app[DB], deps, clock=clock, sleep=sleep, leases=leases, bus=bus)
    app[RECONCILER] = service
    service.enabled = run
    if run:
        async def _loops(app: web.Application) -> AsyncIterator[None]:
            await service.start()
            yield
            await service.stop()

        app.cleanup_ctx.append(_loops)
    return service
