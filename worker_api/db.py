"""The worker's store: SQLite (embedded, the default) or PostgreSQL (``worker_api.db_pg``, for
several replicas), with versioned migrations and async access.

Concurrency choice: **one dedicated thread owns the only connection** and every call
(``await db.run(fn, ...)``) executes ``fn(conn, ...)`` there inside one transaction. Why:
* SQLite has a single writer anyway; funnelling every access through one thread means our own
  requests never fight for the write lock (no ``SQLITE_BUSY`` between our connections), and a
  read-modify-write such as "is the town draining? then clear it" is atomic without extra locks;
* the event loop never waits on disk I/O or fsync, only on a future;
* the queries are small indexed lookups (heartbeats every 30 s per agent, a handful of agents per
  town), so serialising reads costs nothing measurable at this scale.
``busy_timeout`` still covers *other* processes (an operator's ``sqlite3`` shell, a backup tool).

On PostgreSQL a pool of connections serves the calls instead (``GASTOWN_DB_POOL`` threads), each
call one transaction, a write one under a lock of its town (``worker_api.db_pg``): the database, not a thread, keeps them apart.

Migrations: ``PRAGMA user_version`` counts the scripts of ``worker_api.migrations.MIGRATIONS``
already applied; opening a database applies the missing ones, each in its own transaction, and
refuses a database written by newer code.
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, TypeVar

from gastown.core.jsonlog import get_logger
from worker_api import db_pg
from worker_api.migrations import MIGRATIONS, Migration

log = get_logger("worker_api.db")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
DEFAULT_PG_POOL = 4



class Conn(Protocol):
    """What a transaction function is given: a ``sqlite3.Connection`` or a ``db_pg.PgConnection``
    (the same ``execute`` with ``?`` placeholders; rows read by index and by column name)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


Row = Any  # a ``sqlite3.Row`` or a ``db_pg.Row``: ``row[0]``, ``row["name"]``, ``dict(row)``


class SchemaTooNewError(RuntimeError):
    """The file was migrated by newer code: running old code on it could corrupt it."""


class DatabaseClosedError(RuntimeError):
    pass


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def from_json(text: str | None, default: Any = None) -> Any:
    """Decode a JSON column. Empty lists and objects (most labels, checkpoints and metadata) skip the
    decoder: a reconciler tick reads thousands of them (bench/reconciler_bench.py)."""
    if text is None:
        return default
    if text == "[]":
        return []
    if text == "{}":
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return default


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the missing migrations; return the resulting version. Safe to call repeatedly.

    Each script runs as ``BEGIN IMMEDIATE; <script>; PRAGMA user_version = n; COMMIT`` so a failed
    script leaves the previous version intact. If another process migrated concurrently our script
    fails on an existing table; we then re-read the version and carry on from there.
    """
    target = len(migrations)
    current = user_version(conn)
    if current > target:
        raise SchemaTooNewError(f"database schema version {current} is newer than this code ({target})")
    while current < target:
        m = migrations[current]
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{m.sql}\n;PRAGMA user_version = {current + 1};\nCOMMIT;")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            now = user_version(conn)
            if now > current:  # someone else applied it meanwhile
                current = now
                continue
            raise
        log.info("db.migrated", version=current + 1, migration=m.name)
        current += 1
    return current


def connect(path: str | Path, *, migrations: Sequence[Migration] = MIGRATIONS) -> sqlite3.Connection:
    """Open ``path`` (created with its parent directory if needed), configured and migrated.

    The connection is in autocommit mode (``isolation_level=None``): transactions are explicit.
    """
    path = str(path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, migrations)
    except BaseException:
        conn.close()
        raise
    return conn


def transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any, write: bool = True, **kwargs: Any) -> T:
    """Run ``fn(conn, *args, **kwargs)`` in one transaction; roll back if it raises."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        result = fn(conn, *args, **kwargs)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class Database:
    """The worker's store: a SQLite file (one connection, one dedicated thread: see module doc) or a
    ``postgresql://`` URL (a pool; ``worker_api.db_pg``).

    ``await db.run(fn, *args)`` runs ``fn(conn, *args)`` in a write transaction;
    ``write=False`` takes a read transaction instead. ``fn`` may raise (for example
    ``ApiError``): the transaction is rolled back and the exception reaches the caller. On
    PostgreSQL ``fn`` may run more than once (retried after a deadlock): it must keep its side
    effects in the database.
    """

    def __init__(self, path: str | Path, *, migrations: Sequence[Migration] = MIGRATIONS,
                 pool_size: int | None = None) -> None:
        self.path = str(path)
        self.postgres = db_pg.is_url(self.path)
        size = (pool_size or int(os.environ.get("GASTOWN_DB_POOL") or DEFAULT_PG_POOL)) if self.postgres else 1
        self._executor = ThreadPoolExecutor(max_workers=max(1, size), thread_name_prefix="worker-db")
        self._conn: sqlite3.Connection | None = None
        self._pg: db_pg.PgStore | None = None
        self._closed = False
        try:
            if self.postgres:
                self._pg = db_pg.PgStore(self.path, size=max(1, size), migrations=migrations, too_new=SchemaTooNewError)
            else:
                self._executor.submit(self._open, migrations).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    @property
    def label(self) -> str:
        """Where the store is, fit for a log line (a URL's password left out)."""
        return db_pg.redact(self.path) if self.postgres else self.path

    def _open(self, migrations: Sequence[Migration]) -> None:
        self._conn = connect(self.path, migrations=migrations)

    def _call(self, fn: Callable[..., T], args: tuple, kwargs: dict, write: bool) -> T:
        if self._pg is not None:
            return self._pg.call(fn, args, kwargs, write)
        if self._conn is None:
            raise DatabaseClosedError("database is closed")
        return transaction(self._conn, fn, *args, write=write, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, write: bool = True, **kwargs: Any) -> T:
        if self._closed:
            raise DatabaseClosedError("database is closed")
        loop = asyncio.get_running_loop()
        call = functools.partial(self._call, fn, args, kwargs, write)
        return await loop.run_in_executor(self._executor, call)

    def run_sync(self, fn: Callable[..., T], *args: Any, write: bool = True, **kwargs: Any) -> T:
        """Blocking variant for code outside the event loop (scripts, tests)."""
        return self._executor.submit(self._call, fn, args, kwargs, write).result()

    def _close_conn(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    async def aclose(self) -> None:
        """Close the connection(s) and stop the thread(s) (idempotent)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_conn)
        self._executor.shutdown(wait=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._close_conn).result()
        self._executor.shutdown(wait=True)
