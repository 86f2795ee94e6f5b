"""Pure review-queue rules that read what ``poll_pr`` wrote: the merge hold and R4's clock."""
from __future__ import annotations

import pytest

from tests.unit.test_reconciler_rules import NOW, mr, of, review, town
from worker_api.reconciler import actions as A
from worker_api.reconciler.constants import MINUTE
from worker_api.reconciler.reconcile import reconcile

URL = "https://github.com/acme/widgets/pull/7"


@pytest.mark.parametrize("hold", [{"awaiting_approval": True}, {"review_decision": "CHANGES_REQUESTED"},
                                  {"is_draft": True}])
def test_pending_auto_merge_is_not_planned_over_a_human_hold(hold: dict) -> None:
    s = town([mr("m1", "in_progress", updated=NOW, auto_merge_pending=1, **hold)], reviews=[review("m1", URL, NOW)])
    assert of(reconcile(s), A.MergePr) == []


def test_pending_auto_merge_without_a_hold_is_planned() -> None:
    s = town([mr("m1", "in_progress", updated=NOW, auto_merge_pending=1, review_decision="APPROVED")],
             reviews=[review("m1", URL, NOW)])
    assert of(reconcile(s), A.MergePr) == [A.MergePr("m1", URL)]


def test_r4_clock_restarts_when_the_approval_arrives() -> None:
    """An MR that waited an hour for a human must get R4's full 30 min after the approval, or it
    fails before the auto-merge delay has run."""
    old = NOW - 60 * MINUTE
    fresh = town([mr("m1", "in_progress", updated=old, awaiting_approval=False,
                     awaiting_approval_resolved_at=NOW - 29 * MINUTE)], reviews=[review("m1", URL, NOW)])
    assert of(reconcile(fresh), A.TransitionBead) == []
    stale = town([mr("m1", "in_progress", updated=old, awaiting_approval=False,
                     awaiting_approval_resolved_at=NOW - 31 * MINUTE)], reviews=[review("m1", URL, NOW)])
    assert of(reconcile(stale), A.TransitionBead) == [A.TransitionBead("m1", "in_progress", "failed", "pr_orphaned")]

