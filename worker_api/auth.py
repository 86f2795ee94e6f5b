"""Who may call what: one middleware reading the policy each route's declaration names
(``worker_api.routes``).

Fail closed: a route without a declared policy is admin-only. Order of checks, so the answer
leaks as little as possible: missing/invalid token → 401; bad path id → 400; container token of
another town (or on a non-town route) → 403; unknown town → 404 (only after the caller proved
access, so existence of other towns is not revealed to a container).

Policies: ``public`` (no auth), ``admin``, ``runtime`` (admin or the town's runtime token:
registry, telemetry, eviction, heartbeats, agent tokens), ``town`` (also an agent token of the path
town), ``self`` (like town, but an agent token only for its own ``{a}``), ``refresh`` (runtime or
agent token of the path town that may be expired, see ``ContainerTokens.verify_allow_expired``),
``user`` (admin, or a user: on a town path only the town's owner), ``member`` (``town`` or
``user``: what both a town's agents and its owner may do, e.g. beads), ``mayor`` (``member``, but of
the agents only the mayor: sling, convoys, reassign, reset). A user token on a
``town``/``self``/``runtime``/``refresh``/``admin`` route is 403; so is an agent token outside its
scope. A token of an older town generation (rotated) is 401.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from gastown.core.http import ApiError, bearer_token, path_id
from gastown.core.jsonlog import get_logger
from worker_api import store, users
from worker_api.appkeys import ADMIN_TOKEN, AUTH_POLICIES, DB, PRINCIPAL, TOKENS, TOWN
from worker_api.tokens import TokenClaims, TokenError

log = get_logger("worker_api.auth")

PUBLIC, ADMIN, TOWN_ACCESS, REFRESH, USER, MEMBER = "public", "admin", "town", "refresh", "user", "member"
RUNTIME, SELF, MAYOR = "runtime", "self", "mayor"
_USER_POLICIES = (USER, MEMBER, MAYOR)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Principal:
    kind: str  # "admin" | "container" (the runtime or one of its agents) | "user"
    town_id: str | None = None
    claims: TokenClaims | None = None
    user_id: str | None = None

    @property
    def agent_id(self) -> str | None:
        """The agent an agent-scoped token acts as (None for the runtime, admin and users)."""
        return self.claims.agent_id if self.claims is not None else None


def is_admin_token(request: web.Request, token: str) -> bool:
    expected = request.app[ADMIN_TOKEN]
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message)


def authenticate(request: web.Request, policy: str) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("missing bearer token")
    if is_admin_token(request, token):
        return Principal("admin")
    tokens = request.app[TOKENS]
    try:
        if policy == REFRESH:
            claims = tokens.verify_allow_expired(token)
        else:
            claims = tokens.verify(token)
    except TokenError as e:
        event = "token.refresh_refused" if policy == REFRESH else "auth.token_rejected"
        log.warning(event, reason=e.reason, path=request.path, path_town=request.match_info.get("t"))
        raise _unauthorized(f"container token rejected: {e.reason}") from None
    if policy == ADMIN:
        raise ApiError(403, "FORBIDDEN", "admin token required")
    return Principal("container", town_id=claims.town_id, claims=claims)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match_info = request.match_info
    if match_info.http_exception is not None:  # unknown route / method: let error_middleware map it
        return await handler(request)
    policy = request.app[AUTH_POLICIES].get(match_info.route, ADMIN)
    if policy == PUBLIC:
        return await handler(request)

    token = bearer_token(request)
    if token is not None and users.is_user_token(token):
        principal = await _user_principal(request, token, policy)
    else:
        principal = authenticate(request, policy)
        if principal.kind == "container" and policy == USER:
            raise ApiError(403, "FORBIDDEN", "a user token is required")
    for name in match_info:
        path_id(request, name)  # 400 INVALID_ID
    town_id = match_info.get("t")
    if principal.kind == "container" and principal.town_id != town_id:
        if policy == REFRESH:
            log.warning("token.refresh_refused", reason="wrong_town", path_town=town_id)
        raise ApiError(403, "FORBIDDEN", "token is not valid for this town")
    if principal.kind == "container":
        _check_scope(principal, policy, match_info.get("a"))
    if town_id is not None:
        town = await request.app[DB].run(store.get_town, town_id, write=False)
        if town is not None and principal.claims is not None and principal.claims.gen != town["token_generation"]:
            log.warning("auth.token_rejected", reason="revoked", path=request.path, town=town_id)
            raise _unauthorized("token revoked: the town's tokens were rotated")
        if principal.kind == "user" and (town or {}).get("owner_user_id") != principal.user_id:
            # another user's town, or one that does not exist: the same answer
            raise ApiError(403, "FORBIDDEN", "this town belongs to another user")
        if town is None:
            raise ApiError(404, "TOWN_NOT_FOUND", f"town {town_id} not found")
        request[TOWN] = town
    request[PRINCIPAL] = principal
    return await handler(request)


def _check_scope(principal: Principal, policy: str, path_agent: str | None) -> None:
    """An agent token acts only as its agent; the runtime's token does what the runtime does."""
    claims = principal.claims
    if claims is None or not claims.is_agent:
        return
    if policy == RUNTIME:
        raise ApiError(403, "FORBIDDEN", "this route is for the town's runtime, not an agent")
    if policy == SELF and path_agent != claims.agent_id:
        raise ApiError(403, "FORBIDDEN", "an agent token acts only for its own agent")
    if policy == MAYOR and claims.role != "mayor":
        raise ApiError(403, "ROLE_FORBIDDEN", "only the mayor may do this")


def acting_agent(request: web.Request) -> str | None:
    """The agent an agent-scoped caller is (bodies naming a sender must name this one)."""
    return request[PRINCIPAL].agent_id


def require_sender(request: web.Request, claimed: str | None) -> None:
    """403 when an agent token names another agent as the sender of mail, a nudge or an escalation."""
    me = acting_agent(request)
    if me is not None and claimed is not None and claimed != me:
        raise ApiError(403, "FORBIDDEN", f"an agent may send only as itself ({me})")


async def _user_principal(request: web.Request, token: str, policy: str) -> Principal:
    user_id = await request.app[DB].run(users.user_of_token, token, write=False)
    if user_id is None:
        log.warning("auth.token_rejected", reason="unknown_user_token", path=request.path)
        raise _unauthorized("user token rejected")
    if policy not in _USER_POLICIES:
        raise ApiError(403, "FORBIDDEN", "not a route for user tokens")
    return Principal("user", user_id=user_id)


def require_town(request: web.Request) -> dict[str, Any]:
    """The path town loaded by the middleware (only on routes with ``{t}``)."""
    return request[TOWN]
