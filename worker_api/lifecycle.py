"""Status changes and their consequences, shared by routes, events and actions.

Why one place: a bead reaching a terminal status has knock-on effects (agents unhooked, the MR's
source closed or reopened, sibling MRs failed, a landing MR closing its convoy). If routes and the
reconciler each did part of it, invariants #4/#6 would break whenever one path forgot a step.
All functions run inside the caller's transaction.
"""
from __future__ import annotations

from typing import Any

from gastown.core.http import ApiError
from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import store
from worker_api.db import Conn, to_json

log = get_logger("worker_api.reconciler")


def transition_bead(conn: Conn, town_id: str, bead_id: str, to: str, now: int, *, reason: str,
                    actor: str | None = None, clear_assignee: bool = False, from_status: str | None = None) -> bool:
    """Move a bead to ``to`` (only from ``from_status`` when given) and apply the consequences."""
    bead = bx.get_bead(conn, town_id, bead_id)
    if bead is None or (from_status is not None and bead["status"] != from_status):
        return False
    prev = bx.set_status(conn, town_id, bead_id, to, now, reason=reason, actor=actor)
    if clear_assignee:
        _unhook_all(conn, town_id, bead_id, now)
        bx.update_fields(conn, town_id, bead_id, now, assignee_agent_id=None)
    if to in bx.TERMINAL and prev not in bx.TERMINAL:
        _on_terminal(conn, town_id, bead, to, now, reason)
    return True


def _unhook_all(conn: Conn, town_id: str, bead_id: str, now: int) -> None:
    """Unhook every agent on the bead; a working one goes idle with it (invariant #7: a working agent
    has a hook). Its container process ends at its own idle timeout; a late gt_done finds no hook."""
    for agent_id in bx.hooked_agents(conn, town_id, bead_id):
        bx.set_hook(conn, town_id, agent_id, None, now)
        conn.execute("UPDATE agents SET status = 'idle', stalled_at = NULL WHERE town_id = ? AND agent_id = ?"
                     " AND status IN ('working', 'stalled')", (town_id, agent_id))


def _on_terminal(conn: Conn, town_id: str, bead: dict[str, Any], to: str, now: int, reason: str) -> None:
    bead_id = bead["bead_id"]
    _unhook_all(conn, town_id, bead_id, now)
    if bead["type"] == "merge_request":
        _on_mr_terminal(conn, town_id, bead, to, now)
        _mr_notice(conn, town_id, bead, to, now, reason)
    elif bead["type"] == "issue":
        # The source ended (merged via one MR, or cancelled): any other live MR for it is moot.
        for mr_id in bx.dependents(conn, town_id, bead_id, "tracks"):
            mr = bx.get_bead(conn, town_id, mr_id)
            if mr and mr["type"] == "merge_request" and mr["status"] not in bx.TERMINAL:
                transition_bead(conn, town_id, mr_id, "failed", now, reason="source_terminal")


QUIET_MR_REASONS = ("source_terminal", "convoy_closed", "convoy_failed")  # the cause has its own notice, or none


def _mr_notice(conn: Conn, town_id: str, mr: dict[str, Any], to: str, now: int, reason: str) -> None:
    """The mayor hears what became of each merge request: merged, or failed and why (a landing MR
    that merged is told as its convoy's landing instead)."""
    if reason in QUIET_MR_REASONS or (to == "closed" and mr["metadata"].get("landing")):
        return
    review = bx.get_review(conn, town_id, mr["bead_id"]) or {}
    source = bx.get_bead(conn, town_id, mr["metadata"].get("source_bead_id") or "") or {}
    what = f"{source.get('title') or mr['title']} ({review.get('branch') or '?'} into {review.get('target_branch') or '?'})"
    ids = f"[{source['bead_id']}, MR {mr['bead_id']}]" if source else f"[{mr['bead_id']}]"
    if to == "closed":
        notify_mayor(conn, town_id, f"Merged: {what} {ids}", now)
    else:
        notify_mayor(conn, town_id, f"Merge request failed ({reason}): {what} {ids}", now)


