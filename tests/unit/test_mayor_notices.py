"""What the mayor is told (issue 12, item 5): merged and failed merge requests, landed convoys, and
escalations that come back until acknowledged. Real store and ticks on a fake clock; the notices are
the mayor's nudges, which the worker's mayor desk delivers."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_reconciler_support import Harness, h  # noqa: F401 (fixture)
from tests.unit.test_reconciler_tick import dispatch_one, local_origin, polecat_done_and_refinery_approves
from worker_api import lifecycle as lc
from worker_api import nudges
from worker_api.reconciler.constants import MAX_REESCALATIONS, REESCALATE_MS
from worker_api.reconciler.rules_escalations import next_severity
from worker_api.routes_user import ConvoyBead, CreateConvoy, _create_convoy_tx


def notices(h: Harness) -> list[str]:
    return [n["message"] for n in h.sync(nudges.pending_nudges, h.town_id, "mayor-1", h.clock.ms)]


async def test_a_merged_merge_request_is_told_to_the_mayor_once(h: Harness, tmp_path: Path) -> None:
    origin = local_origin(h, tmp_path)
    _, _, mr = await polecat_done_and_refinery_approves(h, {"work.txt": "work\n"}, origin)
    assert h.bead(mr["bead_id"])["status"] == "closed"
    merged = [n for n in notices(h) if n.startswith("Merged:")]
    assert len(merged) == 1 and mr["bead_id"] in merged[0] and "into main" in merged[0]
    await h.tick()
    assert len([n for n in notices(h) if n.startswith("Merged:")]) == 1


async def test_a_failed_merge_request_says_why(h: Harness, tmp_path: Path) -> None:
    local_origin(h, tmp_path)
    _, _, mr = await polecat_done_and_refinery_approves(h)  # the branch was never pushed
    [failed] = [n for n in notices(h) if n.startswith("Merge request failed")]
    assert "branch_missing" in failed and mr["bead_id"] in failed


async def test_a_merge_request_cancelled_with_its_source_is_not_told(h: Harness) -> None:
    bead_id, polecat = await dispatch_one(h)
    h.clock.advance(30)
    h.event("agent_done", polecat, branch=h.container.starts[0]["branch"], summary="did it")
    await h.tick()
    [mr] = h.beads(type="merge_request")
    assert mr["status"] == "in_progress"
    h.sync(lc.transition_bead, h.town_id, bead_id, "failed", h.clock.ms, reason="cancelled")
    assert h.bead(mr["bead_id"])["status"] == "failed"
    assert [n for n in notices(h) if "Merge request" in n or "Merged" in n] == []


async def test_a_convoy_that_lands_is_told_to_the_mayor_with_its_count(h: Harness) -> None:
    body = CreateConvoy(rig_id="rig-1", title="Ship the feature", beads=[ConvoyBead(title="a"), ConvoyBead(title="b")])
    convoy = h.sync(_create_convoy_tx, h.town_id, body, h.clock.ms)
    for bead_id in convoy["bead_ids"]:
        h.sync(lc.transition_bead, h.town_id, bead_id, "closed", h.clock.ms, reason="done")
    await h.tick()
    assert h.bead(convoy["convoy_id"])["status"] == "closed"
    assert [n for n in notices(h) if n.startswith("Convoy")] == [
        f"Convoy landed: Ship the feature [{convoy['convoy_id']}]: 2 of 2 beads merged."]


def escalate(h: Harness, subject: str | None = None) -> str:
    return str(h.sync(lc.create_escalation, h.town_id, title="The build is red", body="", now=h.clock.ms,
                      bead_id=subject, severity="medium"))


def deliver_all(h: Harness) -> list[str]:
    """What the mayor's desk does when the mayor is idle: every queued notice handed over, now."""
    told = notices(h)
    for n in h.sync(nudges.pending_nudges, h.town_id, "mayor-1", h.clock.ms):
        h.sync(nudges.mark_nudge_delivered, h.town_id, "mayor-1", n["nudge_id"], h.clock.ms)
    return told


async def test_an_unacknowledged_escalation_comes_back_one_severity_higher_at_most_three_times(h: Harness) -> None:
    esc = escalate(h)
    assert notices(h)[-1].startswith(f"Escalation (medium): The build is red [{esc}]")
    deliver_all(h)
    h.clock.advance(REESCALATE_MS / 1000 - 1)
    await h.tick()
    assert notices(h) == []
    seen = []
    for _ in range(MAX_REESCALATIONS + 2):
        h.clock.advance(REESCALATE_MS / 1000)
        await h.tick()
        seen.extend(deliver_all(h))
    assert [s.split(",")[0] for s in seen] == ["Re-escalation #1 (high)", "Re-escalation #2 (critical)",
                                               "Re-escalation #3 (critical)"]
    bead = h.bead(esc)
    assert bead["priority"] == "critical" and "severity:critical" in bead["labels"]
    assert bead["metadata"]["re_escalations"] == MAX_REESCALATIONS


async def test_an_escalation_whose_notice_is_still_queued_does_not_come_back(h: Harness) -> None:
    """The clock ran from the escalation's creation: a mayor busy (or down) for 30 min had it
    re-escalated to critical before it had seen it once."""
    escalate(h)
    h.clock.advance(3 * REESCALATE_MS / 1000)
    await h.tick()
    assert len(notices(h)) == 1 and "Re-escalation" not in notices(h)[0]


async def test_an_acknowledged_escalation_does_not_come_back(h: Harness) -> None:
    esc = escalate(h)
    deliver_all(h)
    h.sync(lc.acknowledge_escalation, h.town_id, esc, h.clock.ms, actor="mayor-1", note="on it")
    h.clock.advance(3 * REESCALATE_MS / 1000)
    await h.tick()
    assert notices(h) == []
    assert h.bead(esc)["metadata"]["acknowledged_by"] == "mayor-1"


@pytest.mark.parametrize("to", ["closed", "failed"])
async def test_an_escalation_about_a_finished_bead_never_comes_back(h: Harness, to: str) -> None:
    subject = h.sling("Flaky test")
    esc = escalate(h, subject)
    deliver_all(h)
    h.sync(lc.transition_bead, h.town_id, subject, to, h.clock.ms, reason="done")
    h.clock.advance(3 * REESCALATE_MS / 1000)
    await h.tick()
    assert [n for n in notices(h) if "Re-escalation" in n] == []
    assert h.bead(esc)["status"] == "open"


def test_severity_climbs_to_critical_and_stays() -> None:
    assert [next_severity(s) for s in ("low", "medium", "high", "critical", "bogus")] == [
        "medium", "high", "critical", "critical", "high"]
