"""Pure rule tests: a TownState in, actions out. No database, no clock but ``now``.

Each test is named for the rule it pins (reference §5.8) or the regression it guards (§7).
"""
from __future__ import annotations

from typing import Any

from worker_api.reconciler import actions as A
from worker_api.reconciler.constants import MINUTE, SECOND
from worker_api.reconciler.reconcile import has_active_work, reconcile
from worker_api.reconciler.state import Agent, Bead, Convoy, Review, Rig, TownState

NOW = 1_800_000_000_000


def bead(bead_id: str, type: str = "issue", status: str = "open", rig: str | None = "rig-1", assignee: str | None = None,
         attempts: int = 0, last: int | None = None, created: int = NOW - 1000, updated: int | None = None,
         labels: tuple[str, ...] = (), priority: str = "medium", **meta: Any) -> Bead:
    return Bead(bead_id, type, status, bead_id, rig, assignee, priority, labels, meta, attempts, last, created,
                updated if updated is not None else created)


def agent(agent_id: str, role: str = "polecat", status: str = "idle", hook: str | None = None,
          activity: int | None = None, attempts: int = 0, stalled_at: int | None = None, event_at: int | None = None,
          tools: tuple[str, ...] = (), rig: str = "rig-1", gupp: dict | None = None, created: int = NOW - 1000) -> Agent:
    return Agent(agent_id, role, agent_id, rig, status, hook, attempts, activity, event_at, list(tools), stalled_at,
                 None, created, gupp or {})


def convoy(cid: str, total: int, closed: int = 0, failed: int = 0, mode: str = "review-and-merge", staged: bool = False,
           ready: bool = False, landing_attempts: int = 0, last_landing: int | None = None, landing_live: bool = False,
           awaiting: bool = False, stored: tuple[int, int, int] | None = None) -> Convoy:
    return Convoy(cid, "in_progress", mode, staged, "convoy/x/abc/head", total, closed, failed, total - closed - failed,
                  ready, landing_attempts, last_landing, landing_live, awaiting, stored or (total, closed, failed))


def town(beads: list[Bead] = (), agents: list[Agent] = (), *, now: int = NOW, draining: bool = False,
         blockers: dict | None = None, mrs: dict | None = None, reviews: list[Review] = (),
         convoys: list[Convoy] = (), failing: int = 0, max_polecats: int = 10) -> TownState:
    all_beads = {b.bead_id: b for b in beads}
    for c in convoys:
        all_beads.setdefault(c.bead_id, bead(c.bead_id, type="convoy", status=c.status))
    return TownState("town-1", now, draining, {"rig-1": Rig("rig-1", "main", 5), "rig-2": Rig("rig-2", "main", 5)},
                     {a.agent_id: a for a in agents}, all_beads, blockers or {}, mrs or {},
                     {r.bead_id: r for r in reviews}, {c.bead_id: c for c in convoys}, failing, max_polecats)


def kinds(actions: list) -> list[str]:
    return [a.kind for a in actions]


def of(actions: list, cls: type) -> list:
    return [a for a in actions if isinstance(a, cls)]


# ---------------------------------------------------------------- reconcileAgents


def test_agents_working_without_any_heartbeat_goes_idle() -> None:
    out = reconcile(town([bead("b1", status="in_progress")], [agent("p1", status="working", hook="b1")]))
    assert A.TransitionAgent("p1", "idle", "no_heartbeat") in out


def test_agents_working_with_heartbeat_older_than_90s_goes_idle() -> None:
    stale = agent("p1", status="working", hook="b1", activity=NOW - 91 * SECOND)
    fresh = agent("p2", status="working", hook="b2", activity=NOW - 89 * SECOND)
    out = reconcile(town([bead("b1", status="in_progress"), bead("b2", status="in_progress")], [stale, fresh]))
    assert A.TransitionAgent("p1", "idle", "heartbeat_stale") in out
    assert not [a for a in of(out, A.TransitionAgent) if a.agent_id == "p2"]


def test_agents_working_with_fresh_heartbeat_but_no_hook_goes_idle() -> None:
    out = reconcile(town([], [agent("p1", status="working", activity=NOW)]))
    assert out == [A.TransitionAgent("p1", "idle", "working_without_hook")]


