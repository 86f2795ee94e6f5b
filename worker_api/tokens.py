"""Container tokens: HS256 JWTs ``{town_id, scope: "container", iat, exp, jti}`` valid 8 h.

One token per town, shared by every agent of its container. Time checks use an injected clock
(``now() -> epoch seconds``) instead of PyJWT's, so expiry is testable without sleeping and the
refresh path can accept an expired token on purpose:
* :meth:`ContainerTokens.verify` — strict: signature, algorithm, scope, claims, not expired;
* :meth:`ContainerTokens.verify_allow_expired` — refresh only: a correctly signed container token
  up to ``max_age`` (7 days) after issue. The original (docs/original-system.md §5.1) accepted *any* age (no cap), so a leaked
  token could be refreshed for ever; the cap bounds that.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

import jwt

from gastown.core.ids import is_valid_id

ALGORITHM = "HS256"
SCOPE = "container"
TOKEN_TTL_S = 8 * 3600
REFRESH_MAX_AGE_S = 7 * 24 * 3600
CLOCK_SKEW_S = 60


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


class ContainerTokens:
    def __init__(self, secret: str, *, now: Callable[[], float] = time.time, ttl_s: int = TOKEN_TTL_S) -> None:
        if not secret:
            raise ValueError("jwt secret must not be empty")
        self._secret = secret
        self._now = now
        self.ttl_s = ttl_s

    def mint(self, town_id: str) -> str:
        if not is_valid_id(town_id):
            raise ValueError("invalid town_id")
        iat = int(self._now())
        claims = {"town_id": town_id, "scope": SCOPE, "iat": iat, "exp": iat + self.ttl_s, "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def _decode(self, token: str) -> TokenClaims:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={
                    "require": ["exp", "iat"],
                    # Time claims are checked below against the injected clock.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature") from None
        except jwt.MissingRequiredClaimError:
            raise TokenError("missing_claim") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError("bad_algorithm") from None
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        if payload.get("scope") != SCOPE:
            raise TokenError("wrong_scope")
        town_id, iat, exp = payload.get("town_id"), payload.get("iat"), payload.get("exp")
        if not is_valid_id(town_id):
            raise TokenError("missing_claim")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
            raise TokenError("malformed")
        jti = payload.get("jti")
        return TokenClaims(town_id=town_id, iat=iat, exp=exp, jti=jti if isinstance(jti, str) else None)

    def verify(self, token: str) -> TokenClaims:
        """Strict check; raises :class:`TokenError` (``expired``, ``bad_signature``, …)."""
        claims = self._decode(token)
        now = self._now()
        if claims.iat > now + CLOCK_SKEW_S:
            raise TokenError("issued_in_future")
        if now >= claims.exp:
            raise TokenError("expired")
        return claims

    def verify_allow_expired(self, token: str, max_age_s: int = REFRESH_MAX_AGE_S) -> TokenClaims:
        """For refresh only: signed, container scope, issued at most ``max_age_s`` ago."""
        claims = self._decode(token)
        now = self._now()
        if claims.iat > now + CLOCK_SKEW_S:
            raise TokenError("issued_in_future")
        if now - claims.iat > max_age_s:
            raise TokenError("too_old")
        return claims
