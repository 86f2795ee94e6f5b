"""Bearer auth for the control server: constant-time compare; the public paths come from the route
declarations (``control_server.app.ROUTES``)."""
from __future__ import annotations

import hmac

from aiohttp import web

from gastown.core.http import bearer_token, error_response


def auth_middleware(control_token: str | None, public_paths: frozenset[str]):
    expected = control_token.encode() if control_token else None

    @web.middleware
    async def middleware(request: web.Request, handler):
        if expected is None or request.path in public_paths:
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            return error_response(401, "UNAUTHORIZED", "missing bearer token")
        if not hmac.compare_digest(token.encode(), expected):
            return error_response(401, "UNAUTHORIZED", "invalid bearer token")
        return await handler(request)

    return middleware
