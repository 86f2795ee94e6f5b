"""Per-rig code-host settings: the GitHub token (a secret) and the auto-merge delay.

Why the token lives in ``kv`` and not in the rig's ``config``: ``config`` is returned by the rig
routes; ``kv`` is never served by any route. Every token read or written is registered with the
log scrubber, so even an accidental log line cannot carry it.
"""
from __future__ import annotations

from typing import Any

from gastown.core.jsonlog import register_secret
from worker_api import store
from worker_api.db import Conn, from_json, to_json

AUTO_MERGE_DELAY_KEY = "auto_merge_delay_minutes"
MERGE_STRATEGY_KEY = "merge_strategy"
DEFAULT_AUTO_MERGE_DELAY_MS = 2 * 60 * 1000  # checks register a few seconds after a push: debounce "green"


def token_key(rig_id: str) -> str:
    return f"rig:{rig_id}:github_token"


def set_rig_token(conn: Conn, town_id: str, rig_id: str, token: str | None) -> None:
    if token:
        register_secret(token)
        store.kv_set(conn, town_id, token_key(rig_id), token)
    else:
        store.kv_delete(conn, town_id, token_key(rig_id))


def get_rig_token(conn: Conn, town_id: str, rig_id: str | None) -> str | None:
    if not rig_id:
        return None
    token = store.kv_get(conn, town_id, token_key(rig_id))
    if token:
        register_secret(str(token))
    return str(token) if token else None


def all_tokens(conn: Conn) -> list[str]:
    rows = conn.execute("SELECT value FROM kv WHERE key LIKE 'rig:%:github_token'")
    return [str(from_json(r[0], "")) for r in rows if r[0]]


def auto_merge_delay_ms(rig: dict[str, Any] | None) -> int:
    minutes = ((rig or {}).get("config") or {}).get(AUTO_MERGE_DELAY_KEY)
    return DEFAULT_AUTO_MERGE_DELAY_MS if minutes is None else max(0, int(float(minutes) * 60_000))


def set_rig_config(conn: Conn, town_id: str, rig_id: str, key: str, value: Any) -> None:
    """Set (or, with None, remove) one key of the rig's ``config``."""
    row = conn.execute("SELECT config FROM rigs WHERE town_id = ? AND rig_id = ?", (town_id, rig_id)).fetchone()
    if row is None:
        return
    config = from_json(row[0], {})
    if value is None:
        config.pop(key, None)
    else:
        config[key] = value
    conn.execute("UPDATE rigs SET config = ? WHERE town_id = ? AND rig_id = ?", (to_json(config), town_id, rig_id))


def set_auto_merge_delay(conn: Conn, town_id: str, rig_id: str, minutes: int | None) -> None:
    set_rig_config(conn, town_id, rig_id, AUTO_MERGE_DELAY_KEY, minutes)
