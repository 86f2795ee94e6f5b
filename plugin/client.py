"""HTTP client for the worker routes behind the tools.

The agent's own token (``supervisor.agent_tokens``: it acts only as this agent), read from the file
the runtime renews, with an 8 h expiry: a long agent turn can outlive it. On a 401 the shared
:class:`gastown.core.bearer.BearerAuth` middleware takes the renewed file, else refreshes it once
(the refresh route accepts an expired token) and retries once; a second 401 is an error, never a loop. Every failure becomes a :class:`WorkerError` with a short code and message the
model can read; the token never appears in errors or logs.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Mapping
from urllib.parse import quote

import aiohttp

from gastown.core.bearer import BearerAuth
from gastown.core.jsonlog import get_logger
from plugin.identity import Identity, read_token_file

log = get_logger("plugin.client")

DEFAULT_TIMEOUT_S = 10.0
_MAX_ERROR_TEXT = 300


class WorkerError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def seg(value: str) -> str:
    """One path segment: ids come from the model, so ``../`` or ``?`` must not reshape the route."""
    return quote(str(value), safe="")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "…"


def _error_from_body(status: int, raw: bytes) -> WorkerError:
    text = raw.decode("utf-8", "replace")
    try:
        err = json.loads(text).get("error")
        if isinstance(err, dict) and err.get("code"):
            return WorkerError(str(err["code"]), _short(str(err.get("message") or "")), status)
    except (ValueError, AttributeError):
        pass
    return WorkerError(f"HTTP_{status}", _short(text) or "no body", status)


class WorkerClient:
    """Calls ``{api_url}/api/towns/{town}/...`` with the container token; holds the refreshed token."""

    def __init__(self, ident: Identity, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._ident = ident
        self._auth = BearerAuth(ident.current_token() or None, self._refresh)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def town_path(self) -> str:
        return f"/api/towns/{seg(self._ident.town_id)}"

    def _headers(self) -> dict[str, str]:
        headers = {"X-Gastown-Agent-Id": self._ident.agent_id}
        if self._ident.rig_id:
            headers["X-Gastown-Rig-Id"] = self._ident.rig_id
        return headers

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, middlewares=(self._auth,))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def _send(self, method: str, path: str, body: Any, params: Mapping[str, str] | None) -> tuple[int, bytes]:
        url = self._ident.api_url + path
        if not self._auth.token:  # the runtime had not written the token file yet when we started
            self._auth.set_token(self._ident.current_token() or None)
        try:
            async with self._http().request(method, url, json=body, params=params, headers=self._headers()) as resp:
                return resp.status, await resp.read()
        except asyncio.TimeoutError:
            raise WorkerError("TIMEOUT", f"the worker did not answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as e:
            raise WorkerError("NETWORK", f"cannot reach the worker: {type(e).__name__}") from None

    async def _refresh(self, session: aiohttp.ClientSession, used_token: str) -> str:
        """A fresh token for the one the worker refused (a 401 on it is one refresh, then an error):
        the token file when the runtime has renewed it since, else the worker's refresh route."""
        renewed = read_token_file(self._ident.token_file)
        if renewed and renewed != used_token:
            return renewed
        url = f"{self._ident.api_url}{self.town_path}/refresh-container-token"
        headers = {**self._headers(), "Authorization": f"Bearer {used_token}"}
        try:
            async with session.post(url, json={}, headers=headers, middlewares=()) as resp:
                status, raw = resp.status, await resp.read()
        except asyncio.TimeoutError:
            raise WorkerError("TIMEOUT", f"the worker did not answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as e:
            raise WorkerError("NETWORK", f"cannot reach the worker: {type(e).__name__}") from None
        if not 200 <= status < 300:
            err = _error_from_body(status, raw)
            log.warning("token.refresh_failed", status=status, code=err.code)
            raise WorkerError("UNAUTHORIZED", f"container token rejected and refresh failed ({err.code})", status)
        try:
            token = json.loads(raw).get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise WorkerError("UNAUTHORIZED", "token refresh returned no token", status)
        return token

    async def call(
        self, method: str, path: str, body: Any = None, *, params: Mapping[str, str] | None = None
    ) -> Any:
        """Send one request (``path`` starts with ``/api/``); return the decoded JSON (``None`` for
        an empty body); raise :class:`WorkerError` on anything else."""
        started = time.monotonic()
        status, raw = await self._send(method, path, body, params)
        log.debug("worker.call", method=method, path=path, status=status,
                 ms=int((time.monotonic() - started) * 1000))
        if status >= 400:
            raise _error_from_body(status, raw)
        if status == 204 or not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise WorkerError("INVALID_RESPONSE", f"the worker answered HTTP {status} with invalid JSON") from None
