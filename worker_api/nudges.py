"""Per-agent nudge queue: short messages the container delivers when the agent goes idle.

Order is urgent first, then FIFO (``seq``, an autoincrement: creation times can tie within a
millisecond). Expired nudges are never offered; delivery is idempotent (the first time wins).
"""
from __future__ import annotations

import secrets
from typing import Any
from worker_api.db import Conn

MODES = ("wait-idle", "immediate", "queue")
PRIORITIES = ("normal", "urgent")


def new_nudge_id() -> str:
    return "nudge-" + secrets.token_hex(8)


def enqueue_nudge(
    conn: Conn,
    town_id: str,
    agent_id: str,
    *,
    message: str,
    now_ms: int,
    mode: str = "wait-idle",
    priority: str = "normal",
    source: str = "system",
    ttl_ms: int | None = None,
    nudge_id: str | None = None,
) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"unknown nudge mode {mode!r}")
    if priority not in PRIORITIES:
        raise ValueError(f"unknown nudge priority {priority!r}")
    nudge_id = nudge_id or new_nudge_id()
    expires_at = now_ms + ttl_ms if ttl_ms is not None else None
    conn.execute(
        "INSERT INTO nudges (nudge_id, town_id, agent_id, message, mode, priority, source, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (nudge_id, town_id, agent_id, message, mode, priority, source, now_ms, expires_at),
    )
    nudge = get_nudge(conn, town_id, nudge_id)
    assert nudge is not None
    return nudge


def get_nudge(conn: Conn, town_id: str, nudge_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT nudge_id, agent_id, message, mode, priority, source, created_at, expires_at, delivered_at"
        " FROM nudges WHERE town_id = ? AND nudge_id = ?",
        (town_id, nudge_id),
    ).fetchone()
    return dict(row) if row else None


def pending_nudges(conn: Conn, town_id: str, agent_id: str, now_ms: int) -> list[dict[str, Any]]:
    """Undelivered, unexpired nudges of one agent: urgent first, then oldest first."""
    rows = conn.execute(
        "SELECT nudge_id, message, mode, priority, source FROM nudges"
        " WHERE town_id = ? AND agent_id = ? AND delivered_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > ?)"
        " ORDER BY CASE priority WHEN 'urgent' THEN 0 ELSE 1 END, seq",
        (town_id, agent_id, now_ms),
    )
    return [dict(r) for r in rows]


def mark_nudge_delivered(
    conn: Conn, town_id: str, agent_id: str, nudge_id: str, now_ms: int
) -> bool:
    """True if the nudge exists for this agent (already delivered counts: the call is idempotent)."""
    row = conn.execute(
        "SELECT delivered_at FROM nudges WHERE town_id = ? AND agent_id = ? AND nudge_id = ?",
        (town_id, agent_id, nudge_id),
    ).fetchone()
    if row is None:
        return False
    if row[0] is None:
        conn.execute(
            "UPDATE nudges SET delivered_at = ? WHERE town_id = ? AND nudge_id = ?", (now_ms, town_id, nudge_id)
        )
    return True