def test_agents_stalled_agent_is_released_2h30_after_stalled_at() -> None:
    early = agent("p1", status="stalled", hook="b1", stalled_at=NOW - 149 * MINUTE, activity=NOW)
    late = agent("p2", status="stalled", hook="b2", stalled_at=NOW - 151 * MINUTE, activity=NOW)
    out = reconcile(town([bead("b1", status="in_progress"), bead("b2", status="in_progress")], [early, late]))
    assert A.TransitionAgent("p2", "idle", "stalled_release") in out and A.UnhookAgent("p2", "stalled_release") in out
    assert not [a for a in out if getattr(a, "agent_id", None) == "p1"]


def test_agents_idle_hooked_to_terminal_or_missing_bead_is_unhooked_and_checkpoint_cleared() -> None:
    out = reconcile(town([], [agent("p1", hook="gone"), agent("r1", role="refinery", hook="gone2")]))
    assert A.UnhookAgent("p1", "hook_terminal_or_missing", clear_checkpoint=True) in out
    assert A.UnhookAgent("r1", "hook_terminal_or_missing", clear_checkpoint=True) in out


def test_agents_idle_hook_with_stale_heartbeat_gives_the_bead_back() -> None:
    out = reconcile(town([bead("b1", status="in_progress", assignee="p1")],
                         [agent("p1", hook="b1", activity=NOW - 2 * MINUTE)]))
    assert A.UnhookAgent("p1", "idle_hook_stale") in out
    assert A.TransitionBead("b1", "in_progress", "open", "agent_gone", clear_assignee=True) in out


def test_regression_1358_phantom_failed_dispatch_idle_hook_with_fresh_heartbeat_is_left_alone() -> None:
    """A dispatch that timed out may still have started the agent: a fresh heartbeat keeps its hook."""
    state = town([bead("b1", status="in_progress", assignee="p1", updated=NOW - 10 * MINUTE)],
                 [agent("p1", hook="b1", activity=NOW - 30 * SECOND)])
    out = reconcile(state)
    assert not of(out, A.UnhookAgent) and not of(out, A.TransitionBead)  # neither the agents rule nor Rule 3


def test_agents_dispatch_attempts_reset_after_30_min_inactive() -> None:
    out = reconcile(town([], [agent("p1", attempts=5, activity=NOW - 31 * MINUTE)]))
    assert A.ResetAgentDispatchAttempts("p1") in out
    assert A.ResetAgentDispatchAttempts("p1") not in reconcile(town([], [agent("p1", attempts=5, activity=NOW - MINUTE)]))


def test_agents_liveness_rules_are_skipped_while_draining() -> None:
    state = town([bead("b1", status="in_progress")], [agent("p1", status="working", hook="b1", activity=NOW - 10 * MINUTE)],
                 draining=True)
    assert not of(reconcile(state), A.TransitionAgent)


def test_gc_deletes_idle_polecats_unhooked_for_a_day_but_not_the_mayor() -> None:
    old = NOW - 25 * 60 * MINUTE
    out = reconcile(town([], [agent("p1", activity=old, created=old), agent("m", role="mayor", activity=old, created=old),
                              agent("p2", activity=NOW - MINUTE)]))
    assert out == [A.DeleteAgent("p1", "gc_24h")]


# ---------------------------------------------------------------- reconcileBeads


def test_rule1_dispatches_a_polecat_for_an_open_unassigned_bead_with_a_rig() -> None:
    assert reconcile(town([bead("b1")])) == [A.DispatchAgent("b1", "rig-1", "polecat")]


def test_rule1_skips_rigless_held_blocked_and_staged_beads() -> None:
    beads = [bead("nr", rig=None), bead("held", labels=("gt:triage-request",)), bead("blk"), bead("blocker"),
             bead("st", convoy_id="c1")]
    state = town(beads, blockers={"blk": [("blocker", "open")]}, convoys=[convoy("c1", 1, staged=True)])
    out = of(reconcile(state), A.DispatchAgent)
    assert [a.bead_id for a in out] == ["blocker"]


def test_rule1_a_closed_or_deleted_blocker_no_longer_blocks() -> None:
    state = town([bead("b1"), bead("b2")], blockers={"b1": [("x", "closed")], "b2": [("y", "deleted")]})
    assert {a.bead_id for a in of(reconcile(state), A.DispatchAgent)} == {"b1", "b2"}


def test_rule1_a_failed_blocker_fails_the_dependent_so_it_cannot_wait_for_ever() -> None:
    out = reconcile(town([bead("b1")], blockers={"b1": [("x", "failed")]}))
    assert out == [A.TransitionBead("b1", "open", "failed", "blocker_failed")]


