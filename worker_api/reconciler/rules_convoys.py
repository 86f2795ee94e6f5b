"""reconcileConvoys: keep progress current and finish convoys.

``review-and-merge``: each bead merges to the default branch on its own; the convoy closes once
every tracked bead is terminal (failed if any bead failed). ``review-then-land``: beads merge into
the convoy's feature branch; when all closed, one landing MR merges the feature branch, retried at
most ``LANDING_MAX_ATTEMPTS`` times with an exponential cooldown, then the convoy fails (#2260).
"""
from __future__ import annotations

from worker_api.reconciler.actions import (
    CloseConvoy,
    CreateLandingMr,
    FailConvoy,
    SetConvoyReadyToLand,
    UpdateConvoyProgress,
)
from worker_api.reconciler.constants import LANDING_MAX_ATTEMPTS, landing_cooldown_ms
from worker_api.reconciler.plan import Plan


def reconcile_convoys(plan: Plan) -> None:
    now = plan.now
    for c in plan.s.convoys.values():
        if (c.total, c.closed, c.failed) != c.stored:
            plan.add(UpdateConvoyProgress(c.bead_id, c.total, c.closed, c.failed))
        if c.staged or c.live > 0 or not plan.claim(c.bead_id):
            continue
        if c.total == 0:
            plan.add(CloseConvoy(c.bead_id, "empty"))
        elif c.merge_mode != "review-then-land":
            if c.failed:
                plan.add(FailConvoy(c.bead_id, f"{c.failed} of {c.total} beads failed"))
            else:
                plan.add(CloseConvoy(c.bead_id, "all_beads_closed"))
        elif c.failed:
            plan.add(FailConvoy(c.bead_id, f"{c.failed} of {c.total} beads failed; nothing lands"))
        elif c.landing_live or c.landing_awaiting:
            continue  # a landing MR is in flight, or a human must approve before we try again
        elif c.landing_attempts >= LANDING_MAX_ATTEMPTS:
            plan.add(FailConvoy(c.bead_id, f"landing failed {c.landing_attempts} times"))
        else:
            if not c.ready_to_land:
                plan.add(SetConvoyReadyToLand(c.bead_id))
            last = c.last_landing_attempt_at
            if (last is None or now - last >= landing_cooldown_ms(c.landing_attempts)) and not plan.s.draining:
                plan.add(CreateLandingMr(c.bead_id))
