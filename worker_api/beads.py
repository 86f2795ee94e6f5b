"""Bead, rig, dependency, review/convoy metadata and mail queries (synchronous, one connection).

Like ``worker_api.store`` these run inside ``Database.run`` so callers compose them into one
transaction, and every query filters on ``town_id``. They do plain bookkeeping only (rows, audit,
cycle checks); *decisions* (what a status change implies for agents, MRs, convoys) live in
``worker_api.lifecycle`` so routes and the reconciler share one implementation.
"""
from __future__ import annotations

import secrets
from collections import defaultdict, deque
from typing import Any, Callable, Iterable

from gastown.core.http import ApiError
from worker_api.db import Conn, Row, from_json, to_json

BEAD_TYPES = ("issue", "message", "escalation", "merge_request", "convoy", "agent")
BEAD_STATUSES = ("open", "in_progress", "in_review", "closed", "failed")
TERMINAL = frozenset({"closed", "failed"})
LIVE = ("open", "in_progress", "in_review")
PRIORITIES = ("low", "medium", "high", "critical")
DEP_TYPES = ("blocks", "tracks")

IdFactory = Callable[[str], str]


def new_id(prefix: str) -> str:
    """``<prefix>-<12 hex>``: valid path ids; the hex part gives the 8-char branch suffix."""
    return f"{prefix}-{secrets.token_hex(6)}"


def short_id(bead_id: str) -> str:
    """The 8 characters used in branch names (the random part, not the type prefix)."""
    return bead_id.rsplit("-", 1)[-1][:8]


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, f"{kind.upper()}_NOT_FOUND", f"{kind} {ident} not found")


# ---------------------------------------------------------------- rigs


def _rig_row(row: Row) -> dict[str, Any]:
    d = dict(row)
    d["config"] = from_json(d.get("config"), {})
    d.pop("town_id", None)
    return d


