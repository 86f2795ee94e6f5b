"""The ``town_events`` queue: container routes append, the town reconciler drains.

Why a queue instead of mutating state in the route: container callbacks arrive late, twice, or out
of order (a completion racing a new dispatch, a stale idle callback). Recording the fact and letting
one reconciler apply it, oldest first, keeps every state transition in one place. Consumers call
:func:`list_events` (unprocessed, oldest first), apply each event, then :func:`mark_event_processed`.
"""
from __future__ import annotations

from typing import Any

from worker_api.db import Conn, Row, from_json, to_json

# Event types written by the container-facing routes.
AGENT_COMPLETED = "agent_completed"
AGENT_WAITING = "agent_waiting"
AGENT_DONE = "agent_done"
AGENT_EVICTION_CONTEXT = "agent_eviction_context"
CONTAINER_TELEMETRY = "container_telemetry"
CONTAINER_EVICTION = "container_eviction"


def event_row(row: Row) -> dict[str, Any]:
    d = dict(row)
    d["payload"] = from_json(d.get("payload"), {})
    return d


def insert_event(
    conn: Conn,
    town_id: str,
    event_type: str,
    *,
    now_ms: int,
    agent_id: str | None = None,
    bead_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    """Append an event; return its id (ids increase monotonically, never reused)."""
    row = conn.execute(
        "INSERT INTO town_events (town_id, event_type, agent_id, bead_id, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (town_id, event_type, agent_id, bead_id, to_json(payload or {}), now_ms),
    ).fetchone()
    return int(row[0])


def get_event(conn: Conn, town_id: str, event_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM town_events WHERE town_id = ? AND id = ?", (town_id, event_id)).fetchone()
    return event_row(row) if row else None


def list_events(
    conn: Conn,
    town_id: str,
    *,
    unprocessed_only: bool = True,
    event_type: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Events oldest first (by id)."""
    sql = "SELECT * FROM town_events WHERE town_id = ? AND id > ?"
    params: list[Any] = [town_id, after_id]
    if unprocessed_only:
        sql += " AND processed_at IS NULL"
    if event_type is not None:
        sql += " AND event_type = ?"
        params.append(event_type)
    sql += " ORDER BY id LIMIT ?"
    params.append(limit)
    return [event_row(r) for r in conn.execute(sql, params)]


def mark_event_processed(conn: Conn, town_id: str, event_id: int, now_ms: int) -> bool:
    cur = conn.execute(
        "UPDATE town_events SET processed_at = ? WHERE town_id = ? AND id = ? AND processed_at IS NULL",
        (now_ms, town_id, event_id),
    )
    return cur.rowcount > 0


def prune_processed_events(conn: Conn, town_id: str, older_than_ms: int) -> int:
    """Delete processed events created before ``older_than_ms`` (housekeeping keeps 7 days)."""
    cur = conn.execute(
        "DELETE FROM town_events WHERE town_id = ? AND processed_at IS NOT NULL AND created_at < ?",
        (town_id, older_than_ms),
    )
    return cur.rowcount
