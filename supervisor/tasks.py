"""Background task ownership: every long-running loop belongs to a TaskGroup-like owner that cancels
and awaits it on shutdown, and a crashing loop is logged, not lost."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine

from gastown.core.jsonlog import get_logger

log = get_logger("supervisor.tasks")

Sleep = Callable[[float], Awaitable[None]]


class TaskOwner:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task.crashed", task=task.get_name(), exc_info=task.exception())

    def pending(self) -> list[asyncio.Task]:
        return [t for t in self._tasks if not t.done()]

    async def close(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def every(interval: float, fn: Callable[[], Awaitable[None]], *, sleep: Sleep = asyncio.sleep, name: str) -> None:
    """Run ``fn`` every ``interval`` seconds; one failure is logged and the loop goes on."""
    while True:
        await sleep(interval)
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.error("loop.iteration_failed", exc_info=True, loop=name)
