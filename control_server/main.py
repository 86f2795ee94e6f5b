"""``gastown container``: serve the control API and supervise agents until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import signal
import sys
import threading

from aiohttp import web

from control_server.app import create_app
from gastown.core import jsonlog
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
    app = create_app(runtime)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()  # starts the runtime (the app's cleanup context)
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    drain_task: asyncio.Task | None = None

    def on_sigterm() -> None:
        nonlocal drain_task
        log.info("container.signal_received", signal="SIGTERM")
        if drain_task is None:
            drain_task = loop.create_task(runtime.drain())
            drain_task.add_done_callback(lambda _: stop.set())
        else:
            runtime.tasks.spawn(runtime.drain(), "drain:cut-short")  # second SIGTERM: cut the drain short

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("container.listening", host=host, port=port)
    await stop.wait()
    await runner.cleanup()  # stops listening, then shuts the runtime down (eviction if it drained)
    return 0


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
    return asyncio.run(serve(cfg, host, port))
