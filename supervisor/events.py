"""Per-agent bounded event buffer with ids from one runtime-wide monotonic counter, so a client can
poll ``?after=N`` across agents without gaps or duplicates."""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from typing import Any, Callable

from gastown.contract.wire import epoch_ms

BUFFER_SIZE = 2000
SUBSCRIBER_QUEUE = 1000
_ids = itertools.count(1)


class EventBuffer:
    def __init__(self, size: int = BUFFER_SIZE) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=size)
        self.listener: Callable[[dict[str, Any]], None] | None = None  # e.g. the archive forwarder
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def append(self, type_: str, data: Any) -> dict[str, Any]:
        event = {"id": next(_ids), "type": type_, "data": data, "ts": epoch_ms(time.time())}
        self._events.append(event)
        if self.listener is not None:
            self.listener(event)
        for q in list(self._subscribers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:  # a reader that cannot keep up is cut off: it resumes from its last id
                self._subscribers.discard(q)
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(None)
        return event

    def subscribe(self, size: int = SUBSCRIBER_QUEUE) -> asyncio.Queue[dict[str, Any] | None]:
        """Events appended from now on (a ``None`` means the reader fell behind and was dropped)."""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(size)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(q)

    def after(self, after: int, limit: int = 500) -> list[dict[str, Any]]:
        out = [e for e in self._events if e["id"] > after]
        return out[:limit]


def event_session_id(event: dict[str, Any]) -> str | None:
    """The session an event belongs to (kilo puts ``sessionID`` in ``properties``; older shapes
    nest it in ``info``/``part``)."""
    props = event.get("properties")
    if not isinstance(props, dict):
        return None
    sid = props.get("sessionID")
    if isinstance(sid, str):
        return sid
    for key in ("info", "part"):
        inner = props.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("sessionID"), str):
            return inner["sessionID"]
    return None


# Events that say nothing about the agent's own work.
SERVER_EVENTS = frozenset({"server.connected", "server.heartbeat", "server.instance.disposed"})
