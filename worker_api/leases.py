"""Which worker replica reconciles which town: one lease row per town, with a fencing token.

Why a lease row and not an advisory lock: an advisory lock lives as long as a connection, and our
connections come from a pool; a row is visible to every replica (and to an operator's ``SELECT``),
expires by itself when its replica dies, and carries a *fence*, bumped every time the town changes
hands. A tick commits only while its replica still holds the lease with the fence it started with
(:func:`check`, inside the tick's write transaction), so a replica that stalled past its
lease (a long GC pause, a frozen VM) cannot commit a decision over its successor's.

Every replica runs :func:`sync_tx` every ``RENEW_S``: it renews its own registration and leases,
hands back what exceeds its fair share (towns / live replicas, so a replica that joins gets work),
and claims expired or unowned towns up to that share. A dead replica's towns are claimed by the
others within ``LEASE_TTL_MS + RENEW_S``. Times are the replicas' wall clocks in ms: they must agree
to well within the TTL (NTP does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from worker_api.db import Conn

LEASE_TTL_MS = 10_000
RENEW_S = 3.0


class LeaseLost(Exception):
    """The town changed hands (or its lease expired and was taken) since this replica claimed it."""


@dataclass(frozen=True)
class Holdings:
    mine: dict[str, int]          # town -> fence, held by this replica
    others: dict[str, int]        # town -> lease expiry (ms), held live by another replica
    replicas: int                 # live replicas, this one included


def check(conn: Conn, town_id: str, replica_id: str, fence: int) -> None:
    """Raise :class:`LeaseLost` unless this replica holds the town's lease with ``fence``. On
    PostgreSQL the row stays share-locked to the end of the transaction: a takeover waits for the
    tick to commit instead of slipping in between this check and the commit."""
    lock = " FOR SHARE" if getattr(conn, "dialect", "sqlite") == "postgresql" else ""
    row = conn.execute(f"SELECT owner, fence FROM town_leases WHERE town_id = ?{lock}", (town_id,)).fetchone()
    if row is None or row[0] != replica_id or int(row[1]) != fence:
        raise LeaseLost(f"town {town_id} is no longer reconciled by {replica_id}")


def claim_tx(conn: Conn, town_id: str, replica_id: str, now: int, ttl_ms: int = LEASE_TTL_MS) -> int | None:
    """Take the town if nobody holds it live; its fence, or None when another replica has it."""
    conn.execute(
        "INSERT INTO town_leases (town_id, owner, fence, expires_at) SELECT ?, ?, 1, ? WHERE EXISTS"
        " (SELECT 1 FROM towns WHERE town_id = ?) ON CONFLICT (town_id) DO UPDATE SET owner = excluded.owner,"
        " fence = town_leases.fence + 1, expires_at = excluded.expires_at"
        " WHERE town_leases.expires_at < ? AND town_leases.owner != excluded.owner",
        (town_id, replica_id, now + ttl_ms, town_id, now))
    row = conn.execute("SELECT owner, fence FROM town_leases WHERE town_id = ?", (town_id,)).fetchone()
    return int(row[1]) if row is not None and row[0] == replica_id else None


def sync_tx(conn: Conn, replica_id: str, now: int, ttl_ms: int = LEASE_TTL_MS) -> Holdings:
    """Renew, rebalance and claim (module doc); what this replica holds afterwards."""
    expires = now + ttl_ms
    conn.execute("INSERT INTO worker_replicas (replica_id, started_at, expires_at) VALUES (?, ?, ?)"
                 " ON CONFLICT (replica_id) DO UPDATE SET expires_at = excluded.expires_at", (replica_id, now, expires))
    conn.execute("DELETE FROM worker_replicas WHERE expires_at < ?", (now - 10 * ttl_ms,))
    replicas = int(conn.execute("SELECT COUNT(*) FROM worker_replicas WHERE expires_at >= ?", (now,)).fetchone()[0])
    conn.execute("UPDATE town_leases SET expires_at = ? WHERE owner = ?", (expires, replica_id))
    mine = {r[0]: int(r[1]) for r in conn.execute("SELECT town_id, fence FROM town_leases WHERE owner = ?"
                                                  " ORDER BY town_id", (replica_id,))}
    towns = [r[0] for r in conn.execute("SELECT town_id FROM towns ORDER BY town_id")]
    share = math.ceil(len(towns) / max(1, replicas))
    for town_id in list(mine)[share + 1:] if len(mine) > share + 1 else ():
        # Handed back, not kept: another replica claims it on its next sync (a newcomer gets work).
        conn.execute("UPDATE town_leases SET expires_at = 0 WHERE town_id = ? AND owner = ?", (town_id, replica_id))
        del mine[town_id]
    others = {r[0]: int(r[1]) for r in conn.execute("SELECT town_id, expires_at FROM town_leases WHERE owner != ?"
                                                    " AND expires_at >= ?", (replica_id, now))}
    for town_id in towns:
        if len(mine) >= share:
            break
        if town_id in mine or town_id in others:
            continue
        fence = claim_tx(conn, town_id, replica_id, now, ttl_ms)
        if fence is not None:
            mine[town_id] = fence
    return Holdings(mine, others, replicas)


def release_tx(conn: Conn, replica_id: str) -> None:
    """A replica that stops hands its towns back at once (its successor need not wait out the TTL)."""
    conn.execute("UPDATE town_leases SET expires_at = 0 WHERE owner = ?", (replica_id,))
    conn.execute("DELETE FROM worker_replicas WHERE replica_id = ?", (replica_id,))


def owner_tx(conn: Conn, town_id: str, now: int) -> str | None:
    """The replica reconciling the town now, if any (for the town's status)."""
    row = conn.execute("SELECT owner FROM town_leases WHERE town_id = ? AND expires_at >= ?", (town_id, now)).fetchone()
    return str(row[0]) if row else None


class TownLeases:
    """What this replica holds now: kept by the reconciler service (worker_api/reconciler/loop.py),
    read by the mayor's desk (only the town's holder delivers its mayor's turns)."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.fences: dict[str, int] = {}   # town -> fence of the lease this replica holds
        self.others: dict[str, int] = {}   # town -> expiry (ms) of a live lease of another replica

    def owns(self, town_id: str) -> bool:
        return town_id in self.fences

    def held_elsewhere(self, town_id: str, now: int) -> bool:
        return self.others.get(town_id, -1) >= now
