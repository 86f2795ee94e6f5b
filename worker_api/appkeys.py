"""Typed keys for what the app and each request carry (aiohttp ``AppKey``/``RequestKey``)."""
from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from worker_api.bus import Bus
from worker_api.containers.service import TownContainers
from worker_api.db import Database
from worker_api.leases import TownLeases
from worker_api.tokens import ContainerTokens

DB = web.AppKey("worker_db", Database)
TOKENS = web.AppKey("worker_tokens", ContainerTokens)
ADMIN_TOKEN = web.AppKey("worker_admin_token", str)
CLOCK = web.AppKey("worker_clock", Callable[[], float])
# Present when the worker starts and stops the towns' containers itself (worker_api/containers/).
CONTAINERS = web.AppKey("worker_containers", TownContainers)
# aiohttp route → the auth policy its declaration names (worker_api.routes).
AUTH_POLICIES = web.AppKey("worker_auth_policies", dict)
BUS = web.AppKey("worker_bus", Bus)                # nudges between replicas (worker_api/bus.py)
LEASES = web.AppKey("worker_leases", TownLeases)   # the towns this replica reconciles

TOWN = web.RequestKey("worker_town", dict)  # the path town's row, set by the auth middleware
PRINCIPAL = web.RequestKey("worker_principal", Any)  # auth.Principal
# Set by a handler whose writes are no news for the reconciler (telemetry, event archive): no tick.
QUIET = web.RequestKey("worker_quiet", bool)


def now_ms(request: web.Request) -> int:
    """The app clock in epoch milliseconds (the unit of every ``*_at`` column)."""
    return int(request.app[CLOCK]() * 1000)
