"""Bearer auth for aiohttp clients: send the token, and on a 401 refresh it once and retry once.

Used by the container's worker client and by the plugin: both hold the town's container token,
which expires (8 h) while a turn or a container lives on; the worker's refresh route takes the
expired token. The refresh itself is the caller's (it knows the route) and must be sent with
``middlewares=()`` so it does not come back through here. One refresh at a time: concurrent 401s
wait for it and reuse its token. A second 401 is returned as it is, never a loop.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from aiohttp import (
    ClientHandlerType,
    ClientRequest,
    ClientResponse,
    ClientSession,
    hdrs,
)

from gastown.core.jsonlog import get_logger, register_secret

log = get_logger("gastown.bearer")

Refresh = Callable[[ClientSession, str], Awaitable["str | None"]]


class BearerAuth:
    def __init__(self, token: str | None, refresh: Refresh) -> None:
        self._token = token
        self._refresh = refresh
        self._lock = asyncio.Lock()
        register_secret(token)

    @property
    def token(self) -> str | None:
        return self._token

    def set_token(self, token: str | None) -> None:
        register_secret(token)
        self._token = token

    async def refresh(self, session: ClientSession, used: str | None = None) -> str | None:
        """A fresh token, or None when the refresh failed; a refresh that another caller finished
        while this one waited is reused, not repeated."""
        used = self._token if used is None else used
        async with self._lock:
            if self._token != used:
                return self._token
            if not used:
                return None
            fresh = await self._refresh(session, used)
            if fresh:
                self.set_token(fresh)
                log.info("token.refreshed")
            return fresh

    async def __call__(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        used = self._token
        if used:
            req.headers[hdrs.AUTHORIZATION] = f"Bearer {used}"
        resp = await handler(req)
        if resp.status != 401 or not used:
            return resp
        log.info("token.rejected", path=req.url.path)
        try:
            fresh = await self.refresh(req.session, used)
        except BaseException:  # the refresh's own error wins; free the refused response first
            resp.release()
            raise
        if not fresh:
            return resp
        resp.release()
        req.headers[hdrs.AUTHORIZATION] = f"Bearer {fresh}"
        return await handler(req)
