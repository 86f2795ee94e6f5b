"""GUPP ("keep working or say why"): nudge, escalate, then force-stop agents that went quiet.

Activity is the agent's last kilo event (``last_event_at``, cleared by each dispatch). Heartbeats keep
arriving from a hung session, so they cannot be the measure. An agent with no event since its
dispatch is still starting: a slow start is not silence (measured from the dispatch, a 30 s start on
a loaded box drew an escalation whose nudge broke the agent's first turn), and a start that never
reports is the heartbeat rules' case (rules_agents). Each tier fires at most once per hour
per agent (``gupp_fired``). Skipped while draining (heartbeats and events freeze), and stalled
agents past the 2.5 h release are left to the release rule (docs/original-system.md bug 30).
"""
from __future__ import annotations

from worker_api.reconciler.actions import (
    CreateEscalation,
    SendNudge,
    StopAgent,
    TransitionAgent,
)
from worker_api.reconciler.constants import (
    GUPP_ESCALATE_MS,
    GUPP_FORCE_STOP_MS,
    GUPP_TIER_REPEAT_MS,
    GUPP_WARN_MS,
    STALLED_RELEASE_MS,
)
from worker_api.reconciler.plan import Plan

MESSAGES = {
    "warn": "You have been quiet for {m} minutes. Keep working on your hooked bead, or call gt_done / "
            "gt_escalate if you are finished or stuck.",
    "escalate": "No progress for {m} minutes: this has been escalated to the mayor. Report your status now.",
    "force_stop": "No progress for {m} minutes: you are being stopped.",
}


def reconcile_gupp(plan: Plan) -> None:
    s, now = plan.s, plan.now
    if s.draining:
        return
    for a in s.agents.values():
        if a.role == "mayor" or a.status not in ("working", "stalled") or a.agent_id in plan.agents_claimed:
            continue
        if a.status == "stalled" and a.stalled_at is not None and now - a.stalled_at > STALLED_RELEASE_MS:
            continue
        if a.last_event_at is None:
            continue  # no kilo event reported since the dispatch: still starting, not quiet (see module doc)
        quiet = now - a.last_event_at
        if quiet > GUPP_FORCE_STOP_MS:
            tier = "force_stop"
        elif quiet > GUPP_ESCALATE_MS:
            tier = "escalate"
        elif quiet > GUPP_WARN_MS and not a.active_tools:
            tier = "warn"
        else:
            continue
        fired = a.gupp_fired.get(tier)
        if fired is not None and now - fired < GUPP_TIER_REPEAT_MS:
            continue
        if tier == "force_stop" and a.status == "stalled":
            continue  # already stopped once; the release rule takes it from here
        minutes = quiet // 60000
        plan.add(SendNudge(a.agent_id, tier, MESSAGES[tier].format(m=minutes)))
        if tier in ("escalate", "force_stop"):
            plan.add(CreateEscalation(f"Agent {a.name} inactive for {minutes} min",
                                      f"GUPP {tier}: agent {a.agent_id} hooked to {a.hook} has been quiet "
                                      f"for {minutes} minutes.", agent_id=a.agent_id, bead_id=a.hook,
                                      severity="high" if tier == "force_stop" else "medium"))
        if tier == "force_stop" and plan.claim(agent_id=a.agent_id):
            plan.add(TransitionAgent(a.agent_id, "stalled", "gupp_force_stop"), StopAgent(a.agent_id, "gupp_force_stop"))
