"""``gastown container``: serve the control API and supervise agents until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

from aiohttp import web

from control_server.app import create_app
from gastown.core import jsonlog
from gastown.core.procs import make_undumpable
from gastown.core.serving import Runner
from supervisor.config import ConfigError, RuntimeConfig
from supervisor.runtime import ContainerRuntime

log = jsonlog.get_logger("container")


def _install_crash_logging(loop: asyncio.AbstractEventLoop) -> None:
    """Unhandled errors are logged with their stack; the process keeps serving."""

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        log.error("container.unhandled_rejection", exc_info=exc, message=context.get("message"))

    loop.set_exception_handler(on_loop_error)

    def excepthook(exc_type, exc, tb) -> None:
        log.error("container.uncaught_exception", exc_info=(exc_type, exc, tb))

    sys.excepthook = excepthook
    threading.excepthook = lambda args: log.error(
        "container.thread_exception", exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )


async def serve(cfg: RuntimeConfig, host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    _install_crash_logging(loop)
    runtime = ContainerRuntime(cfg)
    stop = asyncio.Event()
    drain: list[asyncio.Task] = []

    def on_sigterm() -> None:
        log.info("container.signal_received", signal="SIGTERM")
        if not drain:
            drain.append(runtime.tasks.spawn(runtime.drain(), "drain"))
            drain[0].add_done_callback(lambda _: stop.set())
        else:
            runtime.tasks.spawn(runtime.drain(), "drain:cut-short")  # second SIGTERM: cut the drain short

    # Handlers first: a SIGTERM while the runtime starts still drains instead of killing the process.
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    runner = Runner(create_app(runtime), access_log=None, handle_signals=False)
    await runner.setup()  # starts the runtime (the app's cleanup context)
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("container.listening", host=host, port=port)
        await stop.wait()
        if drain and not drain[0].done():  # SIGINT during a drain: cut it short, let it finish
            await runtime.drain()
            await asyncio.wait(drain, timeout=30)
    finally:
        await runner.cleanup()  # stops listening, then shuts the runtime down (eviction if it drained)
    return 0


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def run_container(host: str, port: int, insecure: bool = False) -> int:
    jsonlog.configure()
    try:
        cfg = RuntimeConfig.from_env()
    except ConfigError as e:
        print(f"gastown container: {e}", file=sys.stderr)
        return 2
    if not cfg.control_token and not insecure:
        print("gastown container: GASTOWN_CONTROL_TOKEN is required (or pass --insecure)", file=sys.stderr)
        return 2
    # Agents run hostile code: /proc/<runtime>/{environ,mem} closed to them (gastown.core.procs),
    # and the tokens no longer in os.environ, so no child we spawn can inherit them by accident.
    log.info("container.hardened", undumpable=make_undumpable())
    for key in ("GASTOWN_CONTROL_TOKEN", "GASTOWN_CONTAINER_TOKEN", "KILOCODE_TOKEN"):
        os.environ.pop(key, None)
    if not cfg.control_token and host not in LOOPBACK:
        # No token means anyone who reaches the port drives the agents: only this machine may.
        print(f"gastown container: --insecure (no control token) listens on 127.0.0.1, not {host}", file=sys.stderr)
        host = "127.0.0.1"
    return asyncio.run(serve(cfg, host, port))
