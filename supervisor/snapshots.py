"""Per-agent kilo.db snapshots in the object store (docs/contract.md §7).

The rules come from the data-loss bugs of the system we re-imagine and from Litestream's issues:
copy only *through SQLite* (a raw copy of a live WAL database is behind its WAL), integrity-check
the copy, upload under an immutable generation key and write the manifest LAST (manifest-last commit),
verify size + sha256 + quick_check before a restore touches anything local, remove stale -wal/-shm,
and fence writers so an older container can never replace a newer generation.

Layout under the store prefix::

    towns/<town_id>/agents/<agent_id>/manifest.json
    towns/<town_id>/agents/<agent_id>/generations/<generation:010d>-<instance>-<nonce>.db

Data keys are unique per attempt, so a stale writer can never overwrite an object a manifest points to.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from gastown.core.ids import is_valid_id
from gastown.core.jsonlog import get_logger
from supervisor.objstore import (
    NotFound,
    ObjectStore,
    ObjectStoreError,
    PreconditionFailed,
    StoreUnavailable,
    TooLarge,
    fsync_dir,
    same_etag,
)
from supervisor.sealing import Sealer, SealUnavailable
from supervisor.snapshot_types import (  # noqa: F401 - SnapshotError is part of this module's API
    LocalCopy,
    RestoreResult,
    SnapshotError,
    SnapshotFailed,
    SnapshotInfo,
    StaleWriter,
)
from supervisor.sqlitefile import consistent_copy, digest, quick_check

log = get_logger("supervisor.snapshots")

FORMAT = 1
MANIFEST = "manifest.json"
_GEN_KEY = re.compile(r"^generations/(\d{10})-[A-Za-z0-9_-]{1,80}\.db$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_GENERATION = 10**10 - 1        # keys hold 10 digits: a larger number read from a store is not ours
MAX_SNAPSHOT_BYTES = 1 << 30       # a kilo.db is megabytes; a manifest claiming more is refused before download
T = TypeVar("T")


class _Definitive(Exception):
    """A restore failure that proves the remote snapshot unusable (not a transient outage)."""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AgentSnapshots:
    """Snapshot/restore of one agent's kilo.db. Thread-safe; sync methods plus ``*_async`` wrappers.

    Fencing: the instance remembers the manifest ETag it last saw (from ``restore``, ``adopt_remote``
    or its own last write) and publishes only over that ETag. Call ``restore`` (or ``adopt_remote``)
    before the first ``snapshot`` when a remote snapshot may exist, or the snapshot raises StaleWriter.
    """

    def __init__(self, store: ObjectStore, town_id: str, agent_id: str, instance_id: str, *,
                 retries: int = 5, backoff_s: float = 0.5, backoff_max_s: float = 8.0,
                 retry_budget_s: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 busy_timeout_s: float = 10.0, tmp_dir: str | None = None, sealer: Sealer | None = None) -> None:
        if not (is_valid_id(town_id) and is_valid_id(agent_id)):
            raise ValueError("town_id and agent_id must be valid ids")
        self.store, self.town_id, self.agent_id = store, town_id, agent_id
        self.instance_id = instance_id
        self.base = f"towns/{town_id}/agents/{agent_id}/"
        self._ids = {"town_id": town_id, "agent_id": agent_id}
        self._instance_tag = re.sub(r"[^A-Za-z0-9_-]", "_", instance_id)[:40] or "x"
        self._retries, self._backoff, self._backoff_max = retries, backoff_s, backoff_max_s
        self._budget, self._sleep, self._busy = retry_budget_s, sleep, busy_timeout_s
        self._tmp_dir = tmp_dir
        self._sealer = sealer  # the worker vouches for each manifest (supervisor.sealing)
        self._lock = threading.Lock()
        self._etag: str | None = None  # manifest ETag last seen; None = "no manifest expected"
        self._generation = 0
        self._warned_best_effort = False
        self._pending: str | None = None  # data key of a manifest PUT whose outcome is unknown
        self.last_snapshot: SnapshotInfo | None = None

    @property
    def manifest_key(self) -> str:
        return self.base + MANIFEST

    @property
    def generation(self) -> int:
        return self._generation

    # -- helpers ------------------------------------------------------------------------------
    def _retry(self, op: str, fn: Callable[[], T]) -> T:
        """Retry StoreUnavailable with exponential backoff, bounded by count and total time."""
        start, delay, attempt = time.monotonic(), self._backoff, 0
        while True:
            attempt += 1
            try:
                return fn()
            except StoreUnavailable as e:
                if attempt > self._retries or time.monotonic() - start + delay > self._budget:
                    raise
                log.warning("snapshot.retry", **self._ids, op=op, attempt=attempt,
                            delay_s=delay, error=str(e))
                self._sleep(delay)
                delay = min(delay * 2, self._backoff_max)

    def _copy(self, db_path: str, dest: str) -> None:
        consistent_copy(db_path, dest, busy_s=self._busy)

    def _stale(self, expected: str | None, current: str | None, orphan: str | None) -> StaleWriter:
        self._pending = None
        if orphan:
            with contextlib.suppress(ObjectStoreError):
                self.store.delete(orphan)
        log.warning("snapshot.stale_writer", **self._ids, instance_id=self.instance_id,
                    generation=self._generation, expected_etag=expected, current_etag=current)
        return StaleWriter(f"manifest of {self.agent_id} changed since generation {self._generation}")

    def _publish(self, body: bytes, expected: str | None, rel: str) -> str:
        """Write the manifest over exactly the ETag we last saw (a real conditional PUT when the
        store honours it, else read-compare-write, which leaves a small race window)."""
        store, key = self.store, self.manifest_key
        if self._retry("probe", lambda: store.supports_conditional_writes):
            try:
                return self._retry("put_manifest", lambda: store.put_bytes(
                    key, body, if_none_match=expected is None, if_match=expected))
            except PreconditionFailed:
                # A retried PUT whose first attempt did land looks like a lost race: check whose it is.
                mine = self._manifest_if_mine(rel)
                if mine is not None:
                    return mine[0]
                raise self._stale(expected, None, self.base + rel) from None
        if not self._warned_best_effort:
            self._warned_best_effort = True
            log.warning("snapshot.fencing_best_effort", **self._ids, url=store.url,
                        why="store ignores conditional writes; using read-compare-write")
        current = self._retry("head_manifest", lambda: store.head(key))
        if not same_etag(current, expected):
            raise self._stale(expected, current, self.base + rel)
        return self._retry("put_manifest", lambda: store.put_bytes(key, body))

    def _manifest_if_mine(self, rel: str | None) -> tuple[str, int] | None:
        """(etag, generation) when the remote manifest points at our data key ``rel``."""
        if rel is None:
            return None
        with contextlib.suppress(ObjectStoreError, ValueError, KeyError, TypeError):
            body, etag = self.store.get_bytes(self.manifest_key)
            m = json.loads(body)
            if m.get("key") == rel:
                return etag, int(m["generation"])
        return None

    def _gc(self, previous_generation: int) -> None:
        """Delete generations older than the one the replaced manifest pointed to (that one stays,
        so a restore that read the old manifest can still finish)."""
        try:
            for key in self.store.list_keys(self.base + "generations/"):
                m = _GEN_KEY.match(key[len(self.base):])
                if m and int(m.group(1)) < previous_generation:
                    self.store.delete(key)
        except ObjectStoreError as e:
            log.warning("snapshot.gc_failed", **self._ids, error=str(e))

    # -- snapshot -----------------------------------------------------------------------------
    def take_copy(self, db_path: str) -> LocalCopy | None:
        """The consistent local copy a snapshot uploads (milliseconds for a kilo.db), taken without
        the upload lock: from then on the DB may change, this snapshot will not. None: no db yet."""
        if not os.path.isfile(db_path):
            return None
        directory = tempfile.TemporaryDirectory(prefix="gastown-snap-", dir=self._tmp_dir)
        copy = LocalCopy(os.path.join(directory.name, "kilo.db"), directory)
        try:
            self._copy(db_path, copy.path)
        except (sqlite3.Error, OSError) as e:
            copy.discard()
            log.error("snapshot.failed", **self._ids, reason="copy_failed", error=f"{type(e).__name__}: {e}")
            raise SnapshotFailed("copy_failed", str(e)) from e
        return copy

    def snapshot(self, db_path: str, copy: LocalCopy | None = None) -> SnapshotInfo | None:
        """Upload ``copy`` (taken now from ``db_path`` when not given); None when there is no db yet.
        The copy is discarded either way.

        Raises StaleWriter (a newer generation exists; it stays) or SnapshotFailed (logged)."""
        with self._lock:
            copy = copy or self.take_copy(db_path)
            if copy is None:
                return None
            t0 = time.monotonic()
            try:
                info = self._snapshot(copy.path)
            except StaleWriter:
                raise
            except SnapshotFailed as e:
                log.error("snapshot.failed", **self._ids, reason=e.reason, error=str(e))
                raise
            except StoreUnavailable as e:
                log.error("snapshot.failed", **self._ids, reason="store_unavailable",
                          error=str(e))
                raise SnapshotFailed("store_unavailable", str(e)) from e
            except (ObjectStoreError, sqlite3.Error, OSError) as e:
                reason = "store_error" if isinstance(e, ObjectStoreError) else "copy_failed"
                log.error("snapshot.failed", **self._ids, reason=reason,
                          error=f"{type(e).__name__}: {e}")
                raise SnapshotFailed(reason, str(e)) from e
            finally:
                copy.discard()
            self.last_snapshot = info
            log.info("snapshot.saved", **self._ids, generation=info.generation,
                     bytes=info.bytes, sha256=info.sha256,
                     duration_ms=int((time.monotonic() - t0) * 1000))
            return info

    def _snapshot(self, copy: str) -> SnapshotInfo:
        check = quick_check(copy)
        if check != "ok":
            raise SnapshotFailed("integrity_check_failed", check)
        size, sha = digest(copy)
        expected, previous = self._etag, self._generation
        current = self._retry("head_manifest", lambda: self.store.head(self.manifest_key))
        if not same_etag(current, expected):
            # Our last manifest PUT may have landed although it reported an outage.
            mine = self._manifest_if_mine(self._pending)
            if mine is None:  # fail before uploading 64 MB for nothing
                raise self._stale(expected, current, None)
            (self._etag, self._generation), self._pending = mine, None
            expected, previous = self._etag, self._generation
        generation = previous + 1
        rel = f"generations/{generation:010d}-{self._instance_tag}-{secrets.token_hex(4)}.db"
        data_key = self.base + rel
        self._retry("put_data", lambda: self.store.put_file(data_key, copy))
        at = _now_iso()
        manifest: dict[str, Any] = {"format": FORMAT, "generation": generation, "sha256": sha, "bytes": size,
                                    "created_at": at, "instance_id": self.instance_id, "key": rel}
        if self._sealer is not None and self._sealer.active:
            try:
                manifest["seal"] = self._sealer.seal(self.agent_id, manifest)
            except SealUnavailable as e:
                with contextlib.suppress(ObjectStoreError):
                    self.store.delete(data_key)
                raise SnapshotFailed("seal_unavailable", str(e)) from e
        self._pending = rel
        etag = self._publish(json.dumps(manifest, sort_keys=True).encode(), expected, rel)
        self._etag, self._generation, self._pending = etag, generation, None
        if previous:
            self._gc(previous)
        return SnapshotInfo(at=at, bytes=size, sha256=sha, generation=generation)

    # -- restore ------------------------------------------------------------------------------
    def restore(self, db_path: str) -> RestoreResult:
        """Replace the local db with the latest verified snapshot. Never raises; on any failure the
        local files are untouched. Call it before kilo starts (it removes -wal/-shm)."""
        with self._lock:
            t0 = time.monotonic()
            seen: list[tuple[str, int]] = []
            try:
                generation = self._restore(db_path, seen)
            except NotFound:
                self._etag = None
                log.info("snapshot.restore_skipped", **self._ids, reason="no_snapshot")
                return RestoreResult(False, None, "no_snapshot")
            except _Definitive as e:
                if seen:  # the remote snapshot is unusable: let our next snapshot replace it
                    self._etag, self._generation = seen[0][0], max(seen[0][1], self._generation)
                reason = str(e)
            except StoreUnavailable as e:
                reason = f"store_unavailable: {e}"
            except Exception as e:  # noqa: BLE001 - restore must never take the supervisor down
                reason = f"error: {type(e).__name__}: {e}"
            else:
                log.info("snapshot.restored", **self._ids, generation=generation,
                         duration_ms=int((time.monotonic() - t0) * 1000))
                return RestoreResult(True, generation, "restored")
            log.error("snapshot.restore_failed", **self._ids, reason=reason)
            return RestoreResult(False, None, reason)

    def _read_manifest(self, seen: list[tuple[str, int]]) -> tuple[dict[str, Any], str]:
        body, etag = self._retry("get_manifest", lambda: self.store.get_bytes(self.manifest_key))
        try:
            m = json.loads(body)
            gen, size, sha, key = m["generation"], m["bytes"], m["sha256"], m["key"]
            ok = (m.get("format") == FORMAT and isinstance(gen, int) and 0 < gen <= MAX_GENERATION
                  and isinstance(size, int) and 0 <= size <= MAX_SNAPSHOT_BYTES and isinstance(sha, str)
                  and _SHA256.match(sha) and isinstance(key, str) and _GEN_KEY.match(key)
                  and int(_GEN_KEY.match(key).group(1)) == gen)
        except (ValueError, KeyError, TypeError, AttributeError):
            ok, m = False, {}
        if not ok:
            gen = m.get("generation") if isinstance(m, dict) else None
            gen = gen if isinstance(gen, int) and 0 < gen <= MAX_GENERATION else 0  # a huge one would break our keys
            seen.append((etag, max(gen, self._generation)))
            raise _Definitive("bad_manifest")
        seen.append((etag, m["generation"]))
        if self._sealer is not None and self._sealer.active:
            self._check_seal(m)
        return m, etag

    def _check_seal(self, m: dict[str, Any]) -> None:
        """The manifest must carry the worker's seal over exactly its fields: an edited one (size,
        sha256, key, generation) or one written without the worker is refused."""
        seal = m.get("seal")
        body = {k: v for k, v in m.items() if k != "seal"}
        try:
            valid = isinstance(seal, str) and self._sealer is not None and self._sealer.verify(self.agent_id, body, seal)
        except SealUnavailable as e:
            raise StoreUnavailable(f"seal check: {e}") from None
        if not valid:
            log.error("snapshot.manifest_refused", **self._ids, reason="bad_seal" if seal else "unsealed")
            raise _Definitive("bad_seal" if seal else "unsealed_manifest")

    def _restore(self, db_path: str, seen: list[tuple[str, int]]) -> int:
        m, etag = self._read_manifest(seen)
        gen = m["generation"]
        directory = os.path.dirname(os.path.abspath(db_path))
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(db_path)}.restore-{secrets.token_hex(6)}")
        try:
            try:
                self._retry("get_data", lambda: self.store.download_file(self.base + m["key"], tmp, max_bytes=m["bytes"]))
            except NotFound:
                raise _Definitive("data_object_missing") from None
            except TooLarge:
                raise _Definitive(f"size_mismatch: the object holds more than the manifest's {m['bytes']} bytes") from None
            size, sha = digest(tmp)
            if size != m["bytes"]:
                kind = "truncated" if size < m["bytes"] else "size_mismatch"
                raise _Definitive(f"{kind}: got {size} bytes, manifest says {m['bytes']}")
            if sha != m["sha256"]:
                raise _Definitive("checksum_mismatch")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            check = quick_check(tmp)
            if check != "ok":
                raise _Definitive(f"integrity_check_failed: {check}")
            for suffix in ("-wal", "-shm", "-journal"):  # stale ones would be replayed onto the new db
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(db_path + suffix)
            os.replace(tmp, db_path)
            fsync_dir(directory)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._etag, self._generation = etag, gen
        return gen

    # -- ownership and discard ----------------------------------------------------------------
    def adopt_remote(self) -> int | None:
        """Take over the current remote generation without restoring it (the caller decided the
        local db wins). Returns that generation, or None when there is no snapshot."""
        with self._lock:
            try:
                body, etag = self._retry("get_manifest", lambda: self.store.get_bytes(self.manifest_key))
            except NotFound:
                self._etag = None
                return None
            try:
                gen = int(json.loads(body)["generation"])
            except (ValueError, KeyError, TypeError):
                gen = self._generation
            if not 0 <= gen <= MAX_GENERATION:
                gen = self._generation
            self._etag, self._generation = etag, max(gen, self._generation)
            log.info("snapshot.adopted", **self._ids, generation=gen)
            return gen

    def discard_remote(self) -> None:
        """Delete manifest then generations (kilo refused the db: do not hydrate it again).
        Refuses (StaleWriter) when a newer writer owns the manifest."""
        with self._lock:
            try:
                current = self._retry("head_manifest", lambda: self.store.head(self.manifest_key))
                if current is not None and not same_etag(current, self._etag):
                    raise self._stale(self._etag, current, None)
                self._retry("delete_manifest", lambda: self.store.delete(self.manifest_key))
                keys = self._retry("list", lambda: self.store.list_keys(self.base + "generations/"))
                for key in keys:
                    self._retry("delete_data", lambda k=key: self.store.delete(k))
            except ObjectStoreError as e:
                log.error("snapshot.discard_failed", **self._ids, error=str(e))
                raise SnapshotFailed("store_unavailable" if isinstance(e, StoreUnavailable)
                                     else "store_error", str(e)) from e
            self._etag = None  # generation numbers keep counting up
            self.last_snapshot = None
            log.info("snapshot.discarded", **self._ids, objects=len(keys) + 1)

    # -- async wrappers (the event loop never blocks on SQLite or the network) ------------------
    async def snapshot_async(self, db_path: str) -> SnapshotInfo | None:
        return await asyncio.to_thread(self.snapshot, db_path)

    async def restore_async(self, db_path: str) -> RestoreResult:
        return await asyncio.to_thread(self.restore, db_path)

    async def adopt_remote_async(self) -> int | None:
        return await asyncio.to_thread(self.adopt_remote)

    async def discard_remote_async(self) -> None:
        await asyncio.to_thread(self.discard_remote)
