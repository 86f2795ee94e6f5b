"""reconcileEscalations: an escalation the mayor has not acknowledged comes back, one severity higher.

Why: an escalation is a notice that something needs a decision; told once while the mayor was busy
with a user, it is easy to lose. It returns ``REESCALATE_MS`` after its notice reached the mayor,
until acknowledged (or closed), at most ``MAX_REESCALATIONS`` times. One about a bead that has since closed or failed is moot and
never returns (the original re-escalated those for ever).
"""
from __future__ import annotations

from worker_api.reconciler.actions import ReEscalate
from worker_api.reconciler.constants import MAX_REESCALATIONS, REESCALATE_MS
from worker_api.reconciler.plan import Plan

SEVERITIES = ("low", "medium", "high", "critical")


def next_severity(severity: str) -> str:
    i = SEVERITIES.index(severity) if severity in SEVERITIES else 1
    return SEVERITIES[min(i + 1, len(SEVERITIES) - 1)]


def reconcile_escalations(plan: Plan) -> None:
    for e in plan.s.escalations:
        if e.acknowledged or e.rounds >= MAX_REESCALATIONS or e.subject_status in ("closed", "failed"):
            continue
        # The clock runs from when the mayor was given the notice: one still queued (the mayor is
        # busy, or down) is not an escalation it ignored.
        if e.told_at is None or plan.now - e.told_at < REESCALATE_MS or not plan.claim(e.bead_id):
            continue
        plan.add(ReEscalate(e.bead_id, next_severity(e.severity), e.rounds + 1))
