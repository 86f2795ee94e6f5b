"""Bearer auth for the control server: constant-time compare, explicit allow-list of public paths."""
from __future__ import annotations

import hmac

from aiohttp import web

from gastown.core.http import bearer_token, error_response

PUBLIC_PATHS = frozenset({"/alive", "/ready"})


def auth_middleware(control_token: str | None):
    expected = control_token.encode() if control_token else None

    @web.middleware
    async def middleware(request: web.Request, handler):
        if expected is None or request.path in PUBLIC_PATHS:
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            return error_response(401, "UNAUTHORIZED", "missing bearer token")
        if not hmac.compare_digest(token.encode(), expected):
            return error_response(401, "UNAUTHORIZED", "invalid bearer token")
        return await handler(request)

    return middleware
