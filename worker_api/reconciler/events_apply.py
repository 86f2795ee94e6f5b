"""Phase 0 of a tick: drain ``town_events`` oldest first through ``apply_event``.

Routes only record facts; this is where a fact changes state. Rules that keep the queue healthy:
* an event about a bead or agent that no longer exists is **terminal**: marked processed with a
  warning, never retried (docs/original-system.md bug 29: a ``bead_cancelled`` for a deleted bead errored on
  every tick for ever);
* any other error rolls back that event alone (a SAVEPOINT) and is retried on the next ticks, up to
  ``EVENT_MAX_ATTEMPTS``, then it is marked processed with its error: no event is stuck;
* a completion recorded before, or within ``COMPLETION_RACE_MS`` after, the agent's latest dispatch
  may belong to the previous run (the container posts it while we dispatch) and must not clobber
  the new one; it is ignored, and if the agent really ended the heartbeat rules settle it.
"""
from __future__ import annotations

from typing import Any, Callable

from gastown.contract.agents import DEAD_STATUSES
from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import events as ev
from worker_api import lifecycle as lc
from worker_api import settings, store
from worker_api.reconciler.apply import ApplyContext
from worker_api.scm.repos import pr_of_repo
from worker_api.db import Conn
from worker_api.reconciler.constants import (
    COMPLETION_RACE_MS,
    EVENT_MAX_ATTEMPTS,
    EVENTS_PER_TICK,
    HEARTBEAT_STALE_MS,
    NOT_FOUND_GRACE_MS,
)

log = get_logger("worker_api.reconciler")

DIRECT_CLOSE_LABELS = frozenset({"gt:rework", "gt:pr-fixup", "gt:pr-conflict", "gt:pr-feedback", "gt:triage"})


class EventTerminal(Exception):
    """The event cannot ever apply (its bead/agent is gone): mark it processed, do not retry."""


def drain_events(conn: Conn, ctx: ApplyContext) -> tuple[int, int]:
    """Apply pending events; return (applied, failed_or_terminal)."""
    applied = bad = 0
    for event in ev.list_events(conn, ctx.town_id, limit=EVENTS_PER_TICK):
        conn.execute("SAVEPOINT event")
        try:
            apply_event(conn, ctx, event)
        except EventTerminal as e:
            conn.execute("ROLLBACK TO event")
            log.warning("event.terminal", town=ctx.town_id, event_id=event["id"], type=event["event_type"], error=str(e))
            _finish(conn, ctx, event, str(e))
            bad += 1
        except Exception as e:  # noqa: BLE001 - one bad event must not stop the town
            conn.execute("ROLLBACK TO event")
            attempts = event.get("attempts", 0) + 1
            log.error("event.failed", town=ctx.town_id, event_id=event["id"], type=event["event_type"],
                      attempts=attempts, error=repr(e))
            conn.execute("UPDATE town_events SET attempts = ?, last_error = ? WHERE id = ?",
                         (attempts, repr(e)[:500], event["id"]))
            if attempts >= EVENT_MAX_ATTEMPTS:
                ev.mark_event_processed(conn, ctx.town_id, event["id"], ctx.now)
            bad += 1
        else:
            ev.mark_event_processed(conn, ctx.town_id, event["id"], ctx.now)
            applied += 1
        conn.execute("RELEASE event")
    return applied, bad


def _finish(conn: Conn, ctx: ApplyContext, event: dict[str, Any], error: str) -> None:
    conn.execute("UPDATE town_events SET last_error = ? WHERE id = ?", (error[:500], event["id"]))
    ev.mark_event_processed(conn, ctx.town_id, event["id"], ctx.now)


