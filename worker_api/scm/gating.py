"""When a PR waits for a human, and when it may be merged without one (seed PR #3138).

Pure functions of a ``PrStatus`` so every gate is tested without a network. The rules:

* **awaiting approval**: open, not a draft, and GitHub says a review is required
  (``reviewDecision = REVIEW_REQUIRED``), or the merge is ``BLOCKED`` while the checks are green and
  nobody requested changes (a required review GitHub does not report as a decision, e.g. a code
  owner). ``BLOCKED`` with checks still running is a CI wait, not a human one: counting it would
  exempt a PR with broken CI from the orphan timeout for ever.
* **mergeable by us**: open, not a draft, not awaiting approval, no changes requested, every check
  green (or none reported), no conflict, no unresolved review thread, and a merge state GitHub
  has finished computing. Anything else blocks the auto-merge and restarts its delay.
"""
from __future__ import annotations

from worker_api.scm.base import PrStatus

# Merge states that mean "GitHub would merge this now" (HAS_HOOKS: clean, with pre-receive hooks).
_MERGEABLE_STATES = frozenset({"CLEAN", "HAS_HOOKS", "UNSTABLE"})


def awaiting_approval(s: PrStatus) -> bool:
    if s.state != "open" or s.is_draft or s.review_decision == "CHANGES_REQUESTED":
        return False
    if s.review_decision == "REVIEW_REQUIRED":
        return True
    return s.merge_state_status == "BLOCKED" and s.checks in ("success", "none")


def merge_blockers(s: PrStatus) -> list[str]:
    """Why we must not merge now; empty means green."""
    if s.state != "open":
        return [f"pr_{s.state}"]
    out: list[str] = []
    if s.is_draft or s.merge_state_status == "DRAFT":
        out.append("draft")
    if awaiting_approval(s):
        out.append("awaiting_approval")
    if s.review_decision == "CHANGES_REQUESTED":
        out.append("changes_requested")
    if s.checks == "pending":
        out.append("checks_pending")
    elif s.checks == "failure":
        out.append("checks_failed")
    if s.mergeable == "CONFLICTING" or s.merge_state_status == "DIRTY":
        out.append("conflicts")
    if s.unresolved_threads:
        out.append("unresolved_threads")
    if not out and s.merge_state_status not in _MERGEABLE_STATES:
        out.append(f"merge_state_{str(s.merge_state_status or 'unknown').lower()}")
    return out


def metadata_for(s: PrStatus) -> dict[str, object]:
    """The PR facts written into the merge request's metadata on every successful poll."""
    return {
        "pr_state": s.state,
        "awaiting_approval": awaiting_approval(s),
        "review_decision": s.review_decision,
        "merge_state_status": s.merge_state_status,
        "mergeable": s.mergeable,
        "is_draft": s.is_draft,
        "checks_state": s.checks,
        "failing_checks": list(s.failing_checks) or None,
        "unresolved_threads": s.unresolved_threads,
        "head_sha": s.head_sha,
    }


def feedback_for(s: PrStatus) -> list[tuple[str, str, str]]:
    """What an open PR asks its author to fix, as (event type, kind, text): a merge conflict, failing
    checks, unresolved review threads or requested changes. Each is tied to the PR's head commit by
    :func:`feedback_signature`, so one poll after another does not repeat it; a new push that is
    still red is new feedback."""
    if s.state != "open":
        return []
    out: list[tuple[str, str, str]] = []
    if s.mergeable == "CONFLICTING" or s.merge_state_status == "DIRTY":
        out.append(("pr_conflict_detected", "conflict",
                    "The PR conflicts with its base branch: merge or rebase the base into the branch, resolve, push."))
    if s.checks == "failure":
        names = ", ".join(s.failing_checks) or "one or more checks"
        out.append(("pr_feedback_detected", "checks", f"Failing checks on the PR: {names}. Fix them and push."))
    if s.unresolved_threads or s.review_decision == "CHANGES_REQUESTED":
        out.append(("pr_feedback_detected", "review",
                    f"Review feedback on the PR ({s.unresolved_threads} unresolved thread(s), decision "
                    f"{s.review_decision or 'none'}): address it and push."))
    return out


def feedback_signature(s: PrStatus, kind: str) -> str:
    return f"{kind}:{s.head_sha or '-'}:{s.unresolved_threads if kind == 'review' else ''}"
