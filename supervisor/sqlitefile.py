"""SQLite files as the snapshot code needs them: consistent copies, integrity checks, digests.

A live kilo.db is in WAL mode, so a raw file copy can be behind its WAL or torn; every copy goes
through SQLite's backup API instead (docs/kilo-serve.md §4).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import urllib.parse


def sqlite_uri(path: str, query: str) -> str:
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?" + query


def quick_check(path: str) -> str:
    """``PRAGMA quick_check`` on a private file, opened immutable so it never grows a -wal/-shm."""
    try:
        conn = sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True, timeout=5)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return f"sqlite error: {e}"
    return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])


def digest(path: str) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()




def consistent_copy(db_path: str, dest: str, *, busy_s: float) -> None:
    """Consistent copy via the backup API: one step under a read transaction, so a concurrent
    writer in WAL mode is neither blocked nor able to tear the copy."""
    src = sqlite3.connect(sqlite_uri(db_path, "mode=ro"), uri=True, timeout=busy_s)
    try:
        src.execute(f"PRAGMA busy_timeout = {int(busy_s * 1000)}")
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    finally:
        src.close()