def test_rule1_fails_the_bead_at_max_dispatch_attempts() -> None:
    out = reconcile(town([bead("b1", attempts=5, last=NOW - 60 * MINUTE)]))
    assert out == [A.TransitionBead("b1", "open", "failed", "max_dispatch_attempts")]


def test_rule1_per_bead_backoff_30s_1m_2m_5m_10m() -> None:
    for attempts, wait in ((1, 30 * SECOND), (2, MINUTE), (3, 2 * MINUTE), (4, 5 * MINUTE)):
        early = town([bead("b1", attempts=attempts, last=NOW - wait + 1)])
        due = town([bead("b1", attempts=attempts, last=NOW - wait)])
        assert reconcile(early) == [], attempts
        assert kinds(reconcile(due)) == ["dispatch_agent"], attempts


def test_rule1_circuit_breaker_suppresses_every_dispatch() -> None:
    assert reconcile(town([bead("b1")], failing=20)) == []
    assert reconcile(town([bead("b1")], failing=19)) == [A.DispatchAgent("b1", "rig-1", "polecat")]


def test_rule1_no_dispatch_while_draining() -> None:
    assert reconcile(town([bead("b1")], draining=True)) == []


def test_rule1_polecat_cap_and_priority_order() -> None:
    beads = [bead("low", priority="low", created=NOW - 9000), bead("crit", priority="critical"),
             bead("med", created=NOW - 5000)]
    busy = [agent("w1", status="working", hook="x1", activity=NOW)]
    out = of(reconcile(town(beads + [bead("x1", status="in_progress")], busy, max_polecats=3)), A.DispatchAgent)
    assert [a.bead_id for a in out] == ["crit", "med"]


def test_rule1b_clears_an_assignee_that_is_not_hooked_to_the_bead() -> None:
    out = reconcile(town([bead("b1", assignee="p1")], [agent("p1", activity=NOW)]))
    assert out == [A.ClearBeadAssignee("b1", "assignee_not_hooked")]


def test_rule2_redispatches_an_idle_agent_hooked_to_an_open_bead() -> None:
    out = reconcile(town([bead("b1", assignee="p1")], [agent("p1", hook="b1", activity=NOW - 5 * MINUTE)]))
    assert out == [A.DispatchAgent("b1", "rig-1", "polecat", "p1")]


def test_rule2_fails_at_the_cap_and_unhooks() -> None:
    out = reconcile(town([bead("b1", assignee="p1", attempts=5, last=NOW - 60 * MINUTE)], [agent("p1", hook="b1")]))
    assert A.TransitionBead("b1", "open", "failed", "max_dispatch_attempts") in out and A.UnhookAgent("p1", "bead_failed") in out


def test_rule3_stale_in_progress_without_live_agent_goes_back_to_open() -> None:
    out = reconcile(town([bead("b1", status="in_progress", updated=NOW - 5 * MINUTE - 1)]))
    assert out == [A.TransitionBead("b1", "in_progress", "open", "stale_in_progress", clear_assignee=True)]
    assert reconcile(town([bead("b1", status="in_progress", updated=NOW - 5 * MINUTE)])) == []


def test_rule3_fails_at_max_attempts_and_spares_beads_with_a_live_agent() -> None:
    out = reconcile(town([bead("b1", status="in_progress", attempts=5, updated=NOW - 6 * MINUTE)]))
    assert out == [A.TransitionBead("b1", "in_progress", "failed", "stale_in_progress", clear_assignee=True)]
    working = town([bead("b1", status="in_progress", updated=NOW - 60 * MINUTE)],
                   [agent("p1", status="working", hook="b1", activity=NOW)])
    assert reconcile(working) == []


def test_rule4_in_review_closes_when_an_mr_merged_and_reopens_when_all_failed() -> None:
    merged = town([bead("b1", status="in_review")], mrs={"b1": [("m1", "failed"), ("m2", "closed")]})
    assert reconcile(merged) == [A.TransitionBead("b1", "in_review", "closed", "mr_merged")]
    failed = town([bead("b1", status="in_review")], mrs={"b1": [("m1", "failed")]})
    assert reconcile(failed) == [A.TransitionBead("b1", "in_review", "open", "mr_failed", clear_assignee=True)]
    waiting = town([bead("b1", status="in_review"), bead("m2", type="merge_request", status="in_progress",
                                                          updated=NOW)],
                   [agent("r1", role="refinery", status="working", hook="m2", activity=NOW)],
                   mrs={"b1": [("m1", "failed"), ("m2", "in_progress")]})
    assert reconcile(waiting) == []


