"""Per-agent bounded event buffer with ids from one runtime-wide monotonic counter, so a client can
poll ``?after=N`` across agents without gaps or duplicates."""
from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Callable

from gastown.contract.wire import epoch_ms

BUFFER_SIZE = 2000
_ids = itertools.count(1)


class EventBuffer:
    def __init__(self, size: int = BUFFER_SIZE) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=size)
        self.listener: Callable[[dict[str, Any]], None] | None = None  # e.g. the archive forwarder

    def append(self, type_: str, data: Any) -> dict[str, Any]:
        event = {"id": next(_ids), "type": type_, "data": data, "ts": epoch_ms(time.time())}
        self._events.append(event)
        if self.listener is not None:
            self.listener(event)
        return event

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
