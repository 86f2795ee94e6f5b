"""reconcileBeads, Rules 1–4: every live issue bead is either being worked on, waiting for a
dispatch slot, or moved on. Together they guarantee a bead never sits forgotten: an agent that
vanished gives its bead back (Rule 3), and the per-bead attempt cap ends retry loops (→ failed).
"""
from __future__ import annotations

from worker_api.reconciler.actions import (
    ClearBeadAssignee,
    DispatchAgent,
    TransitionBead,
    UnhookAgent,
)
from worker_api.reconciler.constants import STALE_IN_PROGRESS_MS
from worker_api.reconciler.plan import HOLD_LABELS, Plan, by_priority


def _held(labels: tuple[str, ...]) -> bool:
    return any(label in HOLD_LABELS for label in labels)


def reconcile_beads(plan: Plan) -> None:
    s, now = plan.s, plan.now
    issues = [b for b in s.beads.values() if b.type == "issue"]
    hooked_open: dict[str, str] = {}
    for b in issues:
        for a in plan.hooks.get(b.bead_id, ()):
            hooked_open.setdefault(b.bead_id, a.agent_id)

    # Rule 2: an idle non-refinery agent hooked to an open, unblocked bead is (re)dispatched.
    for a in s.agents.values():
        if a.status != "idle" or not a.hook or a.role in ("refinery", "mayor"):
            continue
        bead = s.beads.get(a.hook)
        if bead is None or bead.status != "open" or bead.type != "issue":
            continue
        live, failed = plan.blocked(bead)
        if failed or bead.dispatch_attempts >= s.max_attempts(bead.rig_id):
            if plan.claim(bead.bead_id, a.agent_id):
                plan.add(TransitionBead(bead.bead_id, "open", "failed",
                                        "blocker_failed" if failed else "max_dispatch_attempts"),
                         UnhookAgent(a.agent_id, "bead_failed"))
            continue
        if live or plan.staged(bead) or bead.bead_id in plan.beads_claimed:
            continue
        if plan.may_dispatch(bead, a.role) and plan.claim(bead.bead_id, a.agent_id):
            plan.add(DispatchAgent(bead.bead_id, bead.rig_id, a.role, a.agent_id))

    # Rule 1b: an open bead whose assignee is not hooked to it loses the assignee (it blocks Rule 1).
    for b in issues:
        if b.status == "open" and b.assignee and hooked_open.get(b.bead_id) != b.assignee \
                and not _held(b.labels) and plan.claim(b.bead_id):
            plan.add(ClearBeadAssignee(b.bead_id, "assignee_not_hooked"))

    # Rule 1: open, unassigned, unhooked, with a rig, not held/blocked/staged → dispatch a polecat.
    candidates = [b for b in issues if b.status == "open" and not b.assignee and b.rig_id
                  and b.bead_id not in hooked_open and not _held(b.labels) and b.bead_id not in plan.beads_claimed]
    for b in by_priority(candidates):
        live, failed = plan.blocked(b)
        if failed:
            plan.claim(b.bead_id)
            plan.add(TransitionBead(b.bead_id, "open", "failed", "blocker_failed"))
        elif b.dispatch_attempts >= s.max_attempts(b.rig_id):
            plan.claim(b.bead_id)
            plan.add(TransitionBead(b.bead_id, "open", "failed", "max_dispatch_attempts"))
        elif not live and not plan.staged(b) and plan.may_dispatch(b, "polecat"):
            plan.claim(b.bead_id)
            plan.add(DispatchAgent(b.bead_id, b.rig_id, "polecat"))

    # Rule 3: in_progress for 5 min with nobody alive on it → back to open (or failed at the cap).
    for b in issues:
        if b.status != "in_progress" or now - b.updated_at <= STALE_IN_PROGRESS_MS:
            continue
        if plan.live_agent_on(b.bead_id) or not plan.claim(b.bead_id):
            continue
        to = "failed" if b.dispatch_attempts >= s.max_attempts(b.rig_id) else "open"
        plan.add(TransitionBead(b.bead_id, "in_progress", to, "stale_in_progress", clear_assignee=True))
        for a in plan.hooks.get(b.bead_id, ()):
            if plan.claim(agent_id=a.agent_id):
                plan.add(UnhookAgent(a.agent_id, "stale_in_progress"))

    # Rule 4: in_review with every MR terminal → closed if one merged, else reopened for another try.
    for b in issues:
        if b.status != "in_review":
            continue
        mrs = s.mrs_of_source.get(b.bead_id, [])
        if any(st not in ("closed", "failed") for _, st in mrs) or not plan.claim(b.bead_id):
            continue
        merged = any(st == "closed" for _, st in mrs)
        plan.add(TransitionBead(b.bead_id, "in_review", "closed" if merged else "open",
                                "mr_merged" if merged else "mr_failed", clear_assignee=not merged))
