"""reconcileReviewQueue, R1–R8: merge-request beads flow through one refinery per rig, serially (an
MR approved without review, code review being off, skips the refinery but keeps its place in line).

Why serial: two refineries merging into the same target concurrently race on the branch; one
in_progress MR per rig (invariant #3) makes the merge order the queue order. A refinery's own
dispatch counter is never reset on success or completion, so an MR whose refinery keeps going idle
is redispatched at most ``max_attempts`` times and then failed (#1342 redispatch loop).
"""
from __future__ import annotations

from worker_api.reconciler.actions import (
    DispatchAgent,
    MergeBranch,
    MergePr,
    OpenPr,
    PollPr,
    StopAgent,
    TransitionAgent,
    TransitionBead,
    UnhookAgent,
)
from worker_api.reconciler.constants import (
    LAND_RETRY_MS,
    MR_ABANDONED_MS,
    MR_STUCK_MS,
    PR_ORPHANED_MS,
    PR_POLL_INTERVAL_MS,
)
from worker_api.reconciler.plan import Plan


def _merge_held(meta: dict) -> bool:
    """A human hold seen by the last poll: never plan a merge over it (seed PR #3138)."""
    return bool(meta.get("awaiting_approval") or meta.get("is_draft")
                or meta.get("review_decision") == "CHANGES_REQUESTED")


def reconcile_review_queue(plan: Plan) -> None:
    s, now = plan.s, plan.now
    mrs = [b for b in s.beads.values() if b.type == "merge_request"]
    # A rig's review queue is serial while its refinery reviews an MR; an MR whose PR is open waits
    # on the forge (checks, a human) and must not hold the rig's other MRs back.
    busy_rigs = {b.rig_id for b in mrs if b.status == "in_progress"
                 and not (b.bead_id in s.reviews and s.reviews[b.bead_id].pr_url)}

    for mr in mrs:
        if mr.status != "in_progress":
            continue
        review = s.reviews.get(mr.bead_id)
        pr_url = review.pr_url if review else None
        hooked = plan.hooks.get(mr.bead_id, [])
        working = [a for a in hooked if a.status in ("working", "stalled")]
        age = now - mr.updated_at
        meta = mr.metadata
        awaiting = bool(meta.get("awaiting_approval"))
        if pr_url:
            # R1: poll the PR (rate-limited), and merge once auto-merge is pending unless the last
            # poll saw a human hold (the merge effect polls again before merging).
            if review is not None and (review.last_poll_at is None or now - review.last_poll_at >= PR_POLL_INTERVAL_MS):
                plan.add(PollPr(mr.bead_id, pr_url))
            if meta.get("auto_merge_pending") and not _merge_held(meta):
                plan.add(MergePr(mr.bead_id, pr_url))
            # R4: a PR nobody is watching any more fails, unless it is waiting for a human approval.
            # The clock restarts when the approval arrives, so the auto-merge delay can still run.
            pr_age = now - max(mr.updated_at, int(meta.get("awaiting_approval_resolved_at") or 0))
            watched = working or awaiting or meta.get("fast_tracked")  # code review off: nobody is meant to watch
            if pr_age > PR_ORPHANED_MS and not watched and plan.claim(mr.bead_id):
                plan.add(TransitionBead(mr.bead_id, "in_progress", "failed", "pr_orphaned"))
            continue
        if meta.get("approved_at"):
            # R8: the refinery approved; the worker lands it (direct merge or a PR), retried at a bounded
            # rate; no timeout reopens it meanwhile, and the rig's queue waits: merges stay serial.
            if review is not None and (review.last_poll_at is None or now - review.last_poll_at >= LAND_RETRY_MS) \
                    and plan.claim(mr.bead_id):
                plan.add(OpenPr(mr.bead_id) if meta.get("merge_strategy") == "pr" else MergeBranch(mr.bead_id))
            continue
        if not working and age > MR_STUCK_MS and plan.claim(mr.bead_id):  # R2
            plan.add(TransitionBead(mr.bead_id, "in_progress", "open", "mr_stuck", clear_assignee=True))
            plan.add(*(UnhookAgent(a.agent_id, "mr_stuck") for a in hooked if plan.claim(agent_id=a.agent_id)))
            continue
        if not hooked and age > MR_ABANDONED_MS and plan.claim(mr.bead_id):  # R3
            plan.add(TransitionBead(mr.bead_id, "in_progress", "open", "mr_abandoned", clear_assignee=True))
            continue
        # R6: an idle refinery still hooked to its MR is redispatched, within the MR's attempt cap.
        for a in hooked:
            if a.role != "refinery" or a.status != "idle" or awaiting:
                continue
            if mr.dispatch_attempts >= s.max_attempts(mr.rig_id):
                if plan.claim(mr.bead_id, a.agent_id):
                    plan.add(TransitionBead(mr.bead_id, "in_progress", "failed", "max_dispatch_attempts"),
                             UnhookAgent(a.agent_id, "mr_failed"))
            elif plan.may_dispatch(mr, "refinery") and plan.claim(mr.bead_id, a.agent_id):
                plan.add(DispatchAgent(mr.bead_id, mr.rig_id, "refinery", a.agent_id))

    # R5: per rig with no MR in progress, pop the oldest open unblocked MR onto the rig's refinery.
    refineries = {a.rig_id: a for a in s.agents.values() if a.role == "refinery"}
    for mr in sorted((b for b in mrs if b.status == "open"), key=lambda b: (b.created_at, b.bead_id)):
        if mr.rig_id in busy_rigs or mr.bead_id in plan.beads_claimed:
            continue
        live, failed = plan.blocked(mr)
        if failed or mr.dispatch_attempts >= s.max_attempts(mr.rig_id):
            plan.claim(mr.bead_id)
            plan.add(TransitionBead(mr.bead_id, "open", "failed", "blocker_failed" if failed else "max_dispatch_attempts"))
            continue
        if live:
            continue
        busy_rigs.add(mr.rig_id)  # serial per rig, even if this MR waits for backoff
        if mr.metadata.get("approved_at") and plan.claim(mr.bead_id):
            plan.add(TransitionBead(mr.bead_id, "open", "in_progress", "fast_track"))  # no review: R8 lands it
            continue
        ref = refineries.get(mr.rig_id)
        if ref is not None and (ref.status not in ("idle", "dead") or (ref.hook and ref.hook in s.beads)):
            continue  # the rig's refinery is busy elsewhere
        if plan.may_dispatch(mr, "refinery") and plan.claim(mr.bead_id, ref.agent_id if ref else None):
            plan.add(DispatchAgent(mr.bead_id, mr.rig_id, "refinery", ref.agent_id if ref else None))

    # R7: a refinery still working on a terminal (or vanished) MR is stopped and released.
    for a in s.agents.values():
        if a.role == "refinery" and a.status in ("working", "stalled") and a.hook and a.hook not in s.beads:
            if plan.claim(agent_id=a.agent_id):
                plan.add(StopAgent(a.agent_id, "mr_terminal"), UnhookAgent(a.agent_id, "mr_terminal"),
                         TransitionAgent(a.agent_id, "idle", "mr_terminal"))
