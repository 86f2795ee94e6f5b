"""Drain (container eviction) handshake state, persisted in ``kv`` so it survives a restart.

A container being evicted calls ``container-eviction``: the town is *draining* (the reconciler must
not dispatch) until one of (docs/original-system.md §5.5, bug #21 "a stale heartbeat from the dying container
cleared the drain early"):
1. the new container acknowledges with the matching nonce (``container-ready``);
2. a heartbeat arrives from a *different* container instance than the one last recorded (the
   fast path). We require a recorded instance id: with none, any heartbeat — possibly from the
   dying container — would clear the drain, which is the very bug the handshake exists for;
3. :data:`DRAIN_TIMEOUT_MS` (7 min) has passed — checked lazily by :func:`drain_state`.
"""
from __future__ import annotations

import hmac
import secrets
from typing import Any

from gastown.core.jsonlog import get_logger
from worker_api.store import kv_delete, kv_get, kv_set
from worker_api.db import Conn

log = get_logger("worker_api.drain")

DRAIN_TIMEOUT_MS = 7 * 60 * 1000

K_DRAINING = "town:draining"
K_NONCE = "town:drain_nonce"
K_STARTED_AT = "town:drain_started_at"
K_INSTANCE = "town:container_instance_id"


def start_drain(conn: Conn, town_id: str, now_ms: int) -> str:
    """Mark the town draining with a fresh nonce (a repeated eviction re-arms with a new one)."""
    nonce = secrets.token_hex(16)
    kv_set(conn, town_id, K_DRAINING, True)
    kv_set(conn, town_id, K_NONCE, nonce)
    kv_set(conn, town_id, K_STARTED_AT, now_ms)
    log.info("drain.started", town=town_id)
    return nonce


def clear_drain(conn: Conn, town_id: str, reason: str) -> None:
    kv_delete(conn, town_id, K_DRAINING, K_NONCE, K_STARTED_AT)
    log.info("drain.cleared", town=town_id, reason=reason)


def drain_state(conn: Conn, town_id: str, now_ms: int, *, clear_expired: bool = True) -> dict[str, Any] | None:
    """``{"nonce", "started_at"}`` while draining, else None. A drain older than 7 min is over; it is
    also cleared unless ``clear_expired`` is False (a read-only transaction: PostgreSQL refuses the
    delete there)."""
    if not kv_get(conn, town_id, K_DRAINING, False):
        return None
    started_at = kv_get(conn, town_id, K_STARTED_AT)
    if not isinstance(started_at, int) or now_ms - started_at >= DRAIN_TIMEOUT_MS:
        if clear_expired:
            clear_drain(conn, town_id, "timeout")
        return None
    return {"nonce": kv_get(conn, town_id, K_NONCE), "started_at": started_at}


def is_draining(conn: Conn, town_id: str, now_ms: int, *, clear_expired: bool = True) -> bool:
    return drain_state(conn, town_id, now_ms, clear_expired=clear_expired) is not None


def acknowledge_ready(conn: Conn, town_id: str, nonce: str, now_ms: int) -> bool:
    """Clear the drain if ``nonce`` matches the current one; a mismatch or no drain → False."""
    state = drain_state(conn, town_id, now_ms)
    if state is None or not isinstance(state["nonce"], str):
        return False
    if not nonce.isascii() or not hmac.compare_digest(state["nonce"].encode(), nonce.encode()):
        log.info("drain.ready_nonce_mismatch", town=town_id)
        return False
    clear_drain(conn, town_id, "nonce")
    return True


def observe_container_instance(conn: Conn, town_id: str, instance_id: str | None, now_ms: int) -> bool:
    """Record the heartbeat's container instance; return True if that cleared a drain."""
    if not instance_id:
        return False
    recorded = kv_get(conn, town_id, K_INSTANCE)
    cleared = False
    if recorded and recorded != instance_id and is_draining(conn, town_id, now_ms):
        clear_drain(conn, town_id, "new_container_instance")
        cleared = True
    if recorded != instance_id:
        kv_set(conn, town_id, K_INSTANCE, instance_id)
    return cleared