def create_rig(conn: Conn, town_id: str, *, rig_id: str, name: str, git_url: str,
               default_branch: str, now_ms: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    cur = conn.execute(
        "INSERT INTO rigs (town_id, rig_id, name, git_url, default_branch, config, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (town_id, rig_id, name, git_url, default_branch, to_json(config or {}), now_ms),
    )
    if cur.rowcount == 0:  # not an IntegrityError: on PostgreSQL that would abort the transaction
        raise ApiError(409, "RIG_EXISTS", f"rig {rig_id} already exists")
    rig = get_rig(conn, town_id, rig_id)
    assert rig is not None
    return rig


def get_rig(conn: Conn, town_id: str, rig_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM rigs WHERE town_id = ? AND rig_id = ?", (town_id, rig_id)).fetchone()
    return _rig_row(row) if row else None


def list_rigs(conn: Conn, town_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM rigs WHERE town_id = ? ORDER BY created_at, rig_id", (town_id,))
    return [_rig_row(r) for r in rows]


# ---------------------------------------------------------------- beads


def bead_row(row: Row) -> dict[str, Any]:
    d = dict(row)
    d["labels"] = from_json(d.get("labels"), [])
    d["metadata"] = from_json(d.get("metadata"), {})
    d.pop("town_id", None)
    return d


def record(conn: Conn, town_id: str, bead_id: str, event_type: str, now_ms: int,
           agent_id: str | None = None, **payload: Any) -> None:
    """Append to the bead audit log (``bead_events``)."""
    conn.execute(
        "INSERT INTO bead_events (town_id, bead_id, event_type, agent_id, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (town_id, bead_id, event_type, agent_id, to_json(payload), now_ms),
    )


def create_bead(conn: Conn, town_id: str, *, type: str, title: str, now_ms: int,
                body: str = "", rig_id: str | None = None, priority: str = "medium",
                labels: Iterable[str] = (), metadata: dict[str, Any] | None = None,
                created_by: str | None = None, status: str = "open", parent_bead_id: str | None = None,
                ids: IdFactory = new_id) -> dict[str, Any]:
    if type not in BEAD_TYPES:
        raise ValueError(f"unknown bead type {type!r}")
    if status not in BEAD_STATUSES or priority not in PRIORITIES:
        raise ValueError(f"bad status/priority {status!r}/{priority!r}")
    bead_id = ids({"merge_request": "mr", "convoy": "convoy", "escalation": "esc"}.get(type, "bead"))
    conn.execute(
        "INSERT INTO town_beads (town_id, bead_id, type, status, title, body, rig_id, parent_bead_id, priority,"
        " labels, metadata, created_by, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (town_id, bead_id, type, status, title, body, rig_id, parent_bead_id, priority,
         to_json(list(labels)), to_json(metadata or {}), created_by, now_ms, now_ms),
    )
    record(conn, town_id, bead_id, "created", now_ms, created_by, type=type)
    bead = get_bead(conn, town_id, bead_id)
    assert bead is not None
    return bead


def get_bead(conn: Conn, town_id: str, bead_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM town_beads WHERE town_id = ? AND bead_id = ?", (town_id, bead_id)).fetchone()
    return bead_row(row) if row else None


def require_bead(conn: Conn, town_id: str, bead_id: str) -> dict[str, Any]:
    bead = get_bead(conn, town_id, bead_id)
    if bead is None:
        raise not_found("bead", bead_id)
    return bead


def list_beads(conn: Conn, town_id: str, *, status: str | None = None, rig_id: str | None = None,
               type: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    sql, params = "SELECT * FROM town_beads WHERE town_id = ?", [town_id]
    for col, val in (("status", status), ("rig_id", rig_id), ("type", type)):
        if val is not None:
            sql += f" AND {col} = ?"
            params.append(val)
    sql += " ORDER BY created_at, bead_id LIMIT ?"
    params.append(limit)
    return [bead_row(r) for r in conn.execute(sql, params)]


def update_fields(conn: Conn, town_id: str, bead_id: str, now_ms: int, **fields: Any) -> None:
    """Set plain columns (title, body, priority, assignee_agent_id, ...) and bump ``updated_at``."""
    if not fields:
        return
    cols = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE town_beads SET {cols}, updated_at = ? WHERE town_id = ? AND bead_id = ?",
                 (*fields.values(), now_ms, town_id, bead_id))


def merge_metadata(conn: Conn, town_id: str, bead_id: str, patch: dict[str, Any]) -> None:
    """Shallow-merge ``patch`` into the bead's metadata (``None`` values delete keys)."""
    row = conn.execute("SELECT metadata FROM town_beads WHERE town_id = ? AND bead_id = ?", (town_id, bead_id)).fetchone()
    if row is None:
        return
    meta = from_json(row[0], {})
    for k, v in patch.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    conn.execute("UPDATE town_beads SET metadata = ? WHERE town_id = ? AND bead_id = ?", (to_json(meta), town_id, bead_id))


def set_status(conn: Conn, town_id: str, bead_id: str, status: str, now_ms: int, *,
               reason: str = "", actor: str | None = None) -> str | None:
    """Change the status (audited); return the previous one, or None when the bead is missing."""
    if status not in BEAD_STATUSES:
        raise ValueError(f"unknown bead status {status!r}")
    row = conn.execute("SELECT status FROM town_beads WHERE town_id = ? AND bead_id = ?", (town_id, bead_id)).fetchone()
    if row is None:
        return None
    closed_at = now_ms if status in TERMINAL else None
    conn.execute("UPDATE town_beads SET status = ?, updated_at = ?, closed_at = ? WHERE town_id = ? AND bead_id = ?",
                 (status, now_ms, closed_at, town_id, bead_id))
    if row[0] != status:
        record(conn, town_id, bead_id, "status_changed", now_ms, actor, **{"from": row[0], "to": status,
                                                                          "reason": reason})
    return str(row[0])


def delete_bead(conn: Conn, town_id: str, bead_id: str) -> bool:
    """Delete the bead, its edges, metadata, audit and **queued events** (an event for a deleted bead
    would otherwise be retried); agents hooked to it are unhooked."""
    if get_bead(conn, town_id, bead_id) is None:
        return False
    conn.execute("UPDATE agents SET current_hook_bead_id = NULL WHERE town_id = ? AND current_hook_bead_id = ?",
                 (town_id, bead_id))
    for table, col in (("bead_dependencies", "bead_id"), ("bead_dependencies", "depends_on_bead_id"),
                       ("review_metadata", "bead_id"), ("convoy_metadata", "bead_id"), ("bead_events", "bead_id"),
                       ("town_beads", "bead_id")):
        conn.execute(f"DELETE FROM {table} WHERE town_id = ? AND {col} = ?", (town_id, bead_id))
    conn.execute("DELETE FROM town_events WHERE town_id = ? AND bead_id = ? AND processed_at IS NULL",
                 (town_id, bead_id))
    return True


def bead_history(conn: Conn, town_id: str, bead_id: str, limit: int = 200) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT event_type, agent_id, payload, created_at FROM bead_events"
                        " WHERE town_id = ? AND bead_id = ? ORDER BY id LIMIT ?", (town_id, bead_id, limit))
    return [{**dict(r), "payload": from_json(r["payload"], {})} for r in rows]


# ---------------------------------------------------------------- dependencies


def find_cycle(edges: Iterable[tuple[Any, Any]], nodes: Iterable[Any]) -> bool:
    """Kahn's algorithm: True when the directed graph ``dependent -> blocker`` has a cycle."""
    nodes = set(nodes)
    indeg: dict[Any, int] = {n: 0 for n in nodes}
    out: dict[Any, list[Any]] = defaultdict(list)
    for a, b in edges:
        indeg.setdefault(a, 0)
        indeg[b] = indeg.get(b, 0) + 1
        out[a].append(b)
    queue = deque(n for n, d in indeg.items() if d == 0)
    seen = 0
    while queue:
        n = queue.popleft()
        seen += 1
        for m in out[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                queue.append(m)
    return seen != len(indeg)


def add_dependency(conn: Conn, town_id: str, bead_id: str, depends_on: str, dep_type: str) -> None:
    """Add an edge; a ``blocks`` edge that would close a cycle is a 409 (a cycle never unblocks)."""
    if dep_type not in DEP_TYPES:
        raise ValueError(f"unknown dependency type {dep_type!r}")
    if bead_id == depends_on:
        raise ApiError(409, "DEPENDENCY_CYCLE", "a bead cannot depend on itself")
    if dep_type == "blocks" and _reaches(conn, town_id, depends_on, bead_id):
        raise ApiError(409, "DEPENDENCY_CYCLE", f"{bead_id} -> {depends_on} would create a cycle")
    conn.execute("INSERT INTO bead_dependencies (town_id, bead_id, depends_on_bead_id, dep_type)"
                 " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (town_id, bead_id, depends_on, dep_type))


def _reaches(conn: Conn, town_id: str, start: str, target: str) -> bool:
    seen, stack = {start}, [start]
    while stack:
        node = stack.pop()
        if node == target:
            return True
        for (nxt,) in conn.execute("SELECT depends_on_bead_id FROM bead_dependencies WHERE town_id = ?"
                                   " AND bead_id = ? AND dep_type = 'blocks'", (town_id, node)):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def dependents(conn: Conn, town_id: str, bead_id: str, dep_type: str) -> list[str]:
    """Beads that depend on ``bead_id`` with ``dep_type`` (e.g. the MRs tracking a source)."""
    rows = conn.execute("SELECT bead_id FROM bead_dependencies WHERE town_id = ? AND depends_on_bead_id = ?"
                        " AND dep_type = ? ORDER BY bead_id", (town_id, bead_id, dep_type))
    return [r[0] for r in rows]


def dependencies(conn: Conn, town_id: str, bead_id: str, dep_type: str) -> list[str]:
    rows = conn.execute("SELECT depends_on_bead_id FROM bead_dependencies WHERE town_id = ? AND bead_id = ?"
                        " AND dep_type = ? ORDER BY depends_on_bead_id", (town_id, bead_id, dep_type))
    return [r[0] for r in rows]


# ---------------------------------------------------------------- review / convoy metadata


def put_review(conn: Conn, town_id: str, bead_id: str, *, branch: str | None, target_branch: str,
               pr_url: str | None = None) -> None:
    """A fresh review of the bead: what an earlier one recorded (merge commit, retries, polls) is reset."""
    conn.execute("INSERT INTO review_metadata (town_id, bead_id, branch, target_branch, pr_url) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (town_id, bead_id) DO UPDATE SET branch = excluded.branch, target_branch ="
                 " excluded.target_branch, pr_url = excluded.pr_url, merge_commit = NULL, retry_count = 0,"
                 " last_poll_at = NULL", (town_id, bead_id, branch, target_branch, pr_url))


def get_review(conn: Conn, town_id: str, bead_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM review_metadata WHERE town_id = ? AND bead_id = ?",
                       (town_id, bead_id)).fetchone()
    return dict(row) if row else None


def update_review(conn: Conn, town_id: str, bead_id: str, **fields: Any) -> None:
    if fields:
        cols = ", ".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE review_metadata SET {cols} WHERE town_id = ? AND bead_id = ?",
                     (*fields.values(), town_id, bead_id))


def get_convoy_meta(conn: Conn, town_id: str, bead_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM convoy_metadata WHERE town_id = ? AND bead_id = ?",
                       (town_id, bead_id)).fetchone()
    return dict(row) if row else None


def update_convoy_meta(conn: Conn, town_id: str, bead_id: str, **fields: Any) -> None:
    if fields:
        cols = ", ".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE convoy_metadata SET {cols} WHERE town_id = ? AND bead_id = ?",
                     (*fields.values(), town_id, bead_id))


# ---------------------------------------------------------------- agent hooks (bookkeeping only)


def hooked_agents(conn: Conn, town_id: str, bead_id: str) -> list[str]:
    rows = conn.execute("SELECT agent_id FROM agents WHERE town_id = ? AND current_hook_bead_id = ?"
                        " ORDER BY agent_id", (town_id, bead_id))
    return [r[0] for r in rows]


def set_hook(conn: Conn, town_id: str, agent_id: str, bead_id: str | None, now_ms: int,
             *, clear_checkpoint: bool = False) -> str | None:
    """Hook (or with ``None`` unhook) an agent; return the previous hook. Audited on the bead."""
    row = conn.execute("SELECT current_hook_bead_id FROM agents WHERE town_id = ? AND agent_id = ?",
                       (town_id, agent_id)).fetchone()
    if row is None:
        return None
    prev = row[0]
    sql = "UPDATE agents SET current_hook_bead_id = ?"
    if clear_checkpoint:
        sql += ", checkpoint = NULL"
    conn.execute(sql + " WHERE town_id = ? AND agent_id = ?", (bead_id, town_id, agent_id))
    if prev and prev != bead_id:
        record(conn, town_id, prev, "unhooked", now_ms, agent_id)
    if bead_id and prev != bead_id:
        record(conn, town_id, bead_id, "hooked", now_ms, agent_id)
    return prev


# ---------------------------------------------------------------- mail


def send_mail(conn: Conn, town_id: str, *, from_agent_id: str, to_agent_id: str, subject: str,
              body: str, now_ms: int, ids: IdFactory = new_id) -> dict[str, Any]:
    mail_id = ids("mail")
    conn.execute("INSERT INTO mail (mail_id, town_id, from_agent_id, to_agent_id, subject, body, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)", (mail_id, town_id, from_agent_id, to_agent_id, subject, body, now_ms))
    return {"mail_id": mail_id, "from_agent_id": from_agent_id, "to_agent_id": to_agent_id, "subject": subject,
            "body": body, "created_at": now_ms}


def take_mail(conn: Conn, town_id: str, agent_id: str, now_ms: int, limit: int = 100) -> list[dict]:
    """Undelivered mail of ``agent_id``, oldest first, marked delivered (delivery is at most once)."""
    rows = [dict(r) for r in conn.execute(
        "SELECT id, mail_id, from_agent_id, to_agent_id, subject, body, created_at FROM mail"
        " WHERE town_id = ? AND to_agent_id = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
        (town_id, agent_id, limit))]
    for r in rows:
        conn.execute("UPDATE mail SET delivered_at = ? WHERE id = ?", (now_ms, r.pop("id")))
    return rows


def peek_mail(conn: Conn, town_id: str, agent_id: str, limit: int = 100) -> list[dict]:
    rows = conn.execute("SELECT mail_id, from_agent_id, to_agent_id, subject, body, created_at FROM mail"
                        " WHERE town_id = ? AND to_agent_id = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
                        (town_id, agent_id, limit))
    return [dict(r) for r in rows]
