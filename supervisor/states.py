"""The agent state machine: named states, named state sets and the one place transitions are checked.

Modelled on supervisord's ``states.py``: an illegal transition is a bug, so it raises instead of
silently corrupting the record.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gastown.contract.agents import ACTIVE_STATES, STOPPED_STATES, AgentState

__all__ = ["ACTIVE_STATES", "STOPPED_STATES", "AgentState", "Change", "IllegalTransition", "Transition",
           "check_transition"]


@dataclass(frozen=True)
class Transition:
    """One state change of one agent life, told synchronously to every transition hook of the
    supervisor (the log line, metrics, registry sync, heartbeats) the moment it happens."""

    agent_id: str
    run_id: str
    role: str
    old: AgentState
    new: AgentState
    reason: str | None


class Change(str, Enum):
    """What happened to an agent (a start, a crash, a delivered message: one or several
    transitions, or none), told once to every change hook of the supervisor after the agent's lock
    is released (registry sync, metrics, idle timers, persistence, the health monitor)."""

    started = "started"  # serving: a start, an in-place restart, a resume or an adopted prewarm
    failed = "failed"  # a start that did not come up, or a wedge loop
    crashed = "crashed"  # kilo exited on its own
    message = "message"  # a message was delivered to the session
    stopped = "stopped"
    swapped = "swapped"  # a hot swap (model or token) put a new server in place
    recycled = "recycled"  # a wedged kilo was replaced

_ALLOWED: dict[AgentState, frozenset[AgentState]] = {
    AgentState.starting: frozenset({AgentState.running, AgentState.stopping, AgentState.failed, AgentState.exited}),
    AgentState.running: frozenset({AgentState.recycling, AgentState.stopping, AgentState.failed, AgentState.exited}),
    # recycling: the wedged kilo is stopped, its replacement not yet serving (health.recycle).
    AgentState.recycling: frozenset({AgentState.running, AgentState.failed}),
    AgentState.stopping: frozenset({AgentState.exited, AgentState.failed}),
    AgentState.exited: frozenset({AgentState.starting}),
    # failed -> backoff | fatal: the crash policy's verdict on an agent restarted in place.
    AgentState.failed: frozenset({AgentState.starting, AgentState.backoff, AgentState.fatal}),
    # backoff/fatal -> exited: stopped while waiting. A restart is a new record, so neither state
    # is ever left for another; the record of the crashed process stays as it is.
    AgentState.backoff: frozenset({AgentState.exited}),
    AgentState.fatal: frozenset({AgentState.exited}),
}


class IllegalTransition(RuntimeError):
    pass


def check_transition(old: AgentState, new: AgentState) -> None:
    if new not in _ALLOWED[old]:
        raise IllegalTransition(f"{old.value} -> {new.value}")
