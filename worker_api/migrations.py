"""Versioned schema of the worker store.

``MIGRATIONS[i]`` brings a database from ``PRAGMA user_version = i`` to ``i + 1``. Append new
entries, never edit or reorder shipped ones: a database records only the number of scripts it has
run, so a changed script would silently diverge between towns created before and after the change.

Conventions (why):
* every table carries ``town_id`` and every query filters on it, so one file could hold many towns;
* times are epoch **milliseconds** (INTEGER), the unit the container reports (``fired_at``);
* JSON columns are TEXT holding JSON;
* no CHECK constraints on enums (role, status): SQLite cannot alter a CHECK without rebuilding the
  table, and the enums grow; validation lives in ``worker_api.models`` and the store helpers.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


MIGRATIONS: list[Migration] = [
    Migration(
        name="initial: towns, agents, registry, town_events, nudges, kv",
        sql="""
CREATE TABLE towns (
    town_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    container_url    TEXT NOT NULL,
    control_token    TEXT NOT NULL,          -- secret: never returned by a route nor logged
    default_model    TEXT,
    small_model      TEXT,
    organization_id  TEXT,
    created_at       INTEGER NOT NULL
);

CREATE TABLE agents (
    town_id                TEXT NOT NULL REFERENCES towns(town_id) ON DELETE CASCADE,
    agent_id               TEXT NOT NULL,
    role                   TEXT NOT NULL,            -- mayor | polecat | refinery | triage
    name                   TEXT NOT NULL,
    rig_id                 TEXT,
    status                 TEXT NOT NULL DEFAULT 'idle', -- idle|working|waiting|stalled|dead
    working_since          INTEGER,                  -- last time marked working (stale waiting guard)
    last_activity_at       INTEGER,
    last_event_type        TEXT,
    last_event_at          INTEGER,
    active_tools           TEXT NOT NULL DEFAULT '[]',
    message_count          INTEGER NOT NULL DEFAULT 0,
    container_status       TEXT,                     -- status from the last heartbeat
    container_instance_id  TEXT,
    last_heartbeat_at      INTEGER,
    created_at             INTEGER NOT NULL,
    PRIMARY KEY (town_id, agent_id)
);
CREATE UNIQUE INDEX agents_one_mayor_per_town ON agents(town_id) WHERE role = 'mayor';

CREATE TABLE container_registry (
    town_id     TEXT PRIMARY KEY REFERENCES towns(town_id) ON DELETE CASCADE,
    entries     TEXT NOT NULL DEFAULT '[]',
    updated_at  INTEGER NOT NULL
);

CREATE TABLE town_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    town_id       TEXT NOT NULL REFERENCES towns(town_id) ON DELETE CASCADE,
    event_type    TEXT NOT NULL,
    agent_id      TEXT,
    bead_id       TEXT,
    payload       TEXT NOT NULL DEFAULT '{}',
    created_at    INTEGER NOT NULL,
    processed_at  INTEGER
);
CREATE INDEX town_events_pending ON town_events(town_id, id) WHERE processed_at IS NULL;

CREATE TABLE nudges (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,   -- FIFO order
    nudge_id      TEXT NOT NULL,
    town_id       TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    message       TEXT NOT NULL,
    mode          TEXT NOT NULL DEFAULT 'wait-idle',   -- wait-idle | immediate | queue
    priority      TEXT NOT NULL DEFAULT 'normal',      -- normal | urgent
    source        TEXT NOT NULL DEFAULT 'system',
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    delivered_at  INTEGER,
    UNIQUE (town_id, nudge_id),
    FOREIGN KEY (town_id, agent_id) REFERENCES agents(town_id, agent_id) ON DELETE CASCADE
);
CREATE INDEX nudges_pending ON nudges(town_id, agent_id, seq) WHERE delivered_at IS NULL;

CREATE TABLE kv (
    town_id  TEXT NOT NULL REFERENCES towns(town_id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,                           -- JSON
    PRIMARY KEY (town_id, key)
) WITHOUT ROWID;
""",
    ),
]