# ---------------------------------------------------------------- reconcileReviewQueue


def mr(bead_id: str, status: str = "open", rig: str = "rig-1", **kw: Any) -> Bead:
    return bead(bead_id, type="merge_request", status=status, rig=rig, **kw)


def review(bead_id: str, pr_url: str | None = None, last_poll: int | None = None) -> Review:
    return Review(bead_id, "gt/x/1", "main", pr_url, 0, last_poll)


def test_r1_polls_a_pr_at_most_once_a_minute_and_merges_when_auto_merge_is_pending() -> None:
    ref = agent("r1", role="refinery", status="working", hook="m1", activity=NOW)
    due = town([mr("m1", "in_progress", updated=NOW, auto_merge_pending=1)], [ref],
               reviews=[review("m1", "https://gh/pr/1", NOW - 60 * SECOND)])
    assert set(reconcile(due)) == {A.PollPr("m1", "https://gh/pr/1"), A.MergePr("m1", "https://gh/pr/1")}
    early = town([mr("m1", "in_progress", updated=NOW)], [ref], reviews=[review("m1", "https://gh/pr/1", NOW - 59 * SECOND)])
    assert reconcile(early) == []


def test_r2_stuck_mr_without_pr_or_working_agent_reopens_after_30_min() -> None:
    ref = agent("r1", role="refinery", hook="m1", activity=NOW - 40 * MINUTE)
    out = reconcile(town([mr("m1", "in_progress", updated=NOW - 31 * MINUTE)], [ref], reviews=[review("m1")]))
    assert A.TransitionBead("m1", "in_progress", "open", "mr_stuck", clear_assignee=True) in out
    assert A.UnhookAgent("r1", "mr_stuck") in out and not of(out, A.DispatchAgent)


def test_r3_abandoned_mr_nobody_hooked_reopens_after_2_min() -> None:
    out = reconcile(town([mr("m1", "in_progress", updated=NOW - 2 * MINUTE - 1)], reviews=[review("m1")]))
    assert out == [A.TransitionBead("m1", "in_progress", "open", "mr_abandoned", clear_assignee=True)]


def test_r4_orphaned_pr_fails_unless_awaiting_approval() -> None:
    base = dict(reviews=[review("m1", "https://gh/pr/1", NOW)])
    out = reconcile(town([mr("m1", "in_progress", updated=NOW - 31 * MINUTE)], **base))
    assert A.TransitionBead("m1", "in_progress", "failed", "pr_orphaned") in out
    out = reconcile(town([mr("m1", "in_progress", updated=NOW - 31 * MINUTE, awaiting_approval=True)], **base))
    assert not of(out, A.TransitionBead)


def test_r5_pops_the_oldest_open_mr_per_rig_onto_the_refinery_serially() -> None:
    state = town([mr("m2", created=NOW - 100), mr("m1", created=NOW - 200), mr("m3", rig="rig-2", created=NOW - 50)],
                 [agent("r1", role="refinery")])
    out = of(reconcile(state), A.DispatchAgent)
    assert out == [A.DispatchAgent("m1", "rig-1", "refinery", "r1"), A.DispatchAgent("m3", "rig-2", "refinery")]


def test_r5_waits_while_an_mr_of_the_rig_is_in_progress_or_the_mr_is_blocked() -> None:
    ref = agent("r1", role="refinery", status="working", hook="m0", activity=NOW)
    busy = town([mr("m0", "in_progress", updated=NOW), mr("m1")], [ref], reviews=[review("m0")])
    assert not of(reconcile(busy), A.DispatchAgent)
    blocked = town([mr("m1"), bead("rw")], blockers={"m1": [("rw", "open")]})
    assert [a.bead_id for a in of(reconcile(blocked), A.DispatchAgent)] == ["rw"]


def test_r6_redispatches_an_idle_refinery_still_hooked_to_its_in_progress_mr() -> None:
    out = reconcile(town([mr("m1", "in_progress", attempts=1, last=NOW - MINUTE, updated=NOW - MINUTE)],
                         [agent("r1", role="refinery", hook="m1", activity=NOW - MINUTE)], reviews=[review("m1")]))
    assert out == [A.DispatchAgent("m1", "rig-1", "refinery", "r1")]


def test_regression_1342_refinery_redispatch_loop_is_capped_by_the_mr_attempts() -> None:
    out = reconcile(town([mr("m1", "in_progress", attempts=5, last=NOW - MINUTE, updated=NOW - MINUTE)],
                         [agent("r1", role="refinery", hook="m1", attempts=5, activity=NOW - MINUTE)],
                         reviews=[review("m1")]))
    assert A.TransitionBead("m1", "in_progress", "failed", "max_dispatch_attempts") in out
    assert not of(out, A.DispatchAgent)


