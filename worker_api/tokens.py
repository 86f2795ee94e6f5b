"""Town tokens: HS256 JWTs in two scopes, checked against an injected clock.

* ``container`` - the town's **runtime** (registry, telemetry, eviction, heartbeats for every agent).
* ``agent`` - one agent and its plugin: it acts only as ``agent_id`` with ``role``'s rights
  (``worker_api.auth`` enforces the scope per route). The runtime asks for these
  (``POST …/agents/{a}/token``) so an agent never holds the runtime's token.

Every token carries the town's ``gen`` (token generation): rotating a town bumps it and every
outstanding token of the town is refused (revocation). ``oiat`` is when the chain began: a refresh
keeps it, so refreshing can never keep a token alive past :data:`MAX_LIFETIME_S`; only a fresh
mint (by the admin, the owner's rotation, or the runtime for its agents) starts a new chain.

Time checks use the injected clock (``now() -> epoch seconds``) instead of PyJWT's, so expiry is
testable without sleeping and the refresh path can accept an expired token on purpose.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import jwt

from gastown.contract.agents import Role
from gastown.core.ids import is_valid_id

ALGORITHM = "HS256"
RUNTIME_SCOPE = "container"
AGENT_SCOPE = "agent"
SCOPES = (RUNTIME_SCOPE, AGENT_SCOPE)
TOKEN_TTL_S = 8 * 3600
REFRESH_MAX_AGE_S = 7 * 24 * 3600
MAX_LIFETIME_S = {RUNTIME_SCOPE: 30 * 24 * 3600, AGENT_SCOPE: 7 * 24 * 3600}
CLOCK_SKEW_S = 60
_ROLES = frozenset(r.value for r in Role)


class TokenError(Exception):
    """Why a token was refused; ``reason`` is a short machine-readable word safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenClaims:
    town_id: str
    iat: int
    exp: int
    jti: str | None = None
    scope: str = RUNTIME_SCOPE
    agent_id: str | None = None
    role: str | None = None
    gen: int = 0
    oiat: int | None = None

    @property
    def origin(self) -> int:
        return self.iat if self.oiat is None else self.oiat

    @property
    def is_agent(self) -> bool:
        return self.scope == AGENT_SCOPE


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ContainerTokens:
    def __init__(self, secret: str, *, now: Callable[[], float] = time.time, ttl_s: int = TOKEN_TTL_S) -> None:
        if not secret:
            raise ValueError("jwt secret must not be empty")
        self._secret = secret
        self._now = now
        self.ttl_s = ttl_s

    def seal(self, purpose: str, town_id: str, data: Any) -> str:
        """An HMAC over ``data`` (canonical JSON) for one purpose and town: state the worker stores
        for a container (registry entries) proves it came through the worker's own checks."""
        key = hmac.new(self._secret.encode(), f"gastown/{purpose}/v1".encode(), hashlib.sha256).digest()
        blob = json.dumps([town_id, data], sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(key, blob, hashlib.sha256).hexdigest()

    def seal_matches(self, purpose: str, town_id: str, data: Any, seal: Any) -> bool:
        """Whether ``seal`` is :meth:`seal` of ``data``, in constant time. A non-ASCII or non-str
        seal is simply wrong (``compare_digest`` raised on non-ASCII str: a 500)."""
        expected = self.seal(purpose, town_id, data)
        return isinstance(seal, str) and seal.isascii() and hmac.compare_digest(seal.encode(), expected.encode())

    def mint(self, town_id: str, *, generation: int = 0) -> str:
        """A runtime token starting a new chain."""
        return self._encode(TokenClaims(town_id, 0, 0, gen=generation))

    def mint_agent(self, town_id: str, agent_id: str, role: str, *, generation: int = 0) -> str:
        """A token that acts only as ``agent_id`` (its plugin and git credential helper hold it)."""
        if not is_valid_id(agent_id) or role not in _ROLES:
            raise ValueError("invalid agent_id or role")
        return self._encode(TokenClaims(town_id, 0, 0, scope=AGENT_SCOPE, agent_id=agent_id, role=role,
                                        gen=generation))

    def refreshed(self, claims: TokenClaims) -> str:
        """The same principal, a fresh expiry, the same chain (so the lifetime cap still counts)."""
        return self._encode(replace(claims, oiat=claims.origin))

    def _encode(self, c: TokenClaims) -> str:
        if not is_valid_id(c.town_id):
            raise ValueError("invalid town_id")
        iat = int(self._now())
        payload: dict[str, Any] = {"town_id": c.town_id, "scope": c.scope, "iat": iat, "exp": iat + self.ttl_s,
                                   "jti": secrets.token_hex(8), "gen": c.gen,
                                   "oiat": iat if c.oiat is None else c.oiat}
        if c.is_agent:
            payload |= {"agent_id": c.agent_id, "role": c.role}
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def _decode(self, token: str) -> TokenClaims:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                # Time claims are checked below against the injected clock.
                options={"require": ["exp", "iat"], "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature") from None
        except jwt.MissingRequiredClaimError:
            raise TokenError("missing_claim") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError("bad_algorithm") from None
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        scope = payload.get("scope")
        if scope not in SCOPES:
            raise TokenError("wrong_scope")
        town_id, iat, exp = payload.get("town_id"), payload.get("iat"), payload.get("exp")
        if not is_valid_id(town_id):
            raise TokenError("missing_claim")
        gen, oiat = payload.get("gen", 0), payload.get("oiat")
        if not all(_int(v) for v in (iat, exp, gen)) or (oiat is not None and not _int(oiat)):
            raise TokenError("malformed")
        agent_id, role = payload.get("agent_id"), payload.get("role")
        if scope == AGENT_SCOPE and not (is_valid_id(agent_id) and role in _ROLES):
            raise TokenError("missing_claim")
        jti = payload.get("jti")
        return TokenClaims(town_id=town_id, iat=iat, exp=exp, jti=jti if isinstance(jti, str) else None,
                           scope=scope, agent_id=agent_id if scope == AGENT_SCOPE else None,
                           role=role if scope == AGENT_SCOPE else None, gen=gen, oiat=oiat)

    def _check_times(self, claims: TokenClaims) -> None:
        now = self._now()
        if claims.iat > now + CLOCK_SKEW_S or claims.origin > claims.iat:
            raise TokenError("issued_in_future")
        if now - claims.origin > MAX_LIFETIME_S[claims.scope]:
            raise TokenError("max_lifetime")

    def verify(self, token: str) -> TokenClaims:
        """Strict check; raises :class:`TokenError` (``expired``, ``bad_signature``, …)."""
        claims = self._decode(token)
        self._check_times(claims)
        if self._now() >= claims.exp:
            raise TokenError("expired")
        return claims

    def verify_allow_expired(self, token: str, max_age_s: int = REFRESH_MAX_AGE_S) -> TokenClaims:
        """For refresh only: signed, issued at most ``max_age_s`` ago, chain within its lifetime."""
        claims = self._decode(token)
        self._check_times(claims)
        if self._now() - claims.iat > max_age_s:
            raise TokenError("too_old")
        return claims
