"""Town, agent, registry and kv queries. Every function takes the connection first.

They are synchronous on purpose: they run inside ``Database.run`` (one transaction on the db
thread), so a caller can compose several into one atomic step. Every query filters on ``town_id``.
Rows come back as plain dicts with JSON columns decoded; the town's ``control_token`` never
appears in them (only :func:`get_town_control_token` reads it, for code that calls the container).
"""
from __future__ import annotations

from typing import Any

from gastown.contract.agents import ROLES
from gastown.core.http import ApiError
from worker_api.db import Conn, Row, from_json, to_json

AGENT_STATUSES = ("idle", "working", "waiting", "stalled", "dead")


class ConflictError(ApiError):
    """A uniqueness rule was violated (409); raised inside the transaction, so it rolls back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(409, code, message)


# ---------------------------------------------------------------- towns

_TOWN_PUBLIC = ("town_id, name, container_url, default_model, small_model, organization_id, created_at, owner_user_id,"
                " token_generation")


def create_town(
    conn: Conn,
    *,
    town_id: str,
    name: str,
    container_url: str,
    control_token: str,
    default_model: str | None,
    small_model: str | None,
    organization_id: str | None,
    now_ms: int,
    owner_user_id: str | None = None,
) -> dict[str, Any]:
    cur = conn.execute(
        "INSERT INTO towns (town_id, name, container_url, control_token, default_model, small_model,"
        " organization_id, created_at, owner_user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (town_id, name, container_url, control_token, default_model, small_model, organization_id, now_ms,
         owner_user_id),
    )
    if cur.rowcount == 0:  # not an IntegrityError: on PostgreSQL that would abort the transaction
        raise ConflictError("TOWN_EXISTS", f"town {town_id} already exists")
    town = get_town(conn, town_id)
    assert town is not None
    return town


def get_town(conn: Conn, town_id: str, *, with_settings: bool = False) -> dict[str, Any] | None:
    """The town without its control token; ``with_settings`` adds the raw ``settings`` JSON (what
    ``worker_api.settings`` reads to build an agent's start, never shown in a town's answer)."""
    cols = f"{_TOWN_PUBLIC}, settings" if with_settings else _TOWN_PUBLIC
    row = conn.execute(f"SELECT {cols} FROM towns WHERE town_id = ?", (town_id,)).fetchone()
    return dict(row) if row else None


def bump_token_generation(conn: Conn, town_id: str) -> int:
    """Revoke every token of the town: they carry the old generation. The new one."""
    conn.execute("UPDATE towns SET token_generation = token_generation + 1 WHERE town_id = ?", (town_id,))
    return int(conn.execute("SELECT token_generation FROM towns WHERE town_id = ?", (town_id,)).fetchone()[0])


def get_town_control_token(conn: Conn, town_id: str) -> str | None:
    """The bearer token of the town's container control server (for the dispatcher only)."""
    row = conn.execute("SELECT control_token FROM towns WHERE town_id = ?", (town_id,)).fetchone()
    return row[0] if row else None


def list_towns(conn: Conn, owner_user_id: str | None) -> list[dict[str, Any]]:
    """Every town (``owner_user_id=None``, the admin's view) or one user's towns."""
    if owner_user_id is None:
        rows = conn.execute(f"SELECT {_TOWN_PUBLIC} FROM towns ORDER BY created_at, town_id")
    else:
        rows = conn.execute(f"SELECT {_TOWN_PUBLIC} FROM towns WHERE owner_user_id = ? ORDER BY created_at, town_id",
                            (owner_user_id,))
    return [dict(r) for r in rows]


def list_town_ids(conn: Conn) -> list[str]:
    """All towns (the one unscoped query: reconcilers iterate over towns)."""
    return [r[0] for r in conn.execute("SELECT town_id FROM towns ORDER BY created_at, town_id")]


# ---------------------------------------------------------------- agents


def agent_row(row: Row) -> dict[str, Any]:
    d = dict(row)
    d["active_tools"] = from_json(d.get("active_tools"), [])
    return d


