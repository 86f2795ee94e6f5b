"""The ``merge_branch`` / ``open_pr`` side effects: land a merge request the refinery approved.

Why the worker and not the refinery: an agent's "I merged it" proves nothing, and a refinery that
merges by hand can merge something else than what was reviewed. So the refinery's ``gt_done``
only approves (``approved_at``), and the worker lands exactly the MR's branch:

* **direct**: merged into the target through git (``gitmerge.merge_branch``); merged or already
  merged closes the MR (and so its source bead); a conflict sends the MR back with a rework bead on
  its branch that blocks it; a branch that is not on the remote fails the MR at once.
* **pr**: the PR is opened through the SCM adapter and its URL recorded; from there the poll,
  awaiting-approval and auto-merge path of ``pr_sync`` takes it.

Network outside transactions: read the context, call out, then one short write. A failure that a
retry may fix is counted (``land_failures``) and retried by R8 after ``LAND_RETRY_MS``; after
``MAX_FAILURES`` in a row the MR fails with the last error.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from gastown.core.gitops import GitError
from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import lifecycle as lc
from worker_api.db import Conn, Database
from worker_api.scm import tokens
from worker_api.scm.base import ScmError, ScmProvider
from worker_api.scm.gitmerge import BranchMerge, Merger, merge_branch
from worker_api.scm.pr_sync import live_mr

log = get_logger("worker_api.scm")

LAND_TIMEOUT_S = 300.0
MAX_FAILURES = 5  # failed attempts in a row before the MR fails


@dataclass(frozen=True)
class _Ctx:
    git_url: str
    token: str | None
    branch: str
    target: str
    title: str
    body: str


def _live(conn: Conn, town_id: str, bead_id: str) -> dict[str, Any] | None:
    """The MR while it is in progress and approved: what every write of a landing result needs."""
    mr = live_mr(conn, town_id, bead_id)
    return mr if mr is not None and mr["metadata"].get("approved_at") else None


def _context_tx(conn: Conn, town_id: str, bead_id: str) -> _Ctx | None:
    mr = _live(conn, town_id, bead_id)
    if mr is None:
        return None
    review = bx.get_review(conn, town_id, bead_id) or {}
    rig = bx.get_rig(conn, town_id, mr["rig_id"]) if mr["rig_id"] else None
    if rig is None or not review.get("branch"):
        return _Ctx("", None, "", "", "", "")
    return _Ctx(rig["git_url"], tokens.get_rig_token(conn, town_id, rig["rig_id"]), review["branch"],
                review.get("target_branch") or rig.get("default_branch") or "main",
                mr["title"].removeprefix("Review: "), mr.get("body") or "")


def record_merge_tx(conn: Conn, town_id: str, bead_id: str, res: BranchMerge, now: int) -> None:
    mr = _live(conn, town_id, bead_id)
    if mr is None:
        return
    log.info("mr.land", town=town_id, bead_id=bead_id, outcome=res.outcome, sha=res.sha, detail=res.detail)
    if res.outcome in ("merged", "already_merged"):
        bx.update_review(conn, town_id, bead_id, merge_commit=res.sha)
        bx.record(conn, town_id, bead_id, "merged", now, outcome=res.outcome, sha=res.sha)
        lc.transition_bead(conn, town_id, bead_id, "closed", now, reason="merged", actor="worker")
    elif res.outcome == "conflict":
        bx.record(conn, town_id, bead_id, "merge_conflict", now, conflicts=list(res.conflicts))
        text = (f"Merging your branch into its target conflicts in: {', '.join(res.conflicts) or 'unknown files'}."
                " Merge the target branch into your branch, resolve the conflicts, commit, push, then gt_done.")
        lc.send_back_for_rework(conn, town_id, mr, text, now, actor="worker", reason="merge_conflict")
    else:
        bx.record(conn, town_id, bead_id, "merge_failed", now, detail=res.detail)
        lc.transition_bead(conn, town_id, bead_id, "failed", now, reason="branch_missing", actor="worker")


def record_pr_tx(conn: Conn, town_id: str, bead_id: str, pr_url: str, now: int) -> None:
    if _live(conn, town_id, bead_id) is None:
        return
    bx.update_review(conn, town_id, bead_id, pr_url=pr_url, last_poll_at=None)
    bx.merge_metadata(conn, town_id, bead_id, {"pr_url": pr_url, "land_failures": None})
    bx.record(conn, town_id, bead_id, "pr_created", now, "worker", pr_url=pr_url)
    log.info("mr.pr_opened", town=town_id, bead_id=bead_id, pr_url=pr_url)


def record_failure_tx(conn: Conn, town_id: str, bead_id: str, kind: str, detail: str, now: int,
                      permanent: bool) -> None:
    mr = _live(conn, town_id, bead_id)
    if mr is None:
        return
    failures = int(mr["metadata"].get("land_failures") or 0) + 1
    bx.merge_metadata(conn, town_id, bead_id, {"land_failures": failures, "land_error": detail[:300]})
    log.warning("mr.land_failed", town=town_id, bead_id=bead_id, kind=kind, detail=detail[:300], failures=failures)
    if permanent or failures >= MAX_FAILURES:
        bx.record(conn, town_id, bead_id, "land_failed", now, kind=kind, detail=detail[:300], failures=failures)
        lc.transition_bead(conn, town_id, bead_id, "failed", now, reason=f"land_{kind}", actor="worker")


async def run_land_effect(db: Database, town_id: str, scm: ScmProvider | None, kind: str, bead_id: str,
                          clock_ms: Callable[[], int], merger: Merger = merge_branch) -> None:
    """Run one ``merge_branch`` or ``open_pr``; failures are recorded, never raised."""
    ctx = await db.run(_context_tx, town_id, bead_id, write=False)
    if ctx is None:
        return
    try:
        if not ctx.git_url:
            raise ScmError("not_found", "the merge request has no rig or no branch")
        if kind == "merge_branch":
            message = f"Merge {ctx.branch} into {ctx.target}\n\n{ctx.title}\n\nMerge request {bead_id}."
            res = await asyncio.wait_for(asyncio.to_thread(
                merger, ctx.git_url, ctx.token, branch=ctx.branch, target=ctx.target, message=message),
                LAND_TIMEOUT_S)
            await db.run(record_merge_tx, town_id, bead_id, res, clock_ms())
            return
        if scm is None:
            raise ScmError("no_provider", "this worker has no SCM provider: PRs cannot be opened")
        if not ctx.token:
            raise ScmError("no_token", "no token configured for this rig")
        pr_url = await asyncio.wait_for(scm.open_pr(ctx.git_url, ctx.token, head=ctx.branch, base=ctx.target,
                                                    title=ctx.title, body=ctx.body), LAND_TIMEOUT_S)
        await db.run(record_pr_tx, town_id, bead_id, pr_url, clock_ms())
    except asyncio.TimeoutError:
        await db.run(record_failure_tx, town_id, bead_id, "timeout", f"{kind} timed out", clock_ms(), False)
    except GitError as e:
        await db.run(record_failure_tx, town_id, bead_id, "git", str(e), clock_ms(), False)
    except ScmError as e:
        await db.run(record_failure_tx, town_id, bead_id, e.kind, e.detail or str(e), clock_ms(),
                     e.permanent or e.kind == "no_provider")
