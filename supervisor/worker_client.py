"""Calls from the container to the worker API (docs/contract.md §6).

Holds the town's credentials (api url, container token), which may arrive late: in the boot env, in
a start request or via ``/refresh-token``. Every call has a timeout; a 401 triggers one token refresh
and one retry. With no credentials yet, calls are skipped (logged once per kind), never raised.
"""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gastown.contract.reports import Completed, Waiting
from gastown.core.bearer import BearerAuth
from gastown.core.jsonlog import get_logger

log = get_logger("supervisor.worker_client")

DEFAULT_TIMEOUT_S = 10.0


class WorkerError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WorkerClient:
    def __init__(self, api_url: str | None, token: str | None, town_id: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.api_url = api_url.rstrip("/") if api_url else None
        self.auth = BearerAuth(token, self._refresh)
        self.town_id = town_id
        self.token_issued_at: float | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(5.0, timeout_s))
        self._session: aiohttp.ClientSession | None = None
        self._skipped: set[str] = set()

    @property
    def token(self) -> str | None:
        return self.auth.token

    @property
    def configured(self) -> bool:
        return bool(self.api_url and self.token and self.town_id)

    def update(self, *, api_url: str | None = None, token: str | None = None, town_id: str | None = None,
               issued_at: float | None = None) -> None:
        if api_url:
            self.api_url = api_url.rstrip("/")
        if town_id:
            self.town_id = town_id
        if token:
            self.auth.set_token(token)
            if issued_at is not None:
                self.token_issued_at = issued_at

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, middlewares=(self.auth,))
        return self._session

    async def _send(self, method: str, path: str, body: Any, timeout: float | None) -> tuple[int, Any]:
        url = f"{self.api_url}/api/towns/{self.town_id}{path}"
        to = aiohttp.ClientTimeout(total=timeout) if timeout else None
        async with self._http().request(method, url, json=body, timeout=to) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            return resp.status, data

    async def call(self, method: str, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        if not self.configured:
            if path not in self._skipped:
                self._skipped.add(path)
                log.info("worker.call_skipped_unconfigured", path=path)
            return None
        try:
            status, data = await self._send(method, path, body, timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise WorkerError(f"{method} {path}: {e!r}") from e
        if status >= 400:
            err = (data or {}).get("error") if isinstance(data, dict) else None
            raise WorkerError(f"{method} {path} -> {status}: {err}", status=status)
        return data

    async def try_call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """Best effort: log and swallow failures (telemetry, reports that the heartbeat repeats)."""
        try:
            return await self.call(method, path, body, **kw)
        except WorkerError as e:
            log.warning("worker.call_failed", method=method, path=path, status=e.status, error=str(e))
            return None

    async def refresh_token(self) -> bool:
        """Exchange the current (possibly expired) token for a fresh one; one refresh at a time."""
        if not self.configured:
            return False
        return await self.auth.refresh(self._http()) is not None

    async def _refresh(self, session: aiohttp.ClientSession, used: str) -> str | None:
        url = f"{self.api_url}/api/towns/{self.town_id}/refresh-container-token"
        try:
            async with session.post(url, json={}, headers={"Authorization": f"Bearer {used}"},
                                    middlewares=()) as resp:
                status = resp.status
                data = await resp.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            log.warning("token_refresh.network_error", error=repr(e))
            return None
        token = data.get("token") if isinstance(data, dict) else None
        if status != 200 or not isinstance(token, str) or not token:
            log.warning("token_refresh.failed", status=status)
            return None
        log.info("token_refresh.succeeded")
        return token

    # Typed helpers for the routes the container uses.
    async def heartbeat(self, agent_id: str, body: dict[str, Any]) -> Any:
        return await self.call("POST", f"/agents/{agent_id}/heartbeat", body)

    async def completed(self, agent_id: str, status: str, reason: str | None) -> Any:
        body = Completed.model_construct(status=status, reason=reason).model_dump(mode="json")
        return await self.try_call("POST", f"/agents/{agent_id}/completed", body)

    async def waiting(self, agent_id: str, fired_at_ms: int) -> Any:
        return await self.try_call("POST", f"/agents/{agent_id}/waiting",
                                   Waiting.model_construct(fired_at=fired_at_ms).model_dump(mode="json"))

    async def container_event(self, event: str, **fields: Any) -> Any:
        return await self.try_call("POST", "/container-events", {"event": event, **fields})
