"""What every tool shares: the identity, the worker client, and one error convention.

A failing tool raises :func:`fail`; :func:`add_tools` turns that into a result with ``isError`` set
and exactly ``error: <code>: <message>`` as text (the SDK's own ToolError path would prefix it with
"Error executing tool …"). The model gets one actionable line and the server keeps running.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Awaitable, Callable, Mapping

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent

from gastown.core.jsonlog import get_logger
from plugin.client import WorkerClient, WorkerError, seg
from plugin.identity import Identity

log = get_logger("plugin.tools")


class ToolFailure(Exception):
    """A tool's answer is an error; ``str(self)`` is the full text for the model."""


def fail(code: str, message: str) -> ToolFailure:
    return ToolFailure(f"error: {code}: {message}")


def _as_tool(ctx: "ToolContext", fn: Callable[..., Awaitable[str]]) -> Callable[..., Awaitable[Any]]:
    # functools.wraps keeps the signature and annotations the SDK builds the input schema from.
    @functools.wraps(fn)
    async def run(**kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            ctx.require_identity(fn.__name__)
            text = await fn(**kwargs)
        except ToolFailure as e:
            return CallToolResult(content=[TextContent(type="text", text=str(e))], is_error=True)
        log.info("tool.ok", tool=fn.__name__, ms=int((time.monotonic() - started) * 1000))
        return text

    return run


def add_tools(server: MCPServer, ctx: "ToolContext", *fns: Callable[..., Awaitable[str]]) -> None:
    """Register tools under their function names; the docstring is the description the model reads.
    A missing identity variable is checked first: it is the answer to every call."""
    for fn in fns:
        server.add_tool(_as_tool(ctx, fn), structured_output=False)


class ToolContext:
    def __init__(self, ident: Identity, client: WorkerClient) -> None:
        self.ident = ident
        self.client = client

    @property
    def town(self) -> str:
        return self.client.town_path

    def agent_path(self, agent_id: str | None = None) -> str:
        return f"{self.town}/agents/{seg(agent_id or self.ident.agent_id)}"

    def bead_path(self, bead_id: str) -> str:
        return f"{self.town}/beads/{seg(bead_id)}"

    def convoy_path(self, convoy_id: str) -> str:
        return f"{self.town}/convoys/{seg(convoy_id)}"

    def require_identity(self, tool: str) -> None:
        if not self.ident.ok:
            log.warning("tool.unconfigured", tool=tool, missing=list(self.ident.missing))
            raise fail("MISSING_ENV", self.ident.missing_message())

    async def call(
        self, tool: str, method: str, path: str, body: Any = None, *, params: Mapping[str, str] | None = None
    ) -> Any:
        try:
            return await self.client.call(method, path, body, params=params)
        except WorkerError as e:
            log.info("tool.failed", tool=tool, code=e.code, status=e.status)
            raise fail(e.code, e.message) from None


def drop_none(**fields: Any) -> dict[str, Any]:
    """Optional tool arguments the model left out are not sent at all."""
    return {k: v for k, v in fields.items() if v is not None}
