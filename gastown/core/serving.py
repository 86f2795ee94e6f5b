"""How both servers run their aiohttp app: slow clients cut (keep-alive timer), and at most
``max_connections`` open connections.

aiohttp has no connection limit of its own: every accepted socket costs a file descriptor and a
handler until a timer closes it, so a flood of connections could exhaust the process's descriptors
(and with them the kilo pipes and the database). Past the cap a new connection gets a short 503
with the JSON error body and is closed; it allocates nothing. ``GASTOWN_MAX_CONNECTIONS`` sets
the cap (default 1000, well under the usual ``nofile`` limit).
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from aiohttp import web

from gastown.core.http import SERVER_KEEPALIVE_S
from gastown.core.jsonlog import get_logger

log = get_logger("gastown.core.serving")
DEFAULT_MAX_CONNECTIONS = 1000
_BODY = json.dumps({"error": {"code": "TOO_MANY_CONNECTIONS",
                              "message": "the server has too many open connections; retry shortly"}}).encode()
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


def max_connections_from_env() -> int:
    raw = os.environ.get("GASTOWN_MAX_CONNECTIONS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_CONNECTIONS


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()


class _CappedServer:
    """aiohttp's ``Server`` (the protocol factory a site listens with), refusing past the cap."""

    def __init__(self, server: Any, cap: int) -> None:
        self._server = server
        self._cap = cap
        self._refused = 0

    def __call__(self) -> asyncio.Protocol:
        if len(self._server.connections) >= self._cap:
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                log.warning("server.connection_refused", open=len(self._server.connections), cap=self._cap,
                            refused=self._refused)
            return _Refuse()
        return self._server()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class Runner(web.AppRunner):
    """An ``AppRunner`` whose sites listen with the capped factory."""

    def __init__(self, app: web.Application, *, max_connections: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", SERVER_KEEPALIVE_S)
        super().__init__(app, **kwargs)
        self.max_connections = max_connections or max_connections_from_env()

    async def setup(self) -> None:
        await super().setup()
        self._server = _CappedServer(self._server, self.max_connections)  # what its sites listen with