def test_r7_a_refinery_working_on_a_terminal_mr_is_stopped_unhooked_and_idled() -> None:
    out = reconcile(town([], [agent("r1", role="refinery", status="working", hook="m-done", activity=NOW)]))
    assert out == [A.StopAgent("r1", "mr_terminal"), A.UnhookAgent("r1", "mr_terminal"),
                   A.TransitionAgent("r1", "idle", "mr_terminal")]


# ---------------------------------------------------------------- reconcileConvoys


def test_convoy_progress_is_written_when_it_changed() -> None:
    out = reconcile(town(convoys=[convoy("c1", 3, closed=1, stored=(3, 0, 0))]))
    assert A.UpdateConvoyProgress("c1", 3, 1, 0) in out


def test_convoy_review_and_merge_closes_when_all_beads_closed_and_fails_if_any_failed() -> None:
    assert reconcile(town(convoys=[convoy("c1", 2, closed=2)])) == [A.CloseConvoy("c1", "all_beads_closed")]
    assert kinds(reconcile(town(convoys=[convoy("c1", 2, closed=1, failed=1)]))) == ["fail_convoy"]
    assert reconcile(town(convoys=[convoy("c1", 2, closed=1)])) == []


def test_convoy_review_then_land_creates_one_landing_mr_with_capped_attempts() -> None:
    out = reconcile(town(convoys=[convoy("c1", 2, closed=2, mode="review-then-land")]))
    assert out == [A.SetConvoyReadyToLand("c1"), A.CreateLandingMr("c1")]
    live = convoy("c1", 2, closed=2, mode="review-then-land", ready=True, landing_live=True, landing_attempts=1)
    assert reconcile(town(convoys=[live])) == []
    cooling = convoy("c1", 2, closed=2, mode="review-then-land", ready=True, landing_attempts=2,
                     last_landing=NOW - 2 * MINUTE + 1)
    assert reconcile(town(convoys=[cooling])) == []  # min(2^2 * 30 s, 30 min) = 2 min
    cooled = convoy("c1", 2, closed=2, mode="review-then-land", ready=True, landing_attempts=2,
                    last_landing=NOW - 2 * MINUTE)
    assert reconcile(town(convoys=[cooled])) == [A.CreateLandingMr("c1")]
    spent = convoy("c1", 2, closed=2, mode="review-then-land", ready=True, landing_attempts=5, last_landing=0)
    assert kinds(reconcile(town(convoys=[spent]))) == ["fail_convoy"]
    awaiting = convoy("c1", 2, closed=2, mode="review-then-land", ready=True, landing_attempts=1, awaiting=True)
    assert reconcile(town(convoys=[awaiting])) == []


def test_staged_convoy_does_nothing_until_started() -> None:
    assert reconcile(town(convoys=[convoy("c1", 0, staged=True)])) == []
    assert reconcile(town(convoys=[convoy("c1", 0)])) == [A.CloseConvoy("c1", "empty")]


# ---------------------------------------------------------------- GUPP


def _gupp(quiet_ms: int, **kw: Any) -> list:
    a = agent("p1", status=kw.pop("status", "working"), hook="b1", activity=NOW, event_at=NOW - quiet_ms, **kw)
    return reconcile(town([bead("b1", status="in_progress", updated=NOW)], [a], draining=kw.get("draining", False)))


def test_gupp_warn_after_15_min_quiet_without_active_tools() -> None:
    out = _gupp(16 * MINUTE)
    assert [(a.tier, a.agent_id) for a in of(out, A.SendNudge)] == [("warn", "p1")] and not of(out, A.CreateEscalation)
    assert not of(_gupp(16 * MINUTE, tools=("bash",)), A.SendNudge)
    assert not of(_gupp(14 * MINUTE), A.SendNudge)


def test_gupp_escalate_after_1h_and_force_stop_after_2h() -> None:
    out = _gupp(61 * MINUTE)
    assert [a.tier for a in of(out, A.SendNudge)] == ["escalate"] and len(of(out, A.CreateEscalation)) == 1
    out = _gupp(121 * MINUTE)
    assert [a.tier for a in of(out, A.SendNudge)] == ["force_stop"]
    assert A.TransitionAgent("p1", "stalled", "gupp_force_stop") in out and A.StopAgent("p1", "gupp_force_stop") in out


