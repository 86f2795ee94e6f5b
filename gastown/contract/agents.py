"""Roles and agent states, as both sides name them on the wire."""
from __future__ import annotations

from enum import Enum
from typing import Literal, get_args


class Role(str, Enum):
    mayor = "mayor"
    polecat = "polecat"
    refinery = "refinery"
    triage = "triage"


class AgentState(str, Enum):
    """A kilo-backed agent's state in its container (``status`` in AgentStatus and heartbeats).

    ``recycling``: a wedged kilo is being replaced in place, same session (alive to the worker).
    ``backoff``: crashed, an in-place restart is scheduled (alive to the worker: do not re-dispatch).
    ``fatal``: a crash loop; no automatic restart until the policy's quiet period has passed or a
    new start clears it (stopped to the worker)."""

    starting = "starting"
    running = "running"
    recycling = "recycling"
    stopping = "stopping"
    exited = "exited"
    failed = "failed"
    backoff = "backoff"
    fatal = "fatal"


# The same names as literal types, for the worker's strict request models.
RoleName = Literal["mayor", "polecat", "refinery", "triage"]
AgentStateName = Literal["starting", "running", "recycling", "stopping", "exited", "failed", "backoff", "fatal"]
assert get_args(RoleName) == tuple(r.value for r in Role)
assert get_args(AgentStateName) == tuple(s.value for s in AgentState)

ROLES: tuple[str, ...] = get_args(RoleName)
ACTIVE_STATES = frozenset({AgentState.starting, AgentState.running, AgentState.recycling})
STOPPED_STATES = frozenset({AgentState.exited, AgentState.failed, AgentState.fatal})
# The worker's view of a container's answer: stopped, or unknown to the container at all.
NOT_FOUND = "not_found"
DEAD_STATUSES = frozenset({*(s.value for s in STOPPED_STATES), NOT_FOUND})
