"""Convoy landing MRs whose PR waits for a human approval: never failed by the timeout, never
respawned in a loop (seed PR #3138), and landed once approved."""
from __future__ import annotations

import logging

import pytest

from tests.test_reconciler_support import Harness
from tests.test_scm_support import (  # noqa: F401  (fixtures)
    DELAY_MIN,
    FakeGitHub,
    gh,
    h,
    history,
    meta,
    minutes,
    provider,
)
from worker_api import lifecycle as lc
from worker_api.routes_user import ConvoyBead, CreateConvoy, _create_convoy_tx


def landing_mrs(h: Harness) -> list[dict]:
    return [b for b in h.beads(type="merge_request") if b["metadata"].get("landing")]


async def landing_pr(h: Harness, pr_url: str) -> tuple[str, str]:
    """A review-then-land convoy whose one bead is done; its landing MR's refinery opened ``pr_url``.
    Returns (convoy id, landing MR id)."""
    body = CreateConvoy(rig_id="rig-1", title="Big change", beads=[ConvoyBead(title="part one")],
                        merge_mode="review-then-land")
    out = h.sync(_create_convoy_tx, h.town_id, body, h.clock.ms)
    h.sync(lc.transition_bead, h.town_id, out["bead_ids"][0], "closed", h.clock.ms, reason="test")
    await h.tick()  # ready to land → landing MR
    h.clock.advance(5)
    await h.tick()  # R5 → refinery
    [mr] = landing_mrs(h)
    assert mr["status"] == "in_progress" and mr["assignee_agent_id"]
    h.clock.advance(30)
    h.event("agent_done", mr["assignee_agent_id"], branch="convoy/big", pr_url=pr_url)
    await h.tick()  # pr_url recorded, refinery released, first poll
    return out["convoy_id"], mr["bead_id"]


async def test_landing_mr_awaiting_approval_is_neither_failed_nor_respawned_nor_merged(h: Harness,
                                                                                       gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED", checks="success")
    convoy_id, mr_id = await landing_pr(h, pr.url)
    assert meta(h, mr_id)["awaiting_approval"] is True
    await minutes(h, 45)
    assert h.bead(mr_id)["status"] == "in_progress" and [m["bead_id"] for m in landing_mrs(h)] == [mr_id]
    assert h.bead(convoy_id)["status"] == "in_review" and gh.merge_calls == []
    pr.review_decision = "APPROVED"
    await minutes(h, DELAY_MIN + 2)
    await h.tick()  # pr_status_changed(merged) → landing MR closed → convoy closed
    assert pr.merged_with == "squash" and h.bead(mr_id)["status"] == "closed"
    assert h.bead(convoy_id)["status"] == "closed"


async def test_failed_landing_mr_awaiting_approval_is_not_respawned(h: Harness, gh: FakeGitHub,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")
    convoy_id, mr_id = await landing_pr(h, pr.url)
    h.event("bead_cancelled", bead_id=mr_id)
    await minutes(h, 60)  # far past every landing cooldown
    assert h.bead(mr_id)["status"] == "failed" and len(landing_mrs(h)) == 1
    assert h.bead(convoy_id)["status"] == "in_review"
    [suppressed] = history(h, convoy_id, "reconciler.respawn_suppressed")
    assert suppressed["payload"] == {"mr_bead_id": mr_id, "reason": "awaiting_approval"}
    assert [r.getMessage() for r in caplog.records].count("reconciler.respawn_suppressed") == 1


async def test_failed_landing_mr_not_awaiting_approval_is_respawned(h: Harness, gh: FakeGitHub) -> None:
    """The control case: without a human wait, a failed landing MR is retried after the cooldown."""
    pr = gh.add_pr(review_decision="APPROVED", checks="pending")
    convoy_id, mr_id = await landing_pr(h, pr.url)
    assert meta(h, mr_id)["awaiting_approval"] is False
    h.event("bead_cancelled", bead_id=mr_id)
    await minutes(h, 5)
    assert len(landing_mrs(h)) == 2 and history(h, convoy_id, "reconciler.respawn_suppressed") == []
