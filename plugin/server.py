"""``gastown plugin``: the MCP stdio server kilo spawns for each agent (tools appear as ``gastown_gt_*``).

stdout is the MCP channel, so all logging goes to stderr as JSON lines. The server always registers
its tool set, even with a broken environment: an agent without tools cannot tell anyone what is
wrong, while a tool that answers "missing GASTOWN_X" can be escalated.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator, Mapping

import anyio
from mcp.server.mcpserver import MCPServer

from gastown.core import jsonlog
from gastown.core.procs import exit_with_parent
from plugin import tools_mayor, tools_rig
from plugin.client import DEFAULT_TIMEOUT_S, WorkerClient
from plugin.context import ToolContext
from plugin.identity import load_identity

log = jsonlog.get_logger("plugin.server")

TIMEOUT_ENV = "GASTOWN_PLUGIN_TIMEOUT_S"

INSTRUCTIONS = (
    "Gas Town tools: your link to the town (beads = tasks, mail, nudges, convoys). "
    "Rig agents: call gt_prime first to learn your hooked bead; call gt_done when your branch is pushed. "
    "The mayor: delegate with gt_sling / gt_sling_batch, never write code yourself."
)


def _timeout_s(env: Mapping[str, str]) -> float:
    """Per-request worker timeout; ``GASTOWN_PLUGIN_TIMEOUT_S`` overrides it (tests, slow links)."""
    try:
        value = float(env.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def build_server(env: Mapping[str, str] | None = None) -> MCPServer:
    """The server for the identity in ``env`` (default ``os.environ``): mayor tools for the mayor,
    rig tools for every other role (and when the role itself is missing)."""
    env = os.environ if env is None else env
    ident = load_identity(env)
    jsonlog.set_town_id(ident.town_id or None)
    client = WorkerClient(ident, timeout_s=_timeout_s(env))

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            await client.aclose()

    server = MCPServer("gastown", instructions=INSTRUCTIONS, lifespan=lifespan)
    ctx = ToolContext(ident, client)
    (tools_mayor if ident.is_mayor else tools_rig).register(server, ctx)
    tool_set = "mayor" if ident.is_mayor else "rig"
    if ident.ok:
        log.info("plugin.started", agent_id=ident.agent_id, role=ident.role, rig_id=ident.rig_id or None,
                 tool_set=tool_set)
    else:
        # Loud, but keep serving: every tool answers the same message to the model.
        log.error("plugin.missing_env", missing=list(ident.missing), agent_id=ident.agent_id or None,
                  role=ident.role or None, tool_set=tool_set)
    return server


def _on_sigterm(*_: object) -> None:
    """Leave at once. Raising instead is unreliable: asyncio swallows an exception raised inside a
    loop callback, and interpreter exit would wait for the SDK's stdin reader thread, which stays
    blocked while kilo holds the pipe open. The last line goes straight to fd 2: the handler may
    interrupt a write to the buffered ``sys.stderr``, and re-entering it raises."""
    record = logging.LogRecord("plugin.server", logging.INFO, __file__, 0, "plugin.stopped", None, None)
    record.fields = {"reason": "signal"}
    try:
        os.write(2, (jsonlog.JsonFormatter().format(record) + "\n").encode())
    finally:
        os._exit(0)


async def _serve(server: MCPServer) -> None:
    # A plain signal.signal handler only runs when the main thread wakes up, and the kernel may
    # deliver SIGTERM to the stdin reader thread while the loop sleeps in epoll: the loop's own
    # handler uses a wakeup fd, so it always fires.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _on_sigterm)
    await server.run_stdio_async()


def run_plugin() -> int:
    """Serve MCP over stdio until kilo closes stdin (normal end) or sends SIGTERM."""
    jsonlog.configure(os.environ.get("GASTOWN_LOG_LEVEL", "INFO"), stream=sys.stderr)
    logging.getLogger("mcp").setLevel(logging.WARNING)  # per-request chatter; our own lines suffice
    signal.signal(signal.SIGTERM, _on_sigterm)  # until the loop runs
    exit_with_parent(signal.SIGTERM)  # a SIGKILLed kilo must not leave its tool server behind
    try:
        anyio.run(_serve, build_server())
    except KeyboardInterrupt:
        pass
    log.info("plugin.stopped", reason="stdin closed")
    return 0
