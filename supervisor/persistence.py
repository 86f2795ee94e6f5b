"""kilo.db persistence in the agent lifecycle: restore before kilo starts, snapshot after.

Restore runs as a spawn hook, only when the agent has no live kilo (a hot swap's new server shares
the live DB and must not touch it). Which copy wins: no local DB → the remote; a local DB this
process already snapshotted → the local one (it is the source of every upload); a local DB of
unknown age (reused volume) → whichever is newer. Snapshots run in owned background tasks,
serialised per agent, off the event loop (threads), so control routes never wait on an upload.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gastown.contract.wire import epoch_ms
from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.objstore import ObjectStore, ObjectStoreError, open_store
from supervisor.objstore_broker import BrokeredStore
from supervisor.sealing import WorkerSealer
from supervisor.worker_bridge import WorkerBridge
from supervisor.snapshot_types import SnapshotError
from supervisor.snapshots import AgentSnapshots
from supervisor.states import Change
from supervisor.supervisor import Supervisor
from supervisor.tasks import TaskOwner

log = get_logger("supervisor.persistence")
BROKERED = "worker:"  # GASTOWN_SNAPSHOT_URL: the worker presigns every store request

DB_SUFFIXES = ("", "-wal", "-shm", "-journal")
MAYOR_SNAPSHOT_EVENTS = {"session.turn.open": "message_stored", "session.idle": "turn_end"}


def remove_local_db(db: Path) -> None:
    for suffix in DB_SUFFIXES:
        try:
            os.unlink(f"{db}{suffix}")
        except FileNotFoundError:
            pass


def status_snapshot(info: dict[str, Any]) -> dict[str, Any]:
    """AgentStatus.last_snapshot with ``at`` in epoch ms, like every other time on the wire."""
    at = info.get("at")
    if isinstance(at, str):
        try:
            at = epoch_ms(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())
        except ValueError:
            at = None
    elif isinstance(at, (int, float)):
        at = epoch_ms(at)
    return {"at": at, "bytes": info.get("bytes"), "sha256": info.get("sha256"), "generation": info.get("generation")}


class Persistence:
    def __init__(self, supervisor: Supervisor, store: ObjectStore, instance_id: str,
                 bridge: WorkerBridge | None = None) -> None:
        self.supervisor = supervisor
        self.store = store
        self.instance_id = instance_id
        self._snaps: dict[str, AgentSnapshots] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # per agent: uploads, in the order of their copies
        self._db_locks: dict[str, asyncio.Lock] = {}  # per agent: a restore writing the DB, a copy reading it
        self._copies: dict[str, int] = {}  # per agent: number of the newest copy taken
        self._uncopied: dict[str, asyncio.Event] = {}  # per agent: set once the snapshot asked for has its copy
        self._known_local: set[str] = set()
        self._queued: dict[str, asyncio.Task] = {}  # per agent: a scheduled snapshot not yet copying
        self.tasks = TaskOwner("persistence")
        self.saved = 0
        self.failed = 0
        self.observers: list = []  # called as (ok, bytes, seconds) after every snapshot
        self.bridge = bridge or WorkerBridge(supervisor.worker)
        self.sealer = WorkerSealer(self.bridge)
        supervisor.spawn_hooks.append(self.before_spawn)
        supervisor.change_hooks.append(self._on_change)
        supervisor.event_hooks.append(self._on_event)

    @classmethod
    def from_url(cls, supervisor: Supervisor, url: str | None, instance_id: str,
                 env: dict[str, str] | None = None) -> "Persistence | None":
        """``worker:`` brokers every store request through the worker (the container holds no store
        credential: ``supervisor/objstore_broker.py``); any other URL is a store of our own."""
        if not url:
            log.warning("persistence.disabled", reason="GASTOWN_SNAPSHOT_URL not set")
            return None
        bridge = WorkerBridge(supervisor.worker)
        store = BrokeredStore(bridge) if url == BROKERED else open_store(url, env=env)
        return cls(supervisor, store, instance_id, bridge=bridge)

    def snaps(self, rec: AgentRecord) -> AgentSnapshots:
        key = rec.agent_id
        if key not in self._snaps:
            self.bridge.loop = asyncio.get_running_loop()
            self._snaps[key] = AgentSnapshots(self.store, rec.request.town_id, rec.agent_id, self.instance_id,
                                              sealer=self.sealer)
        return self._snaps[key]

    def _lock(self, agent_id: str) -> asyncio.Lock:
        return self._locks.setdefault(agent_id, asyncio.Lock())

    def _db_lock(self, agent_id: str) -> asyncio.Lock:
        return self._db_locks.setdefault(agent_id, asyncio.Lock())

    # -- restore ------------------------------------------------------------------------------
    async def before_spawn(self, rec: AgentRecord) -> None:
        """Before a kilo may write the DB: the snapshot asked for already (the crashed process's)
        has taken its copy, and the DB is restored unless this container wrote it. The upload runs
        beside the new boot, so an in-place restart never waits for the store."""
        if rec.process is not None and rec.process.running:
            return
        pending = self._uncopied.get(rec.agent_id)
        if pending is not None:
            await pending.wait()
        if rec.agent_id in self._known_local and rec.paths.kilo_db.exists():
            return
        async with self._db_lock(rec.agent_id):
            await self._restore(rec)

    async def _restore(self, rec: AgentRecord) -> None:
        snaps, db = self.snaps(rec), rec.paths.kilo_db
        if db.exists() and rec.agent_id in self._known_local:
            return
        if db.exists() and not await asyncio.to_thread(self._remote_is_newer, snaps, db):
            await snaps.adopt_remote_async()
            self._known_local.add(rec.agent_id)
            log.info("snapshot.local_kept", agent_id=rec.agent_id)
            return
        result = await snaps.restore_async(str(db))
        rec.restored = result.restored
        if result.restored:
            rec.last_snapshot = {"at": None, "bytes": None, "sha256": None, "generation": result.generation}
        self._known_local.add(rec.agent_id)

    def _remote_is_newer(self, snaps: AgentSnapshots, db: Path) -> bool:
        try:
            body, _ = self.store.get_bytes(snaps.manifest_key)
            created = datetime.fromisoformat(json.loads(body)["created_at"].replace("Z", "+00:00")).timestamp()
        except (ObjectStoreError, ValueError, KeyError, TypeError):
            return False
        local = max(os.path.getmtime(p) for p in (str(db), f"{db}-wal") if os.path.exists(p))
        return created > local

    async def discard(self, rec: AgentRecord) -> None:
        """kilo refused the restored DB (older CLI schema): drop it here and in the store."""
        remove_local_db(rec.paths.kilo_db)
        try:
            await self.snaps(rec).discard_remote_async()
        except SnapshotError as e:
            log.error("snapshot.discard_failed", agent_id=rec.agent_id, error=str(e))
        log.warning("snapshot.stale_db_discarded", agent_id=rec.agent_id)

    # -- snapshot -----------------------------------------------------------------------------
    def _on_change(self, rec: AgentRecord, what: Change) -> None:
        if what in (Change.stopped, Change.crashed):
            self.schedule(rec, what)

    def _on_event(self, rec: AgentRecord, event: dict[str, Any]) -> None:
        """The mayor's conversation is persisted when kilo has stored the user's message (its turn
        opens) and when the turn ends (the reply). Not when our ``prompt_async`` returns: kilo stores
        the message after answering 204, so a snapshot taken then missed it."""
        if rec.request.role.value != "mayor":
            return
        etype = event.get("type")
        if etype in MAYOR_SNAPSHOT_EVENTS:
            self.schedule(rec, MAYOR_SNAPSHOT_EVENTS[etype])

    def schedule(self, rec: AgentRecord, reason: str) -> asyncio.Task:
        """Snapshot in the background. A snapshot still waiting for the agent's lock covers this
        request too (it copies the DB when it runs), so a chatty agent or a slow store queues at
        most one snapshot behind the running one."""
        queued = self._queued.get(rec.agent_id)
        if queued is not None and not queued.done():
            return queued
        self._uncopied.setdefault(rec.agent_id, asyncio.Event())
        task = self.tasks.spawn(self.snapshot(rec, reason), f"snapshot:{rec.agent_id}")
        self._queued[rec.agent_id] = task
        return task

    async def snapshot(self, rec: AgentRecord, reason: str) -> dict[str, Any] | None:
        """Take one snapshot now: the copy at once, the upload after the uploads of older copies
        (an older copy still waiting when a newer one exists is dropped: the newer covers it).
        Failures are logged and counted, never raised."""
        agent_id, snaps, db = rec.agent_id, self.snaps(rec), str(rec.paths.kilo_db)
        if self._queued.get(agent_id) is asyncio.current_task():
            del self._queued[agent_id]
        uncopied = self._uncopied.get(agent_id)  # a copy taken from now on is the one it waits for
        t0 = time.monotonic()
        try:
            async with self._db_lock(agent_id):
                copy = await asyncio.to_thread(snaps.take_copy, db)
            number = self._copies[agent_id] = self._copies.get(agent_id, 0) + 1
        except SnapshotError as e:
            return self._failed(rec, reason, e, t0)
        finally:
            if uncopied is not None:
                if self._uncopied.get(agent_id) is uncopied:
                    del self._uncopied[agent_id]
                uncopied.set()
        if copy is None:
            return None
        try:
            async with self._lock(agent_id):
                if self._copies[agent_id] != number:
                    return None
                upload, copy = copy, None  # snapshot() discards it, whatever happens
                info = await asyncio.to_thread(snaps.snapshot, db, upload)
        except SnapshotError as e:
            return self._failed(rec, reason, e, t0)
        finally:
            if copy is not None:
                copy.discard()
        if info is None:
            return None
        self._known_local.add(rec.agent_id)
        self.saved += 1
        for observe in self.observers:
            observe(True, info.bytes, time.monotonic() - t0)
        rec.last_snapshot = status_snapshot(info.as_dict())
        return rec.last_snapshot

    def _failed(self, rec: AgentRecord, reason: str, error: Exception, t0: float) -> None:
        self.failed += 1
        for observe in self.observers:
            observe(False, 0, time.monotonic() - t0)
        log.error("snapshot.failed_for_agent", agent_id=rec.agent_id, reason=reason, error=str(error))

    async def flush(self, timeout: float) -> None:
        """Wait (bounded) for scheduled snapshots: drain and shutdown call this before exiting."""
        pending = self.tasks.pending()
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self) -> None:
        await self.tasks.close()
