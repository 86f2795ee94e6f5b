"""Reconciler ticks (fake clock, real store) with PR polling and merging through the real GitHub
adapter against the fake GitHub: approval gating (seed PR #3138), auto-merge, errors."""
from __future__ import annotations

import logging

import pytest

from tests.test_reconciler_support import Harness
from tests.test_scm_support import (  # noqa: F401  (fixtures)
    DEFAULT_TOKEN,
    DELAY_MIN,
    FakeGitHub,
    gh,
    h,
    history,
    meta,
    minutes,
    open_pr_mr,
    provider,
    short_timeout,
)
from worker_api import beads as bx
from worker_api.scm import tokens
from worker_api.scm.github import GitHubProvider


async def test_review_required_green_checks_never_merges_nor_fails_after_the_timeout(h: Harness,
                                                                                    gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED", checks="success")
    bead_id, mr_id = await open_pr_mr(h, pr.url)
    m = meta(h, mr_id)
    assert m["awaiting_approval"] is True and m["review_decision"] == "REVIEW_REQUIRED"
    assert m["merge_state_status"] == "BLOCKED" and m["checks_state"] == "success" and m["is_draft"] is False
    assert "awaiting_approval" in m["auto_merge_blockers"] and "auto_merge_ready_since" not in m
    await minutes(h, 45)  # past R4's 30 min orphan timeout
    assert h.bead(mr_id)["status"] == "in_progress" and h.bead(bead_id)["status"] == "in_review"
    assert gh.merge_calls == []
    assert len(gh.graphql_calls) >= 45  # still polled every minute
    assert len(history(h, mr_id, "pr.awaiting_approval_detected")) == 1
    assert len(h.beads(type="merge_request")) == 1


async def test_approval_arrives_then_auto_merge_after_the_delay_merges_and_closes_the_bead(h: Harness,
                                                                                          gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")
    bead_id, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, 40)  # waiting longer than R4's timeout must not fail it once approved either
    pr.review_decision = "APPROVED"
    await minutes(h, 1)
    m = meta(h, mr_id)
    assert m["awaiting_approval"] is False and m["review_decision"] == "APPROVED"
    assert m["merge_state_status"] == "CLEAN" and "auto_merge_blockers" not in m
    green_at = m["auto_merge_ready_since"]
    [resolved] = history(h, mr_id, "pr.awaiting_approval_resolved")
    assert resolved["payload"]["review_decision"] == "APPROVED" and resolved["payload"]["waited_ms"] >= 40 * 60_000
    while h.clock.ms - green_at < DELAY_MIN * 60_000:
        assert gh.merge_calls == [] and h.bead(mr_id)["status"] == "in_progress"
        await minutes(h, 1)
    await minutes(h, 1)  # pr_auto_merge → merge_pr
    [call] = gh.merge_calls
    assert call["body"] == {"merge_method": "squash", "sha": pr.head_sha} and pr.state == "MERGED"
    await h.tick()  # pr_status_changed(merged) → MR closed → source closed
    assert h.bead(mr_id)["status"] == "closed" and h.bead(bead_id)["status"] == "closed"
    review = h.sync(bx.get_review, h.town_id, mr_id)
    assert review["merge_commit"] and meta(h, mr_id)["merged_with"] == "squash"
    assert len(gh.merge_calls) == 1


async def test_changes_requested_never_merges(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="CHANGES_REQUESTED", checks="success")
    bead_id, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, 20)
    m = meta(h, mr_id)
    assert m["awaiting_approval"] is False and m["auto_merge_blockers"] == ["changes_requested"]
    assert gh.merge_calls == [] and h.bead(mr_id)["status"] == "in_progress"


async def test_changes_requested_is_not_a_human_wait_so_the_orphan_timeout_still_applies(h: Harness,
                                                                                        gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="CHANGES_REQUESTED")
    bead_id, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, 35)
    assert h.bead(mr_id)["status"] == "failed" and h.bead(bead_id)["status"] != "in_review"
    assert history(h, mr_id, "status_changed")[-1]["payload"].get("reason") == "pr_orphaned"
    assert gh.merge_calls == []


async def test_changes_requested_after_the_merge_was_scheduled_cancels_the_merge(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="APPROVED")
    _, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, DELAY_MIN)  # the poll at the delay schedules the merge
    assert history(h, mr_id, "pr.auto_merge_scheduled") and gh.merge_calls == []
    pr.review_decision = "CHANGES_REQUESTED"
    await minutes(h, 10)
    assert gh.merge_calls == [] and pr.state == "OPEN"
    m = meta(h, mr_id)
    assert "auto_merge_pending" not in m and "auto_merge_ready_since" not in m


async def test_draft_pr_never_merges(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(is_draft=True, review_decision="APPROVED")
    _, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, 15)
    assert meta(h, mr_id)["is_draft"] is True and meta(h, mr_id)["auto_merge_blockers"] == ["draft"]
    assert gh.merge_calls == []


