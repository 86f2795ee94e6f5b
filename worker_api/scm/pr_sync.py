"""The ``poll_pr`` / ``merge_pr`` side effects: ask the code host, then record what it said.

Network outside transactions (docs/original-system.md §5.7): read the MR's context, call the provider, then one
short write. What a poll records on the MR's metadata (``gating.metadata_for``) is what the review
rules read on the next tick: ``awaiting_approval`` exempts the MR from the orphan timeout (R4) and
from refinery redispatch (R6), and keeps a failed landing MR from being respawned.

Auto-merge: a green poll sets ``auto_merge_ready_since``; once green for the rig's delay, a
``pr_auto_merge`` event marks the MR ``auto_merge_pending`` and R1 plans a ``merge_pr``. The merge
effect polls again and merges only if the PR is still green and still past the delay: a review
requested between the poll and the merge must win. Any non-green poll clears both markers.

Errors: a kind that can never succeed (no token, not a PR URL, unknown PR) fails the MR at once
with that kind as the reason; others leave it alone and are retried at the next poll, until
``ScmError.limit()`` of the same kind in a row. Telemetry (``pr.awaiting_approval_detected`` /
``_resolved``) is a log line plus a bead event on the MR, so it shows in the bead's history.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import events as ev
from worker_api import lifecycle as lc
from worker_api.db import Conn, Database
from worker_api.scm import gating, tokens
from worker_api.scm.base import MergeResult, PrStatus, ScmError, ScmProvider

log = get_logger("worker_api.scm")

CALL_TIMEOUT_S = 60.0  # a provider's own per-request timeouts should fire first; this bounds a merge's fallbacks
_AUTO_MERGE_KEYS = {"auto_merge_ready_since": None, "auto_merge_pending": None}


@dataclass(frozen=True)
class _Ctx:
    token: str | None
    delay_ms: int


def telemetry(conn: Conn, town_id: str, bead_id: str, name: str, now: int, **fields: Any) -> None:
    log.info(name, town=town_id, bead_id=bead_id, **fields)
    bx.record(conn, town_id, bead_id, name, now, **fields)


def live_mr(conn: Conn, town_id: str, bead_id: str) -> dict[str, Any] | None:
    bead = bx.get_bead(conn, town_id, bead_id)
    ok = bead is not None and bead["type"] == "merge_request" and bead["status"] == "in_progress"
    return bead if ok else None


def _pending_event(conn: Conn, town_id: str, bead_id: str, event_type: str) -> bool:
    return conn.execute("SELECT 1 FROM town_events WHERE town_id = ? AND bead_id = ? AND event_type = ?"
                        " AND processed_at IS NULL", (town_id, bead_id, event_type)).fetchone() is not None


def _context_tx(conn: Conn, town_id: str, bead_id: str) -> _Ctx | None:
    bead = live_mr(conn, town_id, bead_id)
    if bead is None:
        return None
    rig = bx.get_rig(conn, town_id, bead["rig_id"]) if bead["rig_id"] else None
    return _Ctx(tokens.get_rig_token(conn, town_id, bead["rig_id"]), tokens.auto_merge_delay_ms(rig))


def _pr_ended(conn: Conn, town_id: str, bead_id: str, state: str, now: int) -> None:
    bx.merge_metadata(conn, town_id, bead_id, {"pr_state": state, **_AUTO_MERGE_KEYS})
    if not _pending_event(conn, town_id, bead_id, "pr_status_changed"):
        ev.insert_event(conn, town_id, "pr_status_changed", bead_id=bead_id, payload={"state": state}, now_ms=now)


def _approval_transition(conn: Conn, town_id: str, bead_id: str, meta: dict[str, Any],
                         patch: dict[str, Any], s: PrStatus, now: int) -> None:
    was, is_now = bool(meta.get("awaiting_approval")), bool(patch["awaiting_approval"])
    if is_now and not was:
        patch.update(awaiting_approval_observed_at=now, awaiting_approval_resolved_at=None)
        telemetry(conn, town_id, bead_id, "pr.awaiting_approval_detected", now, review_decision=s.review_decision,
                  merge_state_status=s.merge_state_status)
    elif was and not is_now:
        since = meta.get("awaiting_approval_observed_at")
        patch.update(awaiting_approval_resolved_at=now, awaiting_approval_observed_at=None)
        telemetry(conn, town_id, bead_id, "pr.awaiting_approval_resolved", now, review_decision=s.review_decision,
                  merge_state_status=s.merge_state_status, waited_ms=now - int(since) if since else None)


def _emit_feedback(conn: Conn, town_id: str, bead_id: str, meta: dict[str, Any],
                   patch: dict[str, Any], s: PrStatus, now: int) -> None:
    """The PR feedback loop: a poll that saw the PR open (just now, so not a PR closed or merged
    meanwhile) and red for a reason its author must fix emits ``pr_feedback_detected`` /
    ``pr_conflict_detected`` once per head commit; the reconciler turns it into a fix-up bead that
    blocks the MR and goes to a polecat on the PR's branch."""
    seen = list(meta.get("feedback_seen") or [])
    for event_type, kind, text in gating.feedback_for(s):
        signature = gating.feedback_signature(s, kind)
        if signature in seen or _pending_event(conn, town_id, bead_id, event_type):
            continue
        seen.append(signature)
        ev.insert_event(conn, town_id, event_type, bead_id=bead_id, payload={"kind": kind, "feedback": text},
                        now_ms=now)
        telemetry(conn, town_id, bead_id, "pr.feedback_detected", now, kind=kind, head_sha=s.head_sha)
    if len(seen) != len(meta.get("feedback_seen") or []):
        patch["feedback_seen"] = seen[-20:]