def _on_mr_terminal(conn: Conn, town_id: str, mr: dict[str, Any], to: str, now: int) -> None:
    meta = mr["metadata"]
    if meta.get("landing"):
        convoy_id = meta.get("convoy_id")
        if to == "closed" and convoy_id:
            bx.update_convoy_meta(conn, town_id, convoy_id, landed_at=now)
            finish_convoy(conn, town_id, convoy_id, "closed", now, reason="landed")
        elif convoy_id and meta.get("awaiting_approval"):
            # reconcile_convoys will not create another landing MR while this PR waits for a human.
            log.info("reconciler.respawn_suppressed", town=town_id, convoy_id=convoy_id, bead_id=mr["bead_id"],
                     reason="awaiting_approval")
            bx.record(conn, town_id, convoy_id, "reconciler.respawn_suppressed", now, mr_bead_id=mr["bead_id"],
                      reason="awaiting_approval")
        return
    source_id = meta.get("source_bead_id")
    source = bx.get_bead(conn, town_id, source_id) if source_id else None
    if source is None or source["status"] != "in_review":
        return
    if to == "closed":
        transition_bead(conn, town_id, source_id, "closed", now, reason="mr_merged")
        return
    others = [m for m in bx.dependents(conn, town_id, source_id, "tracks") if m != mr["bead_id"]]
    if not any((bx.get_bead(conn, town_id, m) or {}).get("status") in ("open", "in_progress") for m in others):
        transition_bead(conn, town_id, source_id, "open", now, reason="mr_failed", clear_assignee=True)


def finish_convoy(conn: Conn, town_id: str, convoy_id: str, to: str, now: int, *, reason: str) -> bool:
    """Close or fail a convoy; its still-live beads are cancelled (failed) with it. The mayor hears
    of a convoy that landed (one the mayor or a user closed by hand needs no notice)."""
    convoy = bx.get_bead(conn, town_id, convoy_id)
    if convoy is None or convoy["type"] != "convoy" or convoy["status"] in bx.TERMINAL:
        return False
    merged = total = 0
    for bead_id in bx.dependents(conn, town_id, convoy_id, "tracks"):
        b = bx.get_bead(conn, town_id, bead_id)
        if b is None:
            continue
        if b["type"] == "issue":
            total += 1
            merged += b["status"] == "closed"
        if b["status"] not in bx.TERMINAL:
            transition_bead(conn, town_id, bead_id, "failed", now, reason=f"convoy_{to}")
    bx.set_status(conn, town_id, convoy_id, to, now, reason=reason)
    if to == "closed" and reason in ("landed", "all_beads_closed"):
        notify_mayor(conn, town_id, f"Convoy landed: {convoy['title']} [{convoy_id}]: {merged} of {total} beads "
                                    "merged.", now)
    log.info("convoy.finished", town=town_id, convoy_id=convoy_id, status=to, reason=reason)
    return True


def approve_mr(conn: Conn, town_id: str, mr_id: str, now: int, *, by: str, strategy: str) -> None:
    """The MR may land: the worker merges exactly its branch (``direct``) or opens its PR (``pr``), R8."""
    bx.record(conn, town_id, mr_id, "review_completed", now, by, approved=True, strategy=strategy)
    bx.merge_metadata(conn, town_id, mr_id, {"approved_at": now, "approved_by": by, "merge_strategy": strategy,
                                             "land_failures": None})


MAX_REWORK_ROUNDS = 3  # ours: a merge request cannot be sent back for ever


def send_back_for_rework(conn: Conn, town_id: str, mr: dict[str, Any], text: str, now: int, *,
                         actor: str, reason: str, max_rounds: int = MAX_REWORK_ROUNDS) -> str | None:
    """Send a merge request back: a ``gt:rework`` bead on the MR's branch that blocks it, the MR
    reopened without its approval (a new review follows the fix; an MR that skipped review keeps
    skipping it); past ``max_rounds`` the MR fails.
    The rework bead's id, or None when the MR failed."""
    review = bx.get_review(conn, town_id, mr["bead_id"]) or {}
    rounds = int(review.get("retry_count") or 0) + 1
    bx.update_review(conn, town_id, mr["bead_id"], retry_count=rounds)
    bx.record(conn, town_id, mr["bead_id"], "rework_requested", now, actor, round=rounds, reason=reason)
    if rounds > max_rounds:
        transition_bead(conn, town_id, mr["bead_id"], "failed", now, reason="too_many_rework_rounds", actor=actor)
        return None
    rework = bx.create_bead(conn, town_id, type="issue", title=f"Rework: {mr['title'].removeprefix('Review: ')}"[:200],
                            body=text, rig_id=mr["rig_id"], labels=["gt:rework"], created_by=actor, now_ms=now,
                            metadata={"mr_bead_id": mr["bead_id"], "source_bead_id": mr["metadata"].get("source_bead_id"),
                                      "branch": review.get("branch")})
    bx.add_dependency(conn, town_id, mr["bead_id"], rework["bead_id"], "blocks")
    if not mr["metadata"].get("fast_tracked"):  # reviewed: the fix is reviewed again
        bx.merge_metadata(conn, town_id, mr["bead_id"], {"approved_at": None, "approved_by": None,
                                                         "merge_strategy": None, "land_failures": None})
    else:  # code review is off for it: once the fix is in, it lands as it stands (R5 → R8)
        bx.merge_metadata(conn, town_id, mr["bead_id"], {"land_failures": None})
    transition_bead(conn, town_id, mr["bead_id"], "open", now, reason=reason, actor=actor, clear_assignee=True)
    return str(rework["bead_id"])


