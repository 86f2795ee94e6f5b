"""Calls from the worker to a town's container.

``ContainerClient`` speaks the control-server API (docs/contract.md §4) with ``Authorization: Bearer <control
token>``; every call has a timeout. Results are classified, never raised, because the reconciler
must decide from them, and one rule matters above all (#1358): a *timeout* or transport error on
``/agents/start`` does not mean the agent did not start. The caller leaves the agent ``working`` and
lets heartbeats decide.

Starting and stopping the container itself is a provider's job (worker_api/containers/).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from gastown.core.jsonlog import get_logger
from worker_api.db import Conn

log = get_logger("worker_api.dispatch")

DISPATCH_TIMEOUT_S = 60.0  # POST /agents/start may wait for boot hydration
STATUS_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
MESSAGE_TIMEOUT_S = 10.0
MODEL_TIMEOUT_S = 120.0   # a hot swap spawns a new kilo server and resumes the session


@dataclass(frozen=True)
class Target:
    """Where a town's container listens. ``token`` is the control token: header use only."""

    town_id: str
    url: str
    token: str

    def __repr__(self) -> str:  # never print the token
        return f"Target(town_id={self.town_id!r}, url={self.url!r})"


def town_target(conn: Conn, town_id: str) -> Target | None:
    """Where the town's container listens and its control token (the only read of that secret)."""
    row = conn.execute("SELECT container_url, control_token FROM towns WHERE town_id = ?", (town_id,)).fetchone()
    return Target(town_id, row[0], row[1]) if row else None


@dataclass(frozen=True)
class StartResult:
    outcome: str          # started | rejected | timeout | error
    status: int | None = None
    detail: str = ""

    @property
    def started(self) -> bool:
        return self.outcome == "started"


class ContainerClient(Protocol):
    async def start_agent(self, target: Target, request: dict[str, Any]) -> StartResult: ...
    async def agent_statuses(self, target: Target, agent_ids: list[str]) -> dict[str, str]: ...
    async def stop_agent(self, target: Target, agent_id: str) -> bool: ...
    async def send_message(self, target: Target, agent_id: str, prompt: str) -> bool: ...


class HttpContainerClient:
    """The real client over one shared ``aiohttp.ClientSession`` (created lazily, closed by ``aclose``)."""

    def __init__(self, *, start_timeout_s: float = DISPATCH_TIMEOUT_S, status_timeout_s: float = STATUS_TIMEOUT_S) -> None:
        self.start_timeout_s = start_timeout_s
        self.status_timeout_s = status_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, target: Target, method: str, path: str, timeout_s: float,
                    json: Any = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {target.token}"}
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._http().request(method, target.url.rstrip("/") + path, json=json, headers=headers,
                                        timeout=timeout) as resp:
            return resp.status, await resp.text()  # whole: GET /agents can be long (stderr tails)

    async def start_agent(self, target: Target, request: dict[str, Any]) -> StartResult:
        try:
            status, text = await self._call(target, "POST", "/agents/start", self.start_timeout_s, request)
        except asyncio.TimeoutError:
            return StartResult("timeout", detail=f"no answer in {self.start_timeout_s:.0f}s")
        except aiohttp.ClientError as e:
            return StartResult("error", detail=type(e).__name__)
        if status in (200, 201) or (status == 500 and "already running" in text):
            return StartResult("started", status)
        return StartResult("rejected", status, text[:300])

    async def agent_statuses(self, target: Target, agent_ids: list[str]) -> dict[str, str]:
        """The container's status of each agent in one ``GET /agents`` (a tick asks for every working
        agent: one request, not one per agent); ``not_found`` for an agent it does not list,
        ``unknown`` for all when it cannot answer (an unreachable container is not evidence that an
        agent is dead)."""
        unknown = dict.fromkeys(agent_ids, "unknown")
        try:
            status, text = await self._call(target, "GET", "/agents", self.status_timeout_s)
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return unknown
        if status != 200:
            return unknown
        try:
            listed = {str(a["agent_id"]): str(a.get("status") or "unknown") for a in json.loads(text)["agents"]}
        except (ValueError, KeyError, TypeError, AttributeError):
            return unknown
        return {a: listed.get(a, "not_found") for a in agent_ids}

    async def agent_status(self, target: Target, agent_id: str) -> dict[str, Any] | None:
        """The container's AgentStatus of one agent; None when it is unknown there or unreachable."""
        try:
            status, text = await self._call(target, "GET", f"/agents/{agent_id}/status", self.status_timeout_s)
            body = json.loads(text) if status == 200 else None
        except (asyncio.TimeoutError, aiohttp.ClientError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def stop_agent(self, target: Target, agent_id: str) -> bool:
        try:
            status, _ = await self._call(target, "POST", f"/agents/{agent_id}/stop", STOP_TIMEOUT_S, {})
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return False
        return status == 200

    async def patch_model(self, target: Target, agent_id: str, model: str, small_model: str | None) -> int | None:
        """``PATCH /agents/{id}/model``: the container restarts the agent's server on the same
        session with the new model (seconds). The status, or None when it did not answer."""
        body = {"model": model, **({"small_model": small_model} if small_model else {})}
        try:
            status, _ = await self._call(target, "PATCH", f"/agents/{agent_id}/model", MODEL_TIMEOUT_S, body)
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return None
        return status

    async def push_token(self, target: Target, token: str, issued_at: float) -> bool:
        """Hand the container a new runtime token (after a rotation revoked its old one)."""
        try:
            status, _ = await self._call(target, "POST", "/refresh-token", MESSAGE_TIMEOUT_S,
                                         {"token": token, "issued_at": issued_at})
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return False
        return status == 200

    async def send_message(self, target: Target, agent_id: str, prompt: str) -> bool:
        try:
            status, _ = await self._call(target, "POST", f"/agents/{agent_id}/message", MESSAGE_TIMEOUT_S,
                                         {"prompt": prompt})
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return False
        return status == 202
