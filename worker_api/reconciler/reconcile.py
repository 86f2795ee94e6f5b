"""``reconcile(state) -> actions``: the pure decision step of a tick, and ``has_active_work``.

Rule order is priority (see ``plan.Plan.claim``): agent liveness first (so a vanished agent's bead
is not redispatched to it), then beads, the review queue, convoys, GUPP, escalations, and GC last.
"""
from __future__ import annotations

from worker_api.reconciler.actions import Action
from worker_api.reconciler.constants import CIRCUIT_BREAKER_WINDOW_MS
from worker_api.reconciler.gupp import reconcile_gupp
from worker_api.reconciler.plan import Plan
from worker_api.reconciler.rules_agents import reconcile_agents, reconcile_gc
from worker_api.reconciler.rules_beads import reconcile_beads
from worker_api.reconciler.rules_convoys import reconcile_convoys
from worker_api.reconciler.rules_escalations import reconcile_escalations
from worker_api.reconciler.rules_review import reconcile_review_queue
from worker_api.reconciler.state import TownState


def reconcile(state: TownState) -> list[Action]:
    plan = Plan(state)
    reconcile_agents(plan)
    reconcile_beads(plan)
    reconcile_review_queue(plan)
    reconcile_convoys(plan)
    reconcile_gupp(plan)
    reconcile_escalations(plan)
    reconcile_gc(plan)
    return plan.actions


def has_active_work(state: TownState) -> bool:
    """Whether the town needs the 5 s cadence (docs/original-system.md §5.7 ``hasActiveWork``)."""
    now = state.now
    for a in state.agents.values():
        if a.status == "working" or (a.status == "idle" and a.hook):
            return True
        if a.status == "stalled" and a.last_activity_at and now - a.last_activity_at < CIRCUIT_BREAKER_WINDOW_MS:
            return True
    plan = None
    for b in state.beads.values():
        if b.type == "merge_request" and b.status in ("open", "in_progress"):
            return True
        if b.type == "convoy" and b.bead_id in state.convoys and not state.convoys[b.bead_id].staged:
            return True
        if b.type == "issue" and b.status == "open" and b.rig_id and not b.assignee:
            plan = plan or Plan(state)
            if not plan.staged(b):
                return True
    return False