def unhook_agent(conn: Conn, town_id: str, agent_id: str, now: int, *,
                 clear_checkpoint: bool = False) -> None:
    bx.set_hook(conn, town_id, agent_id, None, now, clear_checkpoint=clear_checkpoint)


def set_agent_idle(conn: Conn, town_id: str, agent_id: str, now: int) -> None:
    conn.execute("UPDATE agents SET status = 'idle', stalled_at = NULL WHERE town_id = ? AND agent_id = ?",
                 (town_id, agent_id))


def create_escalation(conn: Conn, town_id: str, *, title: str, body: str, now: int,
                      agent_id: str | None = None, bead_id: str | None = None, severity: str = "medium",
                      ids: bx.IdFactory = bx.new_id) -> str:
    """An escalation bead for the mayor, plus a nudge so the mayor hears of it at its next idle."""
    priority = {"low": "low", "medium": "medium", "high": "high", "critical": "critical"}.get(severity, "medium")
    esc = bx.create_bead(conn, town_id, type="escalation", title=title, body=body, now_ms=now, priority=priority,
                         labels=["gt:escalation", f"severity:{severity}"], created_by=agent_id,
                         metadata={"agent_id": agent_id, "bead_id": bead_id, "severity": severity}, ids=ids)
    notice = notify_mayor(conn, town_id, f"Escalation ({severity}): {title} [{esc['bead_id']}]. {ACK_HINT}", now)
    if notice:
        bx.merge_metadata(conn, town_id, esc["bead_id"], {"notice_id": notice})
    return str(esc["bead_id"])


ACK_HINT = "When it is handled, acknowledge it with gt_escalation_ack (or close it), or it comes back."


def re_escalate(conn: Conn, town_id: str, bead_id: str, severity: str, round_: int, now: int) -> bool:
    """Raise an open, unacknowledged escalation to ``severity`` and tell the mayor again."""
    esc = bx.get_bead(conn, town_id, bead_id)
    if esc is None or esc["type"] != "escalation" or esc["status"] != "open" or esc["metadata"].get("acknowledged_at"):
        return False
    labels = [x for x in esc["labels"] if not x.startswith("severity:")] + [f"severity:{severity}"]
    bx.update_fields(conn, town_id, bead_id, now, priority=severity, labels=to_json(labels))
    bx.merge_metadata(conn, town_id, bead_id, {"severity": severity, "re_escalations": round_,
                                               "last_escalated_at": now})
    bx.record(conn, town_id, bead_id, "re_escalated", now, "reconciler", severity=severity, round=round_)
    notice = notify_mayor(conn, town_id, f"Re-escalation #{round_} ({severity}), not acknowledged yet: {esc['title']} "
                                         f"[{bead_id}]. {ACK_HINT}", now)
    bx.merge_metadata(conn, town_id, bead_id, {"notice_id": notice})
    return True


def acknowledge_escalation(conn: Conn, town_id: str, bead_id: str, now: int, *, actor: str,
                           note: str | None = None) -> None:
    """Stop an escalation from coming back; it stays open until closed (idempotent: the first ack counts)."""
    esc = bx.require_bead(conn, town_id, bead_id)
    if esc["type"] != "escalation":
        raise ApiError(409, "NOT_AN_ESCALATION", f"bead {bead_id} is a {esc['type']}, not an escalation")
    if esc["metadata"].get("acknowledged_at"):
        return
    bx.merge_metadata(conn, town_id, bead_id, {"acknowledged_at": now, "acknowledged_by": actor,
                                               "acknowledgement": note})
    bx.record(conn, town_id, bead_id, "acknowledged", now, actor, note=note)


def notify_mayor(conn: Conn, town_id: str, message: str, now: int) -> str | None:
    """Queue a notice for the mayor (the desk delivers it as a turn); its nudge id, or None without a mayor."""
    from worker_api import nudges

    mayor = store.get_mayor(conn, town_id)
    if mayor is None:
        return None
    nudge = nudges.enqueue_nudge(conn, town_id, mayor["agent_id"], message=message[:16000], now_ms=now,
                                 mode="wait-idle", source="reconciler")
    return str(nudge["nudge_id"])