def record_status_tx(conn: Conn, town_id: str, bead_id: str, s: PrStatus, now: int, delay_ms: int,
                     merging: bool = False) -> bool:
    """Write one poll's facts; True when a ``merge_pr`` may go ahead now."""
    bead = live_mr(conn, town_id, bead_id)
    if bead is None:
        return False
    if s.state in ("merged", "closed"):
        _pr_ended(conn, town_id, bead_id, s.state, now)
        return False
    meta = bead["metadata"]
    patch: dict[str, Any] = {**gating.metadata_for(s), "poll_failures": None, "poll_error_kind": None,
                             "poll_error": None}
    _approval_transition(conn, town_id, bead_id, meta, patch, s, now)
    _emit_feedback(conn, town_id, bead_id, meta, patch, s, now)
    blockers = gating.merge_blockers(s)
    if blockers:
        patch.update(_AUTO_MERGE_KEYS, auto_merge_blockers=blockers)
        if meta.get("auto_merge_ready_since") or meta.get("auto_merge_pending"):
            log.info("pr.auto_merge_cleared", town=town_id, bead_id=bead_id, blockers=blockers)
        if merging:
            log.info("pr.merge_skipped", town=town_id, bead_id=bead_id, blockers=blockers)
        bx.merge_metadata(conn, town_id, bead_id, patch)
        return False
    since = int(meta.get("auto_merge_ready_since") or now)
    patch.update(auto_merge_blockers=None, auto_merge_ready_since=since)
    bx.merge_metadata(conn, town_id, bead_id, patch)
    due = now - since >= delay_ms
    if merging:
        if not due:
            log.info("pr.merge_skipped", town=town_id, bead_id=bead_id, blockers=["auto_merge_delay"])
        return due
    if due and not meta.get("auto_merge_pending") and not _pending_event(conn, town_id, bead_id, "pr_auto_merge"):
        ev.insert_event(conn, town_id, "pr_auto_merge", bead_id=bead_id, payload={"green_since": since}, now_ms=now)
        telemetry(conn, town_id, bead_id, "pr.auto_merge_scheduled", now, green_for_ms=now - since)
    return False


def record_error_tx(conn: Conn, town_id: str, bead_id: str, err: ScmError, now: int, effect: str) -> None:
    bead = live_mr(conn, town_id, bead_id)
    if bead is None:
        return
    meta = bead["metadata"]
    failures = int(meta.get("poll_failures") or 0) + 1 if meta.get("poll_error_kind") == err.kind else 1
    bx.merge_metadata(conn, town_id, bead_id, {"poll_error_kind": err.kind, "poll_error": err.detail,
                                               "poll_failures": failures})
    log.warning("pr.poll_failed", town=town_id, bead_id=bead_id, effect=effect, kind=err.kind, status=err.status,
                detail=err.detail, failures=failures, limit=err.limit())
    if failures >= err.limit():
        bx.record(conn, town_id, bead_id, "pr_poll_failed", now, kind=err.kind, detail=err.detail, failures=failures)
        lc.transition_bead(conn, town_id, bead_id, "failed", now, reason=f"pr_{err.kind}", from_status="in_progress")


def record_merge_tx(conn: Conn, town_id: str, bead_id: str, res: MergeResult, now: int) -> None:
    if live_mr(conn, town_id, bead_id) is None:
        return
    if res.merged:
        bx.update_review(conn, town_id, bead_id, merge_commit=res.sha)
        bx.merge_metadata(conn, town_id, bead_id, {"merged_with": res.method})
        telemetry(conn, town_id, bead_id, "pr.merged", now, method=res.method, sha=res.sha, tried=list(res.tried))
        _pr_ended(conn, town_id, bead_id, "merged", now)
    else:
        telemetry(conn, town_id, bead_id, "pr.merge_refused", now, detail=res.detail, tried=list(res.tried))


async def run_pr_effect(db: Database, town_id: str, scm: ScmProvider, kind: str, bead_id: str, pr_url: str,
                        clock_ms: Callable[[], int]) -> None:
    """Run one ``poll_pr`` or ``merge_pr``; provider errors are recorded, never raised."""
    ctx = await db.run(_context_tx, town_id, bead_id, write=False)
    if ctx is None:
        return
    merging = kind == "merge_pr"
    try:
        if not ctx.token:
            raise ScmError("no_token", "no GitHub token configured for this rig")
        status = await asyncio.wait_for(scm.pr_status(pr_url, ctx.token), CALL_TIMEOUT_S)
        go = await db.run(record_status_tx, town_id, bead_id, status, clock_ms(), ctx.delay_ms, merging)
        if not go:
            return
        result = await asyncio.wait_for(scm.merge(pr_url, ctx.token, head_sha=status.head_sha), CALL_TIMEOUT_S)
    except asyncio.TimeoutError:
        await db.run(record_error_tx, town_id, bead_id, ScmError("transient", f"{kind} timed out"), clock_ms(), kind)
        return
    except ScmError as err:
        await db.run(record_error_tx, town_id, bead_id, err, clock_ms(), kind)
        return
    await db.run(record_merge_tx, town_id, bead_id, result, clock_ms())