async def test_pending_checks_restart_the_auto_merge_delay(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="APPROVED")
    _, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, DELAY_MIN - 2)
    pr.checks = "pending"  # a new push: CI runs again
    await minutes(h, 1)
    assert "auto_merge_ready_since" not in meta(h, mr_id)
    pr.checks = "success"
    await minutes(h, DELAY_MIN - 1)
    assert gh.merge_calls == []  # green again for less than the delay
    await minutes(h, 3)
    assert [c["body"]["merge_method"] for c in gh.merge_calls] == ["squash"]


async def test_squash_405_falls_back_to_merge_and_the_mr_lands(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="APPROVED", disallowed_methods={"squash"})
    bead_id, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, DELAY_MIN + 2)
    assert [c["body"]["merge_method"] for c in gh.merge_calls] == ["squash", "merge"]
    assert pr.merged_with == "merge"
    assert h.bead(mr_id)["status"] == "closed" and h.bead(bead_id)["status"] == "closed"
    assert meta(h, mr_id)["merged_with"] == "merge"


async def test_pr_merged_by_a_human_closes_the_mr_and_the_bead(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")
    bead_id, mr_id = await open_pr_mr(h, pr.url)
    pr.state = "MERGED"
    await minutes(h, 2)
    assert h.bead(mr_id)["status"] == "closed" and h.bead(bead_id)["status"] == "closed"
    assert gh.merge_calls == []


async def test_pr_closed_unmerged_fails_the_mr_and_reopens_the_bead(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")
    bead_id, mr_id = await open_pr_mr(h, pr.url)
    pr.state = "CLOSED"
    await minutes(h, 2)
    assert h.bead(mr_id)["status"] == "failed" and h.bead(bead_id)["status"] in ("open", "in_progress")


# ---------------------------------------------------------------- errors


async def test_network_timeout_changes_nothing_and_the_next_poll_retries(h: Harness, gh: FakeGitHub,
                                                                         provider: GitHubProvider) -> None:
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")
    _, mr_id = await open_pr_mr(h, pr.url)
    before = {k: v for k, v in meta(h, mr_id).items() if not k.startswith("poll_")}
    short_timeout(provider, gh)
    await minutes(h, 1)
    assert len(gh.graphql_calls) == 2
    m = meta(h, mr_id)
    assert h.bead(mr_id)["status"] == "in_progress" and m["poll_error_kind"] == "transient"
    assert {k: v for k, v in m.items() if not k.startswith("poll_")} == before
    h.clock.advance(30)
    await h.tick()
    assert len(gh.graphql_calls) == 2  # rate limited: no retry before the poll interval
    gh.delay_s = 0
    h.clock.advance(30)
    await h.tick()
    assert len(gh.graphql_calls) == 3 and "poll_error_kind" not in meta(h, mr_id)


async def test_ten_transient_failures_in_a_row_fail_the_mr(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")
    _, mr_id = await open_pr_mr(h, pr.url)
    gh.fail_status = 502
    await minutes(h, 9)
    assert h.bead(mr_id)["status"] == "in_progress" and meta(h, mr_id)["poll_failures"] == 9
    await minutes(h, 1)
    assert h.bead(mr_id)["status"] == "failed"
    assert history(h, mr_id, "status_changed")[-1]["payload"].get("reason") == "pr_transient"


async def test_unknown_pr_fails_the_mr_at_once_with_a_clear_reason(h: Harness, gh: FakeGitHub) -> None:
    gh.add_pr(number=7)
    bead_id, mr_id = await open_pr_mr(h, "https://github.com/acme/widgets/pull/999")
    assert h.bead(mr_id)["status"] == "failed" and h.bead(bead_id)["status"] != "in_review"
    [failed] = history(h, mr_id, "pr_poll_failed")
    assert failed["payload"]["kind"] == "not_found" and "acme/widgets#999 not found" in failed["payload"]["detail"]
    assert history(h, mr_id, "status_changed")[-1]["payload"].get("reason") == "pr_not_found"


async def test_rig_without_a_token_fails_the_mr_without_calling_github(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr()
    h.sync(tokens.set_rig_token, h.town_id, "rig-1", None)
    _, mr_id = await open_pr_mr(h, pr.url)
    assert h.bead(mr_id)["status"] == "failed" and gh.requests == []
    assert history(h, mr_id, "pr_poll_failed")[0]["payload"]["kind"] == "no_token"


async def test_without_a_provider_nothing_is_polled_and_awaiting_still_holds_r4(h: Harness, gh: FakeGitHub) -> None:
    h.deps.scm = None
    pr = gh.add_pr()
    _, mr_id = await open_pr_mr(h, pr.url)
    h.sync(bx.merge_metadata, h.town_id, mr_id, {"awaiting_approval": True})
    await minutes(h, 35)
    assert gh.requests == [] and h.bead(mr_id)["status"] == "in_progress"


# ---------------------------------------------------------------- refinery and telemetry


async def test_awaiting_approval_suppresses_refinery_redispatch(h: Harness, gh: FakeGitHub) -> None:
    """The polecat opened the PR; the refinery reviewing it exits without gt_done (stays hooked,
    #1342). While the PR waits for a human, it is neither redispatched nor failed."""
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")
    bead_id = h.sling()
    await h.tick()
    h.clock.advance(30)
    h.event("agent_done", h.bead(bead_id)["assignee_agent_id"], branch="gt/p/1", pr_url=pr.url)
    await h.tick()
    [mr] = h.beads(type="merge_request")
    refinery = mr["assignee_agent_id"]
    h.clock.advance(5)
    h.heartbeat(refinery)
    await h.tick()  # the MR is in_progress now: R1 polls while the refinery reviews
    assert meta(h, mr["bead_id"])["awaiting_approval"] is True
    starts = len(h.container.starts)
    h.clock.advance(60)
    h.event("agent_completed", refinery, status="completed", reason="idle timeout")
    await minutes(h, 45)
    assert h.agent(refinery)["status"] == "idle" and h.agent(refinery)["current_hook_bead_id"] == mr["bead_id"]
    assert len(h.container.starts) == starts and h.bead(mr["bead_id"])["status"] == "in_progress"
    assert gh.merge_calls == []


async def test_approval_telemetry_is_logged_once_per_transition_and_never_the_token(
        h: Harness, gh: FakeGitHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")
    _, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, 5)
    pr.review_decision = "APPROVED"
    await minutes(h, DELAY_MIN + 2)
    events = [r.getMessage() for r in caplog.records]
    assert events.count("pr.awaiting_approval_detected") == 1
    assert events.count("pr.awaiting_approval_resolved") == 1
    assert events.count("pr.merged") == 1
    detected = next(r for r in caplog.records if r.getMessage() == "pr.awaiting_approval_detected")
    assert detected.fields["bead_id"] == mr_id and detected.fields["review_decision"] == "REVIEW_REQUIRED"
    for r in caplog.records:  # raw fields, before any scrubbing
        assert DEFAULT_TOKEN not in r.getMessage() and DEFAULT_TOKEN not in repr(getattr(r, "fields", ""))


async def test_a_pr_of_another_repository_is_refused_never_polled_nor_merged(h: Harness, gh: FakeGitHub) -> None:
    """The worker merged whatever PR an agent reported: a PR of another repository (a fork, a
    prompt-injected link) would have been polled and merged with the rig's token."""
    elsewhere = gh.add_pr(owner="someone", repo="else", review_decision="APPROVED", checks="success")
    bead_id, mr_id = await open_pr_mr(h, elsewhere.url)
    await minutes(h, DELAY_MIN + 2)
    assert gh.requests == [] and gh.merge_calls == []
    assert h.bead(mr_id)["status"] != "closed" and h.bead(bead_id)["status"] != "closed"
    assert history(h, mr_id, "pr_url_refused")


def test_a_pr_belongs_to_the_rig_repo_whatever_the_remote_url_form() -> None:
    from worker_api.scm.repos import pr_of_repo

    pr = "https://github.com/Acme/Widgets/pull/7"
    for remote in ("https://github.com/acme/widgets.git", "https://github.com/acme/widgets/",
                   "git@github.com:acme/widgets.git", "ssh://git@github.com/acme/widgets"):
        assert pr_of_repo(pr, remote), remote
    for other in ("https://github.com/acme/gadgets.git", "https://gitlab.com/acme/widgets.git", "not a url [x"):
        assert not pr_of_repo(pr, other), other
    assert not pr_of_repo("http://github.com/acme/widgets/pull/7", "https://github.com/acme/widgets.git")


# ---------------------------------------------------------------- the PR feedback loop


def fixups(h: Harness, mr_id: str) -> list[dict]:
    return [b for b in h.beads(type="issue") if b["metadata"].get("mr_bead_id") == mr_id]


async def test_a_red_check_becomes_one_fix_up_bead_on_the_pr_branch_that_blocks_the_mr(h: Harness,
                                                                                      gh: FakeGitHub) -> None:
    """Nothing emitted pr_feedback_detected: a red CI just failed the MR after the review timeout."""
    pr = gh.add_pr(review_decision="APPROVED", checks="failure")
    _, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, 3)  # several polls of the same red head commit
    [fix] = fixups(h, mr_id)
    assert "gt:pr-feedback" in fix["labels"] and "Failing checks" in fix["body"]
    assert h.sync(bx.dependencies, h.town_id, mr_id, "blocks") == [fix["bead_id"]]
    assert any(s.get("branch") == "gt/polecat/1" and fix["title"][:20] in s.get("prompt", "") for s in h.container.starts)
    assert h.bead(mr_id)["status"] == "in_progress" and gh.merge_calls == []
    pr.head_sha = "b" * 40  # the fix was pushed, and is still red: new feedback, into the same open bead
    await minutes(h, 2)
    assert len(fixups(h, mr_id)) == 1 and len(history(h, mr_id, "pr.feedback_detected")) == 2


async def test_a_conflicting_commit_on_main_is_a_conflict_bead_not_a_failed_mr(h: Harness, gh: FakeGitHub) -> None:
    pr = gh.add_pr(review_decision="APPROVED", mergeable="CONFLICTING")
    _, mr_id = await open_pr_mr(h, pr.url)
    await minutes(h, 2)
    [fix] = fixups(h, mr_id)
    assert "gt:pr-conflict" in fix["labels"] and h.bead(mr_id)["status"] == "in_progress"
