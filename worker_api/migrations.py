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

MIGRATIONS.append(
    Migration(
        name="reconciler: rigs, beads, review/convoy metadata, dependencies, bead events, mail, agent hooks",
        sql="""
CREATE TABLE rigs (
    town_id         TEXT NOT NULL REFERENCES towns(town_id) ON DELETE CASCADE,
    rig_id          TEXT NOT NULL,
    name            TEXT NOT NULL,
    git_url         TEXT NOT NULL,
    default_branch  TEXT NOT NULL DEFAULT 'main',
    config          TEXT NOT NULL DEFAULT '{}',      -- JSON: max_dispatch_attempts, ...
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (town_id, rig_id)
);

CREATE TABLE town_beads (
    town_id                   TEXT NOT NULL REFERENCES towns(town_id) ON DELETE CASCADE,
    bead_id                   TEXT NOT NULL,
    type                      TEXT NOT NULL,     -- issue|message|escalation|merge_request|convoy|agent
    status                    TEXT NOT NULL DEFAULT 'open', -- open|in_progress|in_review|closed|failed
    title                     TEXT NOT NULL,
    body                      TEXT NOT NULL DEFAULT '',
    rig_id                    TEXT,
    parent_bead_id            TEXT,
    assignee_agent_id         TEXT,
    priority                  TEXT NOT NULL DEFAULT 'medium', -- low|medium|high|critical
    labels                    TEXT NOT NULL DEFAULT '[]',
    metadata                  TEXT NOT NULL DEFAULT '{}',
    dispatch_attempts         INTEGER NOT NULL DEFAULT 0,
    last_dispatch_attempt_at  INTEGER,
    created_by                TEXT,
    created_at                INTEGER NOT NULL,
    updated_at                INTEGER NOT NULL,
    closed_at                 INTEGER,
    PRIMARY KEY (town_id, bead_id)
);
CREATE INDEX beads_by_status ON town_beads(town_id, status, type);

CREATE TABLE review_metadata (
    town_id        TEXT NOT NULL,
    bead_id        TEXT NOT NULL,
    branch         TEXT,
    target_branch  TEXT NOT NULL DEFAULT 'main',
    pr_url         TEXT,
    merge_commit   TEXT,
    retry_count    INTEGER NOT NULL DEFAULT 0,
    last_poll_at   INTEGER,
    PRIMARY KEY (town_id, bead_id)
);

CREATE TABLE convoy_metadata (
    town_id                  TEXT NOT NULL,
    bead_id                  TEXT NOT NULL,
    total_beads              INTEGER NOT NULL DEFAULT 0,
    closed_beads             INTEGER NOT NULL DEFAULT 0,
    failed_beads             INTEGER NOT NULL DEFAULT 0,
    feature_branch           TEXT,
    merge_mode               TEXT NOT NULL DEFAULT 'review-and-merge',
    staged                   INTEGER NOT NULL DEFAULT 0,
    ready_to_land            INTEGER NOT NULL DEFAULT 0,
    landing_attempts         INTEGER NOT NULL DEFAULT 0,
    last_landing_attempt_at  INTEGER,
    landed_at                INTEGER,
    PRIMARY KEY (town_id, bead_id)
);

CREATE TABLE bead_dependencies (
    town_id             TEXT NOT NULL,
    bead_id             TEXT NOT NULL,       -- the dependent (waits / tracks)
    depends_on_bead_id  TEXT NOT NULL,       -- the blocker / tracked parent
    dep_type            TEXT NOT NULL,       -- blocks | tracks
    PRIMARY KEY (town_id, bead_id, depends_on_bead_id, dep_type)
) WITHOUT ROWID;
CREATE INDEX bead_deps_reverse ON bead_dependencies(town_id, depends_on_bead_id, dep_type);

CREATE TABLE bead_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    town_id     TEXT NOT NULL,
    bead_id     TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    agent_id    TEXT,
    payload     TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);
CREATE INDEX bead_events_by_bead ON bead_events(town_id, bead_id, id);

CREATE TABLE mail (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    mail_id        TEXT NOT NULL,
    town_id        TEXT NOT NULL REFERENCES towns(town_id) ON DELETE CASCADE,
    from_agent_id  TEXT NOT NULL,
    to_agent_id    TEXT NOT NULL,
    subject        TEXT NOT NULL,
    body           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    delivered_at   INTEGER,
    UNIQUE (town_id, mail_id)
);
CREATE INDEX mail_pending ON mail(town_id, to_agent_id, id) WHERE delivered_at IS NULL;

ALTER TABLE agents ADD COLUMN current_hook_bead_id TEXT;
ALTER TABLE agents ADD COLUMN dispatch_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN stalled_at INTEGER;
ALTER TABLE agents ADD COLUMN checkpoint TEXT;
ALTER TABLE agents ADD COLUMN gupp_fired TEXT NOT NULL DEFAULT '{}';
CREATE INDEX agents_by_hook ON agents(town_id, current_hook_bead_id) WHERE current_hook_bead_id IS NOT NULL;

ALTER TABLE town_events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE town_events ADD COLUMN last_error TEXT;
CREATE INDEX town_events_by_bead ON town_events(town_id, bead_id) WHERE bead_id IS NOT NULL;
""",
    )
)

