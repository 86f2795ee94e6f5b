"""Shared bookkeeping of one ``reconcile()`` pass: the actions so far and what they already claimed.

Why claims: every rule reads the same snapshot, so two rules could act on one bead or agent in the
same tick (e.g. "unhook a stale agent" and "redispatch it"). The first rule to claim wins and later
rules skip; rule order in ``reconcile()`` therefore encodes priority.
"""
from __future__ import annotations

from worker_api.reconciler.actions import Action
from worker_api.reconciler.constants import HEARTBEAT_STALE_MS, backoff_ms
from worker_api.reconciler.state import Agent, Bead, TownState

PRIORITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
HOLD_LABELS = frozenset({"gt:triage", "gt:triage-request", "gt:held"})


class Plan:
    def __init__(self, state: TownState) -> None:
        self.s = state
        self.now = state.now
        self.actions: list[Action] = []
        self.beads_claimed: set[str] = set()
        self.agents_claimed: set[str] = set()
        self.hooks: dict[str, list[Agent]] = {}
        for a in state.agents.values():
            if a.hook:
                self.hooks.setdefault(a.hook, []).append(a)
        busy = sum(1 for a in state.agents.values() if a.role == "polecat" and a.status in ("working", "stalled"))
        self.polecat_slots = state.max_polecats - busy

    def add(self, *actions: Action) -> None:
        self.actions.extend(actions)

    def claim(self, bead_id: str | None = None, agent_id: str | None = None) -> bool:
        """Claim a bead and/or an agent for this pass; False (and nothing claimed) if either is taken."""
        if (bead_id and bead_id in self.beads_claimed) or (agent_id and agent_id in self.agents_claimed):
            return False
        if bead_id:
            self.beads_claimed.add(bead_id)
        if agent_id:
            self.agents_claimed.add(agent_id)
        return True

    def fresh(self, agent: Agent) -> bool:
        """Heartbeat (or dispatch) within 90 s: the container may still be running it (#1358)."""
        return agent.last_activity_at is not None and self.now - agent.last_activity_at <= HEARTBEAT_STALE_MS

    def live_agent_on(self, bead_id: str) -> bool:
        return any(a.status in ("working", "stalled") or self.fresh(a) for a in self.hooks.get(bead_id, ()))

    def blocked(self, bead: Bead) -> tuple[bool, bool]:
        """(blocked by a live blocker, blocked by a failed one). A deleted blocker blocks nothing."""
        live = failed = False
        for _, status in self.s.blockers.get(bead.bead_id, ()):
            if status in ("open", "in_progress", "in_review"):
                live = True
            elif status == "failed":
                failed = True
        return live, failed

    def staged(self, bead: Bead) -> bool:
        convoy = self.s.convoys.get(str(bead.metadata.get("convoy_id") or ""))
        return convoy is not None and convoy.staged

    def backoff_elapsed(self, bead: Bead) -> bool:
        last = bead.last_dispatch_attempt_at
        return last is None or self.now - last >= backoff_ms(bead.dispatch_attempts)

    def may_dispatch(self, bead: Bead, role: str) -> bool:
        """Draining, circuit breaker, per-bead backoff and the polecat cap, in one place."""
        if self.s.draining or self.s.breaker_open() or not self.backoff_elapsed(bead):
            return False
        if role == "polecat":
            if self.polecat_slots <= 0:
                return False
            self.polecat_slots -= 1
        return True


def by_priority(beads: list[Bead]) -> list[Bead]:
    return sorted(beads, key=lambda b: (PRIORITY_ORDER.get(b.priority, 2), b.created_at, b.bead_id))
