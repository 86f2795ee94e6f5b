"""Helpers for the plugin tests: the real ``gastown plugin`` subprocess driven by the official MCP
client, and a recording stand-in for the worker's HTTP protocol.

The plugin session lives in its own task: the MCP stdio client uses anyio cancel scopes, which must
be entered and exited in one task, while pytest runs fixture setup and teardown in different ones.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parents[1]
GASTOWN_BIN = REPO / ".venv" / "bin" / "gastown"

TOWN = "town-t1"
TOKEN = "container-token-initial-0123456789"

RIG_TOOLS = {
    "gt_prime", "gt_bead_status", "gt_bead_close", "gt_done", "gt_request_changes", "gt_mail_send",
    "gt_mail_check", "gt_escalate", "gt_checkpoint", "gt_nudge",
}
MAYOR_TOOLS = {
    "gt_sling", "gt_sling_batch", "gt_list_rigs", "gt_list_beads", "gt_list_agents", "gt_list_convoys",
    "gt_convoy_status", "gt_convoy_start", "gt_convoy_close", "gt_bead_update", "gt_bead_reassign",
    "gt_escalation_ack", "gt_agent_reset", "gt_mail_send", "gt_mail_check", "gt_nudge",
}


def identity_env(api_url: str, role: str = "polecat", agent_id: str = "polecat-1", **extra: str) -> dict[str, str]:
    env = {
        "GASTOWN_AGENT_ROLE": role,
        "GASTOWN_AGENT_ID": agent_id,
        "GASTOWN_TOWN_ID": TOWN,
        "GASTOWN_RIG_ID": "rig-1",
        "GASTOWN_API_URL": api_url,
        "GASTOWN_CONTAINER_TOKEN": TOKEN,
    }
    env.update(extra)
    return env


# ---------------------------------------------------------------- the worker stand-in


@dataclass
class Recorded:
    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    body: Any
    auth: str | None
    headers: dict[str, str]


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    raw: bytes | None = None
    delay: float = 0.0


@dataclass
class FakeWorker:
    """Records every request. Answers a scripted :class:`Reply` per (method, path) first, else a
    canned contract-shaped default. Auth: only tokens in ``valid`` pass; the refresh route accepts
    any token it ever issued (expired included) and mints a new one."""

    valid: set[str] = field(default_factory=lambda: {TOKEN})
    issued: set[str] = field(default_factory=lambda: {TOKEN})
    refresh_grants_valid: bool = True
    reject_delay: float = 0.0  # hold 401 answers, so concurrent calls all see one
    requests: list[Recorded] = field(default_factory=list)
    scripted: dict[tuple[str, str], deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    defaults: dict[tuple[str, str], Any] = field(default_factory=dict)
    _server: TestServer | None = None
    _counter: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("")).rstrip("/")

    def script(self, method: str, path: str, *replies: Reply) -> None:
        self.scripted[(method, path)].extend(replies)

    def reset(self) -> None:
        self.requests.clear()
        self.scripted.clear()
        self.valid = {TOKEN}
        self.issued = {TOKEN}
        self.refresh_grants_valid = True
        self.reject_delay = 0.0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        auth = request.headers.get("Authorization")
        self.requests.append(Recorded(request.method, request.path, request.raw_path, dict(request.query), body, auth,
                                      dict(request.headers)))
        token = auth[7:] if auth and auth.startswith("Bearer ") else None
        key = (request.method, request.path)
        if request.path.endswith("/refresh-container-token"):
            if token not in self.issued:
                return _error(401, "UNAUTHORIZED", "unknown token")
            new = f"container-token-refreshed-{next(self._counter)}-abcdef"
            self.issued.add(new)
            if self.refresh_grants_valid:
                self.valid.add(new)
            return web.json_response({"token": new})
        if token not in self.valid:
            await asyncio.sleep(self.reject_delay)
            return _error(401, "UNAUTHORIZED", "container token rejected: expired")
        if self.scripted.get(key):
            reply = self.scripted[key].popleft()
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.raw is not None:
                return web.Response(status=reply.status, body=reply.raw)
            return web.json_response(reply.body if reply.body is not None else {}, status=reply.status)
        return web.json_response(self.defaults.get(key, {}))

    async def __aenter__(self) -> "FakeWorker":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        await self._server.close()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# ---------------------------------------------------------------- the plugin under test


class Plugin:
    """``gastown plugin`` as kilo runs it (a stdio child with the identity in its env)."""

    def __init__(self, env: dict[str, str], errlog: Path) -> None:
        self.env = env
        self.errlog = errlog
        self.session: ClientSession | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        params = StdioServerParameters(command=str(GASTOWN_BIN), args=["plugin"], env=self.env, cwd=str(REPO))
        with open(self.errlog, "w") as err:
            async with stdio_client(params, errlog=err) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=30) as session:
                    await session.initialize()
                    self.session = session
                    self._ready.set()
                    await self._stop.wait()

    async def __aenter__(self) -> "Plugin":
        self._task = asyncio.create_task(self._run())
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({self._task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()
            raise RuntimeError("plugin session ended before it was ready")
        if ready not in done:
            raise TimeoutError(f"plugin did not initialize; stderr: {self.stderr()}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)

    def stderr(self) -> str:
        return self.errlog.read_text() if self.errlog.exists() else ""

    async def tools(self) -> dict[str, Any]:
        assert self.session is not None
        return {t.name: t for t in (await self.session.list_tools()).tools}

    async def call(self, name: str, args: dict[str, Any] | None = None) -> tuple[bool, str]:
        """(is_error, text) of one tool call."""
        assert self.session is not None
        result = await self.session.call_tool(name, args or {})
        text = "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")
        return bool(result.is_error), text
