"""Timing and limit constants of the town reconciler (docs/original-system.md §5.4–5.9). Times are milliseconds.

Each value is the original system's (docs/original-system.md) unless noted; the comments say what breaks if it is changed.
"""
from __future__ import annotations

import os

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE


def _seconds_env(name: str, default_ms: int) -> int:
    """An operator's override in seconds (``GASTOWN_…_S``); a bad value is an error at import, not a silent default."""
    raw = os.environ.get(name)
    return default_ms if not raw else int(float(raw) * SECOND)


ACTIVE_INTERVAL_MS = 5 * SECOND          # tick cadence while the town has work
IDLE_INTERVAL_MS = 5 * MINUTE            # cadence of an idle town

HEARTBEAT_STALE_MS = 90 * SECOND         # 3 missed 30 s heartbeats: the agent is gone
COMPLETION_RACE_MS = 10 * SECOND        # a completion this close to a dispatch may be the previous run's
NOT_FOUND_GRACE_MS = 180 * SECOND        # container "not_found" right after a dispatch is a cold start (#1358)
STALE_IN_PROGRESS_MS = 5 * MINUTE        # Rule 3: must exceed the container's 2 min idle timer + one tick
STALLED_RELEASE_MS = 150 * MINUTE        # a stalled agent is released 2 h 30 min after stalled_at
AGENT_ATTEMPTS_RESET_MS = 30 * MINUTE    # agent dispatch counter resets after 30 min of inactivity
AGENT_GC_RETENTION_MS = 24 * HOUR        # idle/dead polecats and refineries are deleted after a day

MAX_DISPATCH_ATTEMPTS = 5                # per bead (rig config ``max_dispatch_attempts`` overrides)
BACKOFF_MS = (30 * SECOND, 30 * SECOND, MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE)  # index = attempts
CIRCUIT_BREAKER_BEADS = 20               # this many beads failing dispatch ...
CIRCUIT_BREAKER_WINDOW_MS = 30 * MINUTE  # ... within this window suppress every dispatch in the town
MAX_ACTIVE_POLECATS = 10                 # ours: one container cannot run thousands of kilo processes

MR_STUCK_MS = 30 * MINUTE                # R2: in_progress MR without PR and without a working agent
MR_ABANDONED_MS = 2 * MINUTE             # R3: in_progress MR without PR and nobody hooked
PR_ORPHANED_MS = 30 * MINUTE             # R4: PR MR without a working refinery
PR_POLL_INTERVAL_MS = _seconds_env("GASTOWN_PR_POLL_INTERVAL_S", MINUTE)  # R1
LAND_RETRY_MS = 30 * SECOND              # R8: between attempts to merge an approved MR or open its PR

LANDING_MAX_ATTEMPTS = 5
LANDING_COOLDOWN_BASE_MS = 30 * SECOND   # min(2^n * 30 s, 30 min)
LANDING_COOLDOWN_MAX_MS = 30 * MINUTE

GUPP_WARN_MS = _seconds_env("GASTOWN_GUPP_WARN_S", 15 * MINUTE)
GUPP_ESCALATE_MS = _seconds_env("GASTOWN_GUPP_ESCALATE_S", HOUR)
GUPP_FORCE_STOP_MS = _seconds_env("GASTOWN_GUPP_FORCE_STOP_S", 2 * HOUR)
GUPP_TIER_REPEAT_MS = HOUR               # each tier fires at most once per hour per agent

REESCALATE_MS = _seconds_env("GASTOWN_REESCALATE_S", 30 * MINUTE)  # ours: an unacknowledged escalation comes back
MAX_REESCALATIONS = 3                    # ... at most this often, one severity higher each time (up to critical)

EVENT_MAX_ATTEMPTS = 5                   # an event that keeps failing is marked processed with its error
EVENT_RETENTION_MS = 7 * 24 * HOUR
EVENTS_PER_TICK = 500


def backoff_ms(attempts: int) -> int:
    """Per-bead wait after ``attempts`` dispatches: 30 s, 30 s, 1 min, 2 min, 5 min, then 10 min."""
    return BACKOFF_MS[min(max(attempts, 0), len(BACKOFF_MS) - 1)]


def landing_cooldown_ms(attempts: int) -> int:
    return min((2 ** attempts) * LANDING_COOLDOWN_BASE_MS, LANDING_COOLDOWN_MAX_MS)