def test_gupp_each_tier_fires_at_most_once_an_hour() -> None:
    assert not of(_gupp(61 * MINUTE, gupp={"escalate": NOW - 59 * MINUTE}), A.SendNudge)
    assert of(_gupp(61 * MINUTE, gupp={"escalate": NOW - 61 * MINUTE}), A.SendNudge)


def test_gupp_waited_out_a_slow_start_as_if_the_agent_were_quiet(monkeypatch) -> None:
    """Quiet was measured from the dispatch while the agent had reported no kilo event: a 30 s start
    on a loaded CI box drew an escalation (8 s window) whose nudge broke the agent's first turn."""
    from worker_api.reconciler import gupp

    monkeypatch.setattr(gupp, "GUPP_ESCALATE_MS", 8000)  # the e2e test's window
    starting = agent("p1", status="working", hook="b1", activity=NOW - 30_000, event_at=None)
    assert not of(reconcile(town([bead("b1", status="in_progress", updated=NOW)], [starting])), A.SendNudge)
    started = agent("p1", status="working", hook="b1", activity=NOW, event_at=NOW - 30_000)
    assert [a.tier for a in of(reconcile(town([bead("b1", status="in_progress", updated=NOW)], [started])),
                               A.SendNudge)] == ["escalate"]


def test_gupp_is_skipped_while_draining_and_for_stalled_agents_past_release() -> None:
    assert reconcile(town([bead("b1", status="in_progress", updated=NOW)],
                          [agent("p1", status="working", hook="b1", activity=NOW, event_at=NOW - 3 * 60 * MINUTE)],
                          draining=True)) == []
    past = agent("p1", status="stalled", hook="b1", activity=NOW, event_at=NOW - 5 * 60 * MINUTE,
                 stalled_at=NOW - 151 * MINUTE)
    assert not of(reconcile(town([bead("b1", status="in_progress", updated=NOW)], [past])), A.SendNudge)


# ---------------------------------------------------------------- cadence


def test_has_active_work() -> None:
    assert not has_active_work(town())
    assert has_active_work(town([bead("b1")]))
    assert not has_active_work(town([bead("b1", rig=None)]))
    assert has_active_work(town([], [agent("p1", status="working", hook="x")]))
    assert has_active_work(town([mr("m1")]))
    assert not has_active_work(town([bead("b1", convoy_id="c1")], convoys=[convoy("c1", 1, staged=True)]))


def test_r5_a_pr_waiting_on_a_human_does_not_freeze_the_rigs_review_queue() -> None:
    """Any in-progress MR made its rig busy, PR MRs included: one PR awaiting approval (exempt from
    the review timeout) stopped every other MR of the rig from being reviewed."""
    waiting = mr("m1", "in_progress", updated=NOW - 10 * MINUTE, awaiting_approval=True)
    queued = mr("m2", created=NOW - 500)
    out = reconcile(town([waiting, queued], [agent("r1", role="refinery")],
                         reviews=[review("m1", "https://gh/pr/1", NOW), review("m2")]))
    assert A.DispatchAgent("m2", "rig-1", "refinery", "r1") in out
    reviewing = mr("m1", "in_progress", updated=NOW)  # no PR: the refinery is on it
    out = reconcile(town([reviewing, queued], [agent("r1", role="refinery", status="working", hook="m1", activity=NOW)],
                         reviews=[review("m1"), review("m2")]))
    assert not of(out, A.DispatchAgent)


def test_a_review_then_land_polecat_starts_from_the_convoy_branch_and_may_create_it() -> None:
    from worker_api.reconciler.prompts import build_start_request

    town = {"town_id": "town-1", "default_model": "fake/m1"}
    rig = {"rig_id": "rig-1", "git_url": "https://forge/app.git", "default_branch": "main"}
    agent = {"agent_id": "pc-1", "name": "Toast", "role": "polecat", "rig_id": "rig-1"}
    bead = {"bead_id": "b-1", "title": "t", "body": "", "metadata": {}}
    convoy = {"merge_mode": "review-then-land", "feature_branch": "convoy/x/abc/head"}
    req = build_start_request(town=town, rig=rig, agent=agent, bead=bead, review=None, convoy=convoy)
    assert req["start_point"] == "origin/convoy/x/abc/head" and req["create_start_point"] is True
    plain = build_start_request(town=town, rig=rig, agent=agent, bead=bead, review=None, convoy=None)
    assert "start_point" not in plain and "create_start_point" not in plain
