"""Assembly of the worker API application (routes, middlewares, store lifecycle).

Logging note: worker log lines name the town ``town=...``. The ``town_id`` key of
``gastown.core.jsonlog`` is the process-wide town of a container; the worker serves many towns and
leaves it unset (a ``town_id`` field would be shadowed by that null).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from gastown.core.http import MAX_BODY_BYTES, error_middleware
from gastown.core.jsonlog import get_logger, register_secret
from worker_api import routes
from worker_api.appkeys import ADMIN_TOKEN, BUS, CLOCK, CONTAINERS, DB, LEASES, TOKENS
from worker_api.auth import auth_middleware
from worker_api.bus import Bus, PgBus
from worker_api.containers.base import ContainerProvider
from worker_api.containers.service import LaunchSettings, TownContainers
from worker_api.db import Database
from worker_api.front import mayor
from worker_api.reconciler import service as reconciler_service
from worker_api.leases import TownLeases
from worker_api.reconciler.loop import new_replica_id
from worker_api.scm.base import ScmProvider
from worker_api.snapshot_access import BROKER, SnapshotBroker
from worker_api.tokens import ContainerTokens

log = get_logger("worker_api.app")


def _control_tokens(conn) -> list[str]:  # type: ignore[no-untyped-def]
    return [r[0] for r in conn.execute("SELECT control_token FROM towns")]


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The store lives as long as the app; the reconciler's context nests inside this one, so its
    loops stop before the store closes. Control tokens already stored are scrubbed from logs after
    a restart too."""
    for token in await app[DB].run(_control_tokens, write=False):
        register_secret(token)
    yield
    await app[DB].aclose()


async def _bus_ctx(app: web.Application) -> AsyncIterator[None]:
    """Listening from start-up to shutdown; stops after the loops and the desk that publish on it."""
    await app[BUS].start()
    yield
    await app[BUS].aclose()


async def _containers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Closed after the desk and the reconciler loops (contexts unwind in reverse), before the store."""
    yield
    await app[CONTAINERS].aclose()


def create_app(
    db_path: str | Path,
    *,
    admin_token: str,
    jwt_secret: str,
    now: Callable[[], float] = time.time,
    run_reconciler: bool | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    container_client: Any = None,
    container_provider: ContainerProvider | None = None,
    launch: LaunchSettings | None = None,
    scm_provider: ScmProvider | None = None,
    snapshot_broker: SnapshotBroker | None = None,
) -> web.Application:
    """The worker API over the store ``db_path``: a SQLite file, or a ``postgresql://`` URL shared
    with other replicas (created or migrated here).

    ``now`` (epoch seconds) drives token expiry, drain timeouts and every stored timestamp, so
    tests can move time. The store is ``app[worker_api.appkeys.DB]``; it closes on app cleanup.

    The per-town reconciler loops start with the app and are cancelled on cleanup. By default
    (``run_reconciler=None``) they run only on the real clock: under a fake ``now`` a loop's
    deadlines would never arrive, and such tests drive ticks themselves. Pass ``True`` with a fake
    ``sleep`` to run the loops in virtual time.

    ``scm_provider`` (e.g. ``worker_api.scm.GitHubProvider.from_env()``) polls and merges the PRs of
    merge requests; ``None`` leaves them alone (a PR merge request then fails after R4's timeout
    unless a poll marked it awaiting approval). Rig tokens are set with ``PUT .../rigs/{r}/scm``.

    ``container_provider`` (worker_api/containers/) lets the worker start a town's container when work
    or a user's message arrives and stop it when idle; ``launch`` is what every container is given.
    """
    if not admin_token:
        raise ValueError("admin_token must not be empty")
    app = web.Application(middlewares=[error_middleware, auth_middleware, reconciler_service.arm_middleware],
                          client_max_size=MAX_BODY_BYTES)
    app[DB] = Database(db_path)
    replica = new_replica_id()
    app[LEASES] = TownLeases(replica)
    app[BUS] = PgBus(replica, app[DB].path) if app[DB].postgres else Bus(replica)
    app[TOKENS] = ContainerTokens(jwt_secret, now=now)
    app[ADMIN_TOKEN] = admin_token
    app[CLOCK] = now
    if snapshot_broker is not None:
        app[BROKER] = snapshot_broker  # presigned snapshot access for the towns' containers
    routes.install(app)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_bus_ctx)
    if container_provider is not None:
        app[CONTAINERS] = TownContainers(app[DB], container_provider, app[TOKENS], launch or LaunchSettings(""),
                                         clock_ms=lambda: int(now() * 1000))
        app.cleanup_ctx.append(_containers_ctx)
    mayor.install(app, lambda: int(now() * 1000))  # after the store: contexts unwind in reverse
    reconciler_service.install(
        app, run=run_reconciler if run_reconciler is not None else now is time.time, clock=now, sleep=sleep,
        container=container_client, containers=app.get(CONTAINERS), scm=scm_provider, leases=app[LEASES], bus=app[BUS],
    )
    return app
