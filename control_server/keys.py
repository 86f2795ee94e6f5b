"""The control server's application keys (one place, so route modules need not import the app)."""
from __future__ import annotations

from aiohttp import web

from supervisor.runtime import ContainerRuntime

RUNTIME = web.AppKey("runtime", ContainerRuntime)