def apply_event(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    handler = _HANDLERS.get(event["event_type"])
    if handler is not None:
        handler(conn, ctx, event)


def _agent(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> dict[str, Any]:
    agent = store.get_agent(conn, ctx.town_id, event.get("agent_id") or "")
    if agent is None:
        raise EventTerminal(f"agent {event.get('agent_id')} not found")
    return agent


def _bead(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> dict[str, Any]:
    bead = bx.get_bead(conn, ctx.town_id, event.get("bead_id") or "")
    if bead is None:
        raise EventTerminal(f"bead {event.get('bead_id')} not found")
    return bead


def _release(conn: Conn, ctx: ApplyContext, agent: dict[str, Any], *, reset_attempts: bool) -> None:
    lc.unhook_agent(conn, ctx.town_id, agent["agent_id"], ctx.now)
    lc.set_agent_idle(conn, ctx.town_id, agent["agent_id"], ctx.now)
    if reset_attempts:
        conn.execute("UPDATE agents SET dispatch_attempts = 0 WHERE town_id = ? AND agent_id = ?",
                     (ctx.town_id, agent["agent_id"]))


def _checked_pr_url(conn: Conn, ctx: ApplyContext, agent: dict, bead: dict | None,
                    pr_url: str | None) -> str | None:
    """The reported ``pr_url`` when it is a PR of the bead's rig's repository; otherwise None, logged
    and recorded: the worker never polls or merges a PR of another repository."""
    if not pr_url:
        return None
    rig = bx.get_rig(conn, ctx.town_id, bead["rig_id"]) if bead and bead.get("rig_id") else None
    if rig is not None and pr_of_repo(pr_url, rig["git_url"]):
        return pr_url
    log.warning("pr_url.refused", town=ctx.town_id, agent_id=agent["agent_id"], pr_url=pr_url[:300],
                rig_id=rig["rig_id"] if rig else None)
    if bead is not None:
        bx.record(conn, ctx.town_id, bead["bead_id"], "pr_url_refused", ctx.now, agent["agent_id"], pr_url=pr_url[:300])
    return None


def on_agent_done(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    agent = _agent(conn, ctx, event)
    t, now, p = ctx.town_id, ctx.now, dict(event["payload"])
    if agent["role"] == "mayor":
        return
    bead = bx.get_bead(conn, t, agent["current_hook_bead_id"]) if agent["current_hook_bead_id"] else None
    if p.get("pr_url"):
        p["pr_url"] = _checked_pr_url(conn, ctx, agent, bead, p["pr_url"])
    if agent["role"] == "refinery":
        if bead is not None and bead["type"] == "merge_request" and bead["status"] == "in_progress":
            if p.get("pr_url"):
                bx.update_review(conn, t, bead["bead_id"], pr_url=p["pr_url"])
                bx.merge_metadata(conn, t, bead["bead_id"], {"pr_url": p["pr_url"]})
                bx.record(conn, t, bead["bead_id"], "pr_created", now, agent["agent_id"], pr_url=p["pr_url"])
            elif event["payload"].get("pr_url"):
                pass  # a PR of another repository: neither merged nor a PR to watch; R2 reopens the MR
            else:
                # An approval, not a merge: the worker lands exactly this branch itself (R8, scm/land.py).
                rig = bx.get_rig(conn, t, bead["rig_id"]) if bead["rig_id"] else None
                lc.approve_mr(conn, t, bead["bead_id"], now, by=agent["agent_id"],
                              strategy=settings.effective_tx(conn, t, rig).merge_strategy)
        elif not p.get("pr_url"):
            # An unhooked refinery cannot prove it merged what it was asked to (docs/original-system.md bug 23).
            lc.create_escalation(conn, t, title=f"Refinery {agent['name']} reported done without an MR",
                                 body=f"gt_done on branch {p.get('branch')} while not hooked to an MR; nothing merged.",
                                 now=now, agent_id=agent["agent_id"], severity="high", ids=ctx.ids)
        _release(conn, ctx, agent, reset_attempts=False)
        return
    if bead is None or bead["status"] in bx.TERMINAL:
        # A duplicate or late gt_done (the bead was reset, cancelled or deleted): nothing to submit.
        log.warning("done.without_live_hook", town=t, agent_id=agent["agent_id"], hook=agent["current_hook_bead_id"])
        _release(conn, ctx, agent, reset_attempts=True)
        return
    if any(label in DIRECT_CLOSE_LABELS for label in bead["labels"]) or bead["type"] != "issue":
        lc.transition_bead(conn, t, bead["bead_id"], "closed", now, reason="done", actor=agent["agent_id"])
    else:
        _create_mr(conn, ctx, agent, bead, p)
    _release(conn, ctx, agent, reset_attempts=True)


def _create_mr(conn: Conn, ctx: ApplyContext, agent: dict, bead: dict, p: dict[str, Any]) -> None:
    t, now = ctx.town_id, ctx.now
    rig = bx.get_rig(conn, t, bead["rig_id"]) if bead["rig_id"] else None
    target = (rig or {}).get("default_branch") or "main"
    convoy_id = bead["metadata"].get("convoy_id")
    convoy = bx.get_convoy_meta(conn, t, convoy_id) if convoy_id else None
    if convoy and convoy["merge_mode"] == "review-then-land" and convoy["feature_branch"]:
        target = convoy["feature_branch"]
    meta = {"source_bead_id": bead["bead_id"], "source_agent_id": agent["agent_id"], "branch": p.get("branch"),
            "pr_url": p.get("pr_url"), "summary": (p.get("summary") or "")[:4000], "convoy_id": convoy_id}
    mr = bx.create_bead(conn, t, type="merge_request", title=f"Review: {bead['title']}"[:200], now_ms=now,
                        body=p.get("summary") or "", rig_id=bead["rig_id"], labels=["gt:merge-request"],
                        metadata={k: v for k, v in meta.items() if v is not None}, created_by=agent["agent_id"],
                        ids=ctx.ids)
    bx.put_review(conn, t, mr["bead_id"], branch=p.get("branch"), target_branch=target, pr_url=p.get("pr_url"))
    bx.add_dependency(conn, t, mr["bead_id"], bead["bead_id"], "tracks")
    eff = settings.effective_tx(conn, t, rig)
    if not eff.code_review and not (convoy and convoy["merge_mode"] == "review-and-merge"):
        fast_track(conn, t, mr["bead_id"], now, has_pr=bool(p.get("pr_url")), strategy=eff.merge_strategy)
    bx.merge_metadata(conn, t, bead["bead_id"], {"branch": p.get("branch")})
    bx.set_status(conn, t, bead["bead_id"], "in_review", now, reason="review_submitted", actor=agent["agent_id"])
    bx.record(conn, t, bead["bead_id"], "review_submitted", now, agent["agent_id"], mr_bead_id=mr["bead_id"])


def fast_track(conn: Conn, t: str, mr_id: str, now: int, *, has_pr: bool, strategy: str) -> None:
    """Code review is off for the rig: no refinery. An MR with a PR goes straight to watching the PR
    (R1); one without is approved as it stands and lands in the rig's merge order (R5 → R8)."""
    bx.merge_metadata(conn, t, mr_id, {"fast_tracked": True})
    if has_pr:
        bx.set_status(conn, t, mr_id, "in_progress", now, reason="fast_track", actor="code_review_off")
    else:
        lc.approve_mr(conn, t, mr_id, now, by="code_review_off", strategy=strategy)


def on_agent_completed(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    agent = _agent(conn, ctx, event)
    t, now, p = ctx.town_id, ctx.now, event["payload"]
    since = agent.get("working_since")
    if agent["role"] == "mayor" or (since is not None and event["created_at"] < since + COMPLETION_RACE_MS):
        if agent["role"] != "mayor":
            log.info("completion.stale_ignored", town=t, agent_id=agent["agent_id"], event_id=event["id"])
        return
    bx.record(conn, t, agent["current_hook_bead_id"] or "-", "agent_exited", now, agent["agent_id"],
              status=p.get("status"), reason=p.get("reason"))
    if agent["role"] == "refinery":
        # Never unhook: a late gt_done may still be in flight; R6 redispatches within the cap (#1342).
        if agent["status"] in ("working", "stalled"):
            lc.set_agent_idle(conn, t, agent["agent_id"], now)
        return
    bead = bx.get_bead(conn, t, agent["current_hook_bead_id"]) if agent["current_hook_bead_id"] else None
    if bead is not None and bead["status"] == "in_progress":
        reason = str(p.get("reason") or "")
        if "evict" in reason.lower():
            last = agent.get("last_activity_at")
            if last is None or now - last > HEARTBEAT_STALE_MS:
                lc.transition_bead(conn, t, bead["bead_id"], "open", now, reason="container_eviction",
                                   clear_assignee=True)
        elif p.get("status") == "failed":
            lc.transition_bead(conn, t, bead["bead_id"], "failed", now, reason=f"agent failed: {reason}"[:200],
                               actor=agent["agent_id"])
        # "completed" without gt_done: Rule 3 gives the bead back once it is stale.
    _release(conn, ctx, agent, reset_attempts=True)


def on_container_status(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    agent = _agent(conn, ctx, event)
    t, now, status = ctx.town_id, ctx.now, event["payload"].get("status")
    if status not in DEAD_STATUSES or agent["status"] not in ("working", "stalled"):
        return
    last = agent.get("last_activity_at")
    if status == "not_found" and last is not None and now - last < NOT_FOUND_GRACE_MS:
        return  # cold start: the container may not have registered the agent yet (#1358)
    lc.set_agent_idle(conn, t, agent["agent_id"], now)
    if agent["role"] == "refinery" and agent["current_hook_bead_id"]:
        mr = bx.get_bead(conn, t, agent["current_hook_bead_id"])
        if mr is None or mr["status"] in bx.TERMINAL:
            lc.unhook_agent(conn, t, agent["agent_id"], now, clear_checkpoint=True)


def on_eviction_context(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    """Remember the pushed WIP branch on the hooked bead, so the next dispatch continues it."""
    agent = _agent(conn, ctx, event)
    hook, p = agent["current_hook_bead_id"], event["payload"]
    if not hook or bx.get_bead(conn, ctx.town_id, hook) is None:
        return
    bx.merge_metadata(conn, ctx.town_id, hook, {"branch": p.get("branch")})
    bx.record(conn, ctx.town_id, hook, "eviction_context", ctx.now, agent["agent_id"], branch=p.get("branch"))


def on_bead_cancelled(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    bead = _bead(conn, ctx, event)
    to = event["payload"].get("status") if event["payload"].get("status") in bx.TERMINAL else "failed"
    lc.transition_bead(conn, ctx.town_id, bead["bead_id"], to, ctx.now, reason="cancelled", clear_assignee=True)


def on_convoy_started(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    bead = _bead(conn, ctx, event)
    if bead["type"] == "convoy" and bead["status"] not in bx.TERMINAL:
        bx.update_convoy_meta(conn, ctx.town_id, bead["bead_id"], staged=0)
        if bead["status"] == "open":
            bx.set_status(conn, ctx.town_id, bead["bead_id"], "in_progress", ctx.now, reason="started")


def on_pr_status(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    bead = _bead(conn, ctx, event)
    state = event["payload"].get("state")
    to = {"merged": "closed", "closed": "failed"}.get(state or "")
    if to and bead["type"] == "merge_request" and bead["status"] not in bx.TERMINAL:
        lc.transition_bead(conn, ctx.town_id, bead["bead_id"], to, ctx.now, reason=f"pr_{state}")


def on_pr_feedback(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    """Feedback/conflicts become one open fix-up bead that blocks the MR (merged into an existing one)."""
    mr = _bead(conn, ctx, event)
    t, now, p = ctx.town_id, ctx.now, event["payload"]
    label = "gt:pr-conflict" if p.get("kind") == "conflict" else "gt:pr-feedback"
    text = str(p.get("feedback") or "PR feedback")[:8000]
    for dep in bx.dependencies(conn, t, mr["bead_id"], "blocks"):
        b = bx.get_bead(conn, t, dep)
        if b and b["status"] == "open" and label in b["labels"]:
            bx.update_fields(conn, t, dep, now, body=(b["body"] + "\n\n" + text)[:60000])
            return
    review = bx.get_review(conn, t, mr["bead_id"]) or {}
    fix = bx.create_bead(conn, t, type="issue", title=f"Address PR feedback: {mr['title']}"[:200], body=text,
                         now_ms=now, rig_id=mr["rig_id"], labels=[label], ids=ctx.ids,
                         metadata={"mr_bead_id": mr["bead_id"], "branch": review.get("branch")})
    bx.add_dependency(conn, t, mr["bead_id"], fix["bead_id"], "blocks")


def on_pr_auto_merge(conn: Conn, ctx: ApplyContext, event: dict[str, Any]) -> None:
    bead = _bead(conn, ctx, event)
    bx.merge_metadata(conn, ctx.town_id, bead["bead_id"], {"auto_merge_pending": 1})


_HANDLERS: dict[str, Callable[[Conn, ApplyContext, dict[str, Any]], None]] = {
    ev.AGENT_DONE: on_agent_done,
    ev.AGENT_COMPLETED: on_agent_completed,
    ev.AGENT_EVICTION_CONTEXT: on_eviction_context,
    "container_status": on_container_status,
    "bead_cancelled": on_bead_cancelled,
    "convoy_started": on_convoy_started,
    "pr_status_changed": on_pr_status,
    "pr_feedback_detected": on_pr_feedback,
    "pr_conflict_detected": on_pr_feedback,
    "pr_auto_merge": on_pr_auto_merge,
}
