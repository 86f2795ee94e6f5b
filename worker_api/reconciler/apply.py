"""``apply_action``: SQL inline, side effects collected for after the commit.

Why split: the transaction must be short and must never wait on the network; and a side effect
(a container call) must not run for a state change that was rolled back. So every action mutates
the store here and, when the outside world must hear of it, appends an ``Effect`` that the loop
runs once the transaction committed. Each action re-checks its precondition: an earlier action of
the same tick may already have changed the row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import lifecycle as lc
from worker_api import nudges, settings, store
from worker_api.db import Conn, from_json, to_json
from worker_api.reconciler import actions as A
from worker_api.reconciler.prompts import build_start_request, slug

log = get_logger("worker_api.reconciler")


@dataclass(frozen=True)
class Effect:
    """A call to the outside world: ``start`` / ``stop`` / ``message`` to the container, ``poll_pr`` /
    ``merge_pr`` / ``open_pr`` to the PR provider, ``merge_branch`` to git. ``data`` never holds a secret."""

    kind: str
    agent_id: str | None = None
    bead_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ApplyContext:
    town_id: str
    now: int
    ids: bx.IdFactory = bx.new_id
    effects: list[Effect] = field(default_factory=list)


def apply_actions(conn: Conn, ctx: ApplyContext, actions: list[A.Action]) -> None:
    for action in actions:
        apply_action(conn, ctx, action)


def apply_action(conn: Conn, ctx: ApplyContext, action: A.Action) -> None:
    handler = _HANDLERS[action.kind]
    handler(conn, ctx, action)


def _transition_bead(conn: Conn, ctx: ApplyContext, a: A.TransitionBead) -> None:
    if lc.transition_bead(conn, ctx.town_id, a.bead_id, a.to, ctx.now, reason=a.reason, actor="reconciler",
                          clear_assignee=a.clear_assignee, from_status=a.from_status):
        log.info("bead.transition", town=ctx.town_id, bead_id=a.bead_id, to=a.to, reason=a.reason)


def _clear_assignee(conn: Conn, ctx: ApplyContext, a: A.ClearBeadAssignee) -> None:
    bx.update_fields(conn, ctx.town_id, a.bead_id, ctx.now, assignee_agent_id=None)


def _transition_agent(conn: Conn, ctx: ApplyContext, a: A.TransitionAgent) -> None:
    if a.to == "stalled":
        conn.execute("UPDATE agents SET status = 'stalled', stalled_at = ? WHERE town_id = ? AND agent_id = ?",
                     (ctx.now, ctx.town_id, a.agent_id))
    elif a.to == "idle":
        lc.set_agent_idle(conn, ctx.town_id, a.agent_id, ctx.now)
    else:
        store.set_agent_status(conn, ctx.town_id, a.agent_id, a.to, ctx.now)
    log.info("agent.transition", town=ctx.town_id, agent_id=a.agent_id, to=a.to, reason=a.reason)


def _unhook(conn: Conn, ctx: ApplyContext, a: A.UnhookAgent) -> None:
    lc.unhook_agent(conn, ctx.town_id, a.agent_id, ctx.now, clear_checkpoint=a.clear_checkpoint)


def _reset_attempts(conn: Conn, ctx: ApplyContext, a: A.ResetAgentDispatchAttempts) -> None:
    conn.execute("UPDATE agents SET dispatch_attempts = 0 WHERE town_id = ? AND agent_id = ?",
                 (ctx.town_id, a.agent_id))


def _delete_agent(conn: Conn, ctx: ApplyContext, a: A.DeleteAgent) -> None:
    conn.execute("DELETE FROM agents WHERE town_id = ? AND agent_id = ? AND current_hook_bead_id IS NULL"
                 " AND status IN ('idle', 'dead')", (ctx.town_id, a.agent_id))


def _resolve_agent(conn: Conn, ctx: ApplyContext, a: A.DispatchAgent) -> dict[str, Any] | None:
    if a.agent_id:
        agent = store.get_agent(conn, ctx.town_id, a.agent_id)
        if agent is None or agent["status"] not in ("idle", "dead"):
            return None
        if agent["current_hook_bead_id"] not in (None, a.bead_id):
            return None
        return agent
    # A fresh polecat per bead: the container keeps an agent's workspace (and branch) across starts,
    # so reusing a polecat for other work would start it on the wrong checkout.
    hexpart = ctx.ids(a.role).rsplit("-", 1)[-1]
    name = f"{a.role}-{hexpart[:6]}"
    return store.create_agent(conn, ctx.town_id, agent_id=f"{a.role}-{hexpart}", role=a.role, name=name,
                              rig_id=a.rig_id, now_ms=ctx.now)


def _dispatch(conn: Conn, ctx: ApplyContext, a: A.DispatchAgent) -> None:
    """State first (hook, in_progress, counters), all in this transaction; the start call follows."""
    t, now = ctx.town_id, ctx.now
    bead = bx.get_bead(conn, t, a.bead_id)
    if bead is None or bead["status"] not in ("open", "in_progress"):
        return
    if bead["status"] == "in_progress" and a.agent_id is None:
        return
    agent = _resolve_agent(conn, ctx, a)
    if agent is None:
        log.info("dispatch.skipped", town=t, bead_id=a.bead_id, agent_id=a.agent_id, reason="agent_unavailable")
        return
    agent_id = agent["agent_id"]
    bx.set_hook(conn, t, agent_id, a.bead_id, now)
    bx.set_status(conn, t, a.bead_id, "in_progress", now, reason="dispatched", actor=agent_id)
    conn.execute("UPDATE town_beads SET assignee_agent_id = ?, dispatch_attempts = dispatch_attempts + 1,"
                 " last_dispatch_attempt_at = ?, updated_at = ? WHERE town_id = ? AND bead_id = ?",
                 (agent_id, now, now, t, a.bead_id))
    conn.execute("UPDATE agents SET status = 'working', working_since = ?, last_activity_at = ?, stalled_at = NULL,"
                 " last_event_type = NULL, last_event_at = NULL, dispatch_attempts = dispatch_attempts + 1,"
                 " gupp_fired = '{}' WHERE town_id = ? AND agent_id = ?", (now, now, t, agent_id))
    bx.record(conn, t, a.bead_id, "assigned", now, agent_id, attempt=bead["dispatch_attempts"] + 1)
    town = store.get_town(conn, t, with_settings=True) or {"town_id": t}
    rig = bx.get_rig(conn, t, bead["rig_id"]) if bead["rig_id"] else None
    convoy_id = bead["metadata"].get("convoy_id")
    convoy = bx.get_convoy_meta(conn, t, convoy_id) if convoy_id else None
    review = bx.get_review(conn, t, a.bead_id) if bead["type"] == "merge_request" else None
    request = build_start_request(town=town, rig=rig, agent=agent, bead=bead, review=review, convoy=convoy,
                                  checkpoint=from_json(agent.get("checkpoint")))
    log.info("dispatch.planned", town=t, bead_id=a.bead_id, agent_id=agent_id, role=agent["role"],
             attempt=bead["dispatch_attempts"] + 1)
    ctx.effects.append(Effect("start", agent_id, a.bead_id, {"request": request, "role": agent["role"]}))


def _stop(conn: Conn, ctx: ApplyContext, a: A.StopAgent) -> None:
    ctx.effects.append(Effect("stop", a.agent_id, data={"reason": a.reason}))


def _nudge(conn: Conn, ctx: ApplyContext, a: A.SendNudge) -> None:
    row = conn.execute("SELECT gupp_fired FROM agents WHERE town_id = ? AND agent_id = ?",
                       (ctx.town_id, a.agent_id)).fetchone()
    if row is None:
        return
    fired = from_json(row[0], {})
    fired[a.tier] = ctx.now
    conn.execute("UPDATE agents SET gupp_fired = ? WHERE town_id = ? AND agent_id = ?",
                 (to_json(fired), ctx.town_id, a.agent_id))
    nudge = nudges.enqueue_nudge(conn, ctx.town_id, a.agent_id, message=a.message, now_ms=ctx.now,
                                 mode="immediate", priority="urgent", source=f"reconciler:{a.tier}")
    log.info("gupp.nudge", town=ctx.town_id, agent_id=a.agent_id, tier=a.tier)
    ctx.effects.append(Effect("message", a.agent_id, data={"prompt": a.message, "nudge_id": nudge["nudge_id"]}))


def _escalate(conn: Conn, ctx: ApplyContext, a: A.CreateEscalation) -> None:
    lc.create_escalation(conn, ctx.town_id, title=a.title, body=a.body, now=ctx.now, agent_id=a.agent_id,
                         bead_id=a.bead_id, severity=a.severity, ids=ctx.ids)


def _re_escalate(conn: Conn, ctx: ApplyContext, a: A.ReEscalate) -> None:
    lc.re_escalate(conn, ctx.town_id, a.bead_id, a.severity, a.round, ctx.now)


def _notify(conn: Conn, ctx: ApplyContext, a: A.NotifyMayor) -> None:
    lc.notify_mayor(conn, ctx.town_id, a.message, ctx.now)


def _poll(conn: Conn, ctx: ApplyContext, a: A.PollPr) -> None:
    bx.update_review(conn, ctx.town_id, a.bead_id, last_poll_at=ctx.now)
    ctx.effects.append(Effect("poll_pr", bead_id=a.bead_id, data={"pr_url": a.pr_url}))


def _merge(conn: Conn, ctx: ApplyContext, a: A.MergePr) -> None:
    bx.merge_metadata(conn, ctx.town_id, a.bead_id, {"auto_merge_pending": None})
    bx.update_review(conn, ctx.town_id, a.bead_id, last_poll_at=ctx.now)  # the merge effect polls first
    ctx.effects.append(Effect("merge_pr", bead_id=a.bead_id, data={"pr_url": a.pr_url}))


def _land(conn: Conn, ctx: ApplyContext, a: A.MergeBranch | A.OpenPr) -> None:
    bx.update_review(conn, ctx.town_id, a.bead_id, last_poll_at=ctx.now)  # rate-limits the retries
    ctx.effects.append(Effect(a.kind, bead_id=a.bead_id))


def _progress(conn: Conn, ctx: ApplyContext, a: A.UpdateConvoyProgress) -> None:
    bx.update_convoy_meta(conn, ctx.town_id, a.convoy_id, total_beads=a.total, closed_beads=a.closed,
                          failed_beads=a.failed)


def _ready(conn: Conn, ctx: ApplyContext, a: A.SetConvoyReadyToLand) -> None:
    bx.update_convoy_meta(conn, ctx.town_id, a.convoy_id, ready_to_land=1)


def _landing(conn: Conn, ctx: ApplyContext, a: A.CreateLandingMr) -> None:
    t = ctx.town_id
    convoy = bx.get_bead(conn, t, a.convoy_id)
    meta = bx.get_convoy_meta(conn, t, a.convoy_id)
    if convoy is None or meta is None or convoy["status"] in bx.TERMINAL:
        return
    rig = bx.get_rig(conn, t, convoy["rig_id"]) if convoy["rig_id"] else None
    target = (rig or {}).get("default_branch") or "main"
    attempt = meta["landing_attempts"] + 1
    mr = bx.create_bead(conn, t, type="merge_request", title=f"Land convoy: {convoy['title']}", now_ms=ctx.now,
                        body=f"Merge the convoy feature branch `{meta['feature_branch']}` into `{target}`.",
                        rig_id=convoy["rig_id"], labels=["gt:merge-request", "gt:convoy"], ids=ctx.ids,
                        metadata={"landing": True, "convoy_id": a.convoy_id, "attempt": attempt})
    bx.put_review(conn, t, mr["bead_id"], branch=meta["feature_branch"], target_branch=target)
    bx.add_dependency(conn, t, mr["bead_id"], a.convoy_id, "tracks")
    bx.update_convoy_meta(conn, t, a.convoy_id, landing_attempts=attempt, last_landing_attempt_at=ctx.now)
    eff = settings.effective_tx(conn, t, rig)
    if not eff.code_review:  # each bead was merged into the feature branch already: it lands as it stands
        bx.merge_metadata(conn, t, mr["bead_id"], {"fast_tracked": True})
        lc.approve_mr(conn, t, mr["bead_id"], ctx.now, by="code_review_off", strategy=eff.merge_strategy)
    if convoy["status"] != "in_review":
        bx.set_status(conn, t, a.convoy_id, "in_review", ctx.now, reason="landing")
    log.info("convoy.landing_mr", town=t, convoy_id=a.convoy_id, mr=mr["bead_id"], attempt=attempt)


def _close_convoy(conn: Conn, ctx: ApplyContext, a: A.CloseConvoy) -> None:
    lc.finish_convoy(conn, ctx.town_id, a.convoy_id, "closed", ctx.now, reason=a.reason)


def _fail_convoy(conn: Conn, ctx: ApplyContext, a: A.FailConvoy) -> None:
    if lc.finish_convoy(conn, ctx.town_id, a.convoy_id, "failed", ctx.now, reason=a.reason):
        lc.notify_mayor(conn, ctx.town_id, f"Convoy {a.convoy_id} failed: {a.reason}", ctx.now)


_HANDLERS: dict[str, Callable[..., None]] = {
    A.TransitionBead.kind: _transition_bead,
    A.ClearBeadAssignee.kind: _clear_assignee,
    A.TransitionAgent.kind: _transition_agent,
    A.UnhookAgent.kind: _unhook,
    A.ResetAgentDispatchAttempts.kind: _reset_attempts,
    A.DeleteAgent.kind: _delete_agent,
    A.DispatchAgent.kind: _dispatch,
    A.StopAgent.kind: _stop,
    A.SendNudge.kind: _nudge,
    A.CreateEscalation.kind: _escalate,
    A.ReEscalate.kind: _re_escalate,
    A.NotifyMayor.kind: _notify,
    A.PollPr.kind: _poll,
    A.MergePr.kind: _merge,
    A.MergeBranch.kind: _land,
    A.OpenPr.kind: _land,
    A.UpdateConvoyProgress.kind: _progress,
    A.SetConvoyReadyToLand.kind: _ready,
    A.CreateLandingMr.kind: _landing,
    A.CloseConvoy.kind: _close_convoy,
    A.FailConvoy.kind: _fail_convoy,
}

__all__ = ["ApplyContext", "Effect", "apply_action", "apply_actions", "slug"]
