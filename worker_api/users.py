"""Users: the people a hosted town serves. A user's token (``gtu_…``) is distinct from the admin
token and from container tokens; only its sha256 is stored, so a copy of the database holds no
usable token. A user owns the towns it creates and reaches no other town (403)."""
from __future__ import annotations

import hashlib
import secrets
from typing import Any

from gastown.core.jsonlog import register_secret
from worker_api.db import Conn

TOKEN_PREFIX = "gtu_"


def new_user_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_user_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


def create_user(conn: Conn, *, name: str, now_ms: int) -> dict[str, Any]:
    """A new user and its token (returned once, never stored)."""
    user_id = "user-" + secrets.token_hex(6)
    token = new_user_token()
    register_secret(token)
    conn.execute("INSERT INTO users (user_id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                 (user_id, name, token_hash(token), now_ms))
    return {"user_id": user_id, "name": name, "token": token}


def user_of_token(conn: Conn, token: str) -> str | None:
    row = conn.execute("SELECT user_id FROM users WHERE token_hash = ?", (token_hash(token),)).fetchone()
    return str(row[0]) if row else None

