"""Bearer auth for the control server: constant-time compare; the public paths and the routes that
also take a stream ticket (``?ticket=``, ``tickets``) come from the route declarations
(``control_server.app.ROUTES``)."""
from __future__ import annotations

import hmac
from typing import Callable

from aiohttp import web

from gastown.core.http import bearer_token, error_response


def auth_middleware(control_token: str | None, public_paths: frozenset[str], ticket_paths: frozenset[str] = frozenset(),
                    ticket_valid: Callable[..., bool] | None = None):
    expected = control_token.encode() if control_token else None

    @web.middleware
    async def middleware(request: web.Request, handler):
        if expected is None or request.path in public_paths:
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            ticket = request.query.get("ticket")
            resource = request.match_info.route.resource
            if ticket and ticket_valid is not None and resource is not None and resource.canonical in ticket_paths \
                    and ticket_valid(ticket, request.match_info.get("agent_id", ""),
                                     consume=resource.canonical.endswith("/pty")):
                return await handler(request)
            return error_response(401, "UNAUTHORIZED", "missing bearer token" if not ticket else "invalid ticket")
        if not hmac.compare_digest(token.encode(), expected):
            return error_response(401, "UNAUTHORIZED", "invalid bearer token")
        return await handler(request)

    return middleware
