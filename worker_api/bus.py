"""Nudges between worker replicas: "town T has new work", "T's mayor has a turn waiting", "T's
events were stored". Any replica accepts any request, but only the replica holding a town's lease
runs its reconciler loop and its mayor's desk, and a live stream may be connected to any replica:
a nudge is how the one that took the request reaches the others.

On PostgreSQL a nudge is a ``NOTIFY`` on one channel, heard by every replica's ``LISTEN``; on SQLite
there is one replica and the bus only calls back in-process. A nudge is a hint, never the record:
what it points at is in the database, and every receiver also polls (the reconciler's cadence, the
desk's sweep, the streams' timeout), so a nudge lost while a listener reconnects costs latency only.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import psycopg

from gastown.core.jsonlog import get_logger

log = get_logger("worker_api.bus")

CHANNEL = "gastown_worker"
KINDS = frozenset({"arm", "desk", "model", "events"})
RECONNECT_S = 1.0
NOTIFY_TIMEOUT_S = 5.0

Handler = Callable[[str, str, dict[str, Any]], None]  # (kind, town_id, data); ("resync", "*", {}) after a reconnect


class Bus:
    """In-process only (one replica): a nudge reaches this replica's handlers."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self._handlers: list[Handler] = []

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def _deliver(self, kind: str, town_id: str, data: dict[str, Any]) -> None:
        for handler in self._handlers:
            try:
                handler(kind, town_id, data)
            except Exception as e:  # noqa: BLE001 - one bad handler must not starve the others
                log.warning("bus.handler_failed", kind=kind, town=town_id, error=repr(e))

    def publish(self, kind: str, town_id: str, **data: Any) -> None:
        """Reach every replica's handlers, this one's at once."""
        self._deliver(kind, town_id, data)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class PgBus(Bus):
    """Every replica's handlers, through PostgreSQL's LISTEN/NOTIFY on ``CHANNEL``."""

    def __init__(self, replica_id: str, url: str) -> None:
        super().__init__(replica_id)
        self.url = url
        self._listener: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
        self.listening = asyncio.Event()

    def publish(self, kind: str, town_id: str, **data: Any) -> None:
        self._deliver(kind, town_id, data)
        payload = json.dumps({"r": self.replica_id, "k": kind, "t": town_id, "d": data}, separators=(",", ":"))
        try:
            self._outbox.put_nowait(payload)
        except asyncio.QueueFull:  # a hint: the receivers' polling covers it
            log.warning("bus.outbox_full", kind=kind, town=town_id)

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="worker-bus:listen")
        self._sender = asyncio.create_task(self._send(), name="worker-bus:send")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        # TCP keepalives: a half-open connection (a database host gone without a FIN) is noticed in
        # about a minute instead of the kernel's two hours of silence on the LISTEN.
        return await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10, keepalives=1,
                                                     keepalives_idle=30, keepalives_interval=10, keepalives_count=3)

    async def _listen(self) -> None:
        connected_before = False
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if connected_before:  # nudges sent while we were away are lost: look at everything once
                        self._deliver("resync", "*", {})
                    connected_before = True
                    async for note in conn.notifies():
                        self._received(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reconnect: the database restarted or the network blinked
                self.listening.clear()
                log.warning("bus.listen_failed", error=type(e).__name__)
                await asyncio.sleep(RECONNECT_S)

    def _received(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
            if msg["r"] == self.replica_id or msg["k"] not in KINDS:
                return  # our own (delivered when published) or not ours to read
            self._deliver(str(msg["k"]), str(msg["t"]), dict(msg.get("d") or {}))
        except (ValueError, KeyError, TypeError):
            log.warning("bus.bad_payload")

    async def _send(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        while True:
            payload = await self._outbox.get()
            try:
                if conn is None or conn.closed:
                    conn = await self._connect()
                await asyncio.wait_for(conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload)), NOTIFY_TIMEOUT_S)
            except asyncio.CancelledError:
                if conn is not None:
                    await conn.close()
                raise
            except Exception as e:  # noqa: BLE001 - dropped: a hint (module doc)
                log.warning("bus.notify_failed", error=type(e).__name__)
                if conn is not None:
                    await conn.close()
                conn = None
                await asyncio.sleep(RECONNECT_S)

    async def aclose(self) -> None:
        tasks = [t for t in (self._listener, self._sender) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