MIGRATIONS.append(
    Migration(
        name="users and their towns, the mayor's inbox, the agents' event archive",
        sql="""
CREATE TABLE users (
    user_id     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,     -- sha256 of the user's token: the token itself is never stored
    created_at  INTEGER NOT NULL
);
ALTER TABLE towns ADD COLUMN owner_user_id TEXT;
CREATE INDEX towns_by_owner ON towns(owner_user_id) WHERE owner_user_id IS NOT NULL;

CREATE TABLE mayor_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    town_id       TEXT NOT NULL REFERENCES towns(town_id) ON DELETE CASCADE,
    text          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    delivered_at  INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE INDEX mayor_messages_pending ON mayor_messages(town_id, id) WHERE delivered_at IS NULL;

CREATE TABLE agent_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,   -- the SSE id: increasing across the worker
    town_id       TEXT NOT NULL REFERENCES towns(town_id) ON DELETE CASCADE,
    agent_id      TEXT NOT NULL,
    source_id     INTEGER NOT NULL,                    -- the container's event id (dedup on resend)
    type          TEXT NOT NULL,
    data          TEXT NOT NULL,
    ts            INTEGER NOT NULL,
    received_at   INTEGER NOT NULL
);
CREATE INDEX agent_events_by_town ON agent_events(town_id, seq);
CREATE INDEX agent_events_by_agent ON agent_events(town_id, agent_id, seq);
CREATE INDEX agent_events_by_source ON agent_events(town_id, agent_id, source_id);
""",
    )
)

MIGRATIONS.append(
    Migration(
        name="town settings (env vars, git identity, code review, merge strategy)",
        sql="""
ALTER TABLE towns ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';   -- JSON: worker_api.settings
""",
    )
)

MIGRATIONS.append(
    Migration(
        name="telemetry capped per town (an index to find a town's oldest of one type)",
        sql="""
CREATE INDEX town_events_by_type ON town_events(town_id, event_type, id);
""",
    )
)

MIGRATIONS.append(
    Migration(
        name="town token generation (rotation revokes every outstanding token of the town)",
        sql="""
ALTER TABLE towns ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;
""",
    )
)

MIGRATIONS.append(
    Migration(
        name="replicas: which worker replica reconciles which town (a lease with a fencing token)",
        sql="""
CREATE TABLE worker_replicas (
    replica_id  TEXT PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL        -- alive until then unless it renews (worker_api/worker_api/leases.py)
);

CREATE TABLE town_leases (
    town_id     TEXT PRIMARY KEY REFERENCES towns(town_id) ON DELETE CASCADE,
    owner       TEXT NOT NULL,          -- replica_id
    fence       INTEGER NOT NULL,       -- bumped on every change of owner: a tick commits only under its own
    expires_at  INTEGER NOT NULL
);
CREATE INDEX town_leases_by_owner ON town_leases(owner);
""",
    )
)