def get_agent(conn: Conn, town_id: str, agent_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM agents WHERE town_id = ? AND agent_id = ?", (town_id, agent_id)).fetchone()
    return agent_row(row) if row else None


def list_agents(
    conn: Conn, town_id: str, *, role: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    sql = "SELECT * FROM agents WHERE town_id = ?"
    params: list[Any] = [town_id]
    if role is not None:
        sql += " AND role = ?"
        params.append(role)
    if status is not None:
        sql += " AND status = ?"
        params.append(status)
    sql += " ORDER BY created_at, agent_id"
    return [agent_row(r) for r in conn.execute(sql, params)]


def get_mayor(conn: Conn, town_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM agents WHERE town_id = ? AND role = 'mayor'", (town_id,)).fetchone()
    return agent_row(row) if row else None


def create_agent(
    conn: Conn,
    town_id: str,
    *,
    agent_id: str,
    role: str,
    name: str,
    rig_id: str | None,
    now_ms: int,
) -> dict[str, Any]:
    """Insert an idle agent. 409 ``AGENT_EXISTS`` / ``MAYOR_EXISTS`` (one mayor per town)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if get_agent(conn, town_id, agent_id) is not None:
        raise ConflictError("AGENT_EXISTS", f"agent {agent_id} already exists")
    if role == "mayor" and get_mayor(conn, town_id) is not None:
        raise ConflictError("MAYOR_EXISTS", "this town already has a mayor")
    conn.execute(
        "INSERT INTO agents (town_id, agent_id, role, name, rig_id, status, created_at)"
        " VALUES (?, ?, ?, ?, ?, 'idle', ?)",
        (town_id, agent_id, role, name, rig_id, now_ms),
    )
    agent = get_agent(conn, town_id, agent_id)
    assert agent is not None
    return agent


def set_agent_status(conn: Conn, town_id: str, agent_id: str, status: str, now_ms: int) -> bool:
    """Set the worker-side status. Marking ``working`` records ``working_since`` (see
    ``routes_container.waiting``: an idle callback fired before that instant is stale)."""
    if status not in AGENT_STATUSES:
        raise ValueError(f"unknown agent status {status!r}")
    if status == "working":
        cur = conn.execute(
            "UPDATE agents SET status = 'working', working_since = ?, last_activity_at = ?"
            " WHERE town_id = ? AND agent_id = ?",
            (now_ms, now_ms, town_id, agent_id),
        )
    else:
        cur = conn.execute(
            "UPDATE agents SET status = ? WHERE town_id = ? AND agent_id = ?", (status, town_id, agent_id)
        )
    return cur.rowcount > 0


def mark_agent_working(conn: Conn, town_id: str, agent_id: str, now_ms: int) -> bool:
    return set_agent_status(conn, town_id, agent_id, "working", now_ms)


def touch_agent_heartbeat(
    conn: Conn,
    town_id: str,
    agent_id: str,
    *,
    container_status: str,
    last_event_type: str | None,
    last_event_at: int | None,
    active_tools: list[str],
    message_count: int,
    container_instance_id: str | None,
    now_ms: int,
) -> bool:
    """Record the container's view of the agent: the activity watermark the reconciler reads."""
    cur = conn.execute(
        "UPDATE agents SET last_heartbeat_at = ?, last_activity_at = ?, container_status = ?,"
        " last_event_type = COALESCE(?, last_event_type), last_event_at = COALESCE(?, last_event_at),"
        " active_tools = ?, message_count = ?, container_instance_id = COALESCE(?, container_instance_id)"
        " WHERE town_id = ? AND agent_id = ?",
        (
            now_ms,
            now_ms,
            container_status,
            last_event_type,
            last_event_at,
            to_json(active_tools),
            message_count,
            container_instance_id,
            town_id,
            agent_id,
        ),
    )
    return cur.rowcount > 0


# ---------------------------------------------------------------- container registry


def get_registry(conn: Conn, town_id: str) -> list[Any]:
    row = conn.execute("SELECT entries FROM container_registry WHERE town_id = ?", (town_id,)).fetchone()
    return from_json(row[0], []) if row else []


def put_registry(conn: Conn, town_id: str, entries: list[Any], now_ms: int) -> None:
    """Replace the registry (the container always sends its whole running set)."""
    conn.execute(
        "INSERT INTO container_registry (town_id, entries, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (town_id) DO UPDATE SET entries = excluded.entries, updated_at = excluded.updated_at",
        (town_id, to_json(entries), now_ms),
    )


# ---------------------------------------------------------------- kv


def kv_get(conn: Conn, town_id: str, key: str, default: Any = None) -> Any:
    row = conn.execute("SELECT value FROM kv WHERE town_id = ? AND key = ?", (town_id, key)).fetchone()
    return from_json(row[0], default) if row else default


def kv_set(conn: Conn, town_id: str, key: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO kv (town_id, key, value) VALUES (?, ?, ?)"
        " ON CONFLICT (town_id, key) DO UPDATE SET value = excluded.value",
        (town_id, key, to_json(value)),
    )


def kv_delete(conn: Conn, town_id: str, *keys: str) -> None:
    for key in keys:
        conn.execute("DELETE FROM kv WHERE town_id = ? AND key = ?", (town_id, key))
