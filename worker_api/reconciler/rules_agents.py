"""reconcileAgents and GC: bring agent rows back in line with what the container can still be doing.

Liveness is the activity watermark ``last_activity_at`` (set by every heartbeat and by a dispatch),
so a freshly dispatched agent has 90 s to send its first heartbeat before it is presumed gone.
While the town drains, heartbeats stop, so the liveness rules would misfire: they are skipped.
"""
from __future__ import annotations

from worker_api.reconciler.actions import (
    DeleteAgent,
    ResetAgentDispatchAttempts,
    TransitionAgent,
    TransitionBead,
    UnhookAgent,
)
from worker_api.reconciler.constants import (
    AGENT_ATTEMPTS_RESET_MS,
    AGENT_GC_RETENTION_MS,
    MAX_DISPATCH_ATTEMPTS,
    STALLED_RELEASE_MS,
)
from worker_api.reconciler.plan import Plan


def reconcile_agents(plan: Plan) -> None:
    s, now = plan.s, plan.now
    for a in s.agents.values():
        if a.role == "mayor":
            continue
        if a.status in ("idle", "dead") and a.hook and a.hook not in s.beads:
            # Hooked to a missing or terminal bead: nothing to resume.
            if plan.claim(agent_id=a.agent_id):
                plan.add(UnhookAgent(a.agent_id, "hook_terminal_or_missing", clear_checkpoint=True))
            continue
        if s.draining:
            continue
        if a.status == "working":
            if a.last_activity_at is None:
                reason = "no_heartbeat"
            elif not plan.fresh(a):
                reason = "heartbeat_stale"
            elif not a.hook:
                reason = "working_without_hook"
            else:
                reason = ""
            if reason and plan.claim(agent_id=a.agent_id):
                plan.add(TransitionAgent(a.agent_id, "idle", reason))
        elif a.status == "stalled" and a.stalled_at is not None and now - a.stalled_at > STALLED_RELEASE_MS:
            if plan.claim(agent_id=a.agent_id):
                plan.add(TransitionAgent(a.agent_id, "idle", "stalled_release"), UnhookAgent(a.agent_id, "stalled_release"))
        elif a.status == "idle" and a.hook and a.role != "refinery":
            bead = s.beads[a.hook]
            # An idle agent on an open bead is Rule 2's (redispatch). On in_progress/in_review work
            # with a stale heartbeat, give the bead back. A fresh heartbeat means the container may
            # still run it after a timed-out dispatch (#1358): leave it.
            if bead.status != "open" and not plan.fresh(a) and plan.claim(bead.bead_id, a.agent_id):
                plan.add(UnhookAgent(a.agent_id, "idle_hook_stale"))
                if bead.status == "in_progress":
                    plan.add(TransitionBead(bead.bead_id, "in_progress", "open", "agent_gone", clear_assignee=True))
        if (a.dispatch_attempts >= MAX_DISPATCH_ATTEMPTS and a.status != "working"
                and (a.last_activity_at is None or now - a.last_activity_at > AGENT_ATTEMPTS_RESET_MS)):
            plan.add(ResetAgentDispatchAttempts(a.agent_id))


def reconcile_gc(plan: Plan) -> None:
    """Delete polecats/refineries idle or dead, unhooked, and quiet for a day."""
    for a in plan.s.agents.values():
        if a.role not in ("polecat", "refinery") or a.status not in ("idle", "dead") or a.hook:
            continue
        last = a.last_activity_at or a.created_at
        if plan.now - last > AGENT_GC_RETENTION_MS and plan.claim(agent_id=a.agent_id):
            plan.add(DeleteAgent(a.agent_id, "gc_24h"))
