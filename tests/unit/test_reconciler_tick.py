"""Ticks against a real store and a fake container: events, dispatch, regressions of reference §7."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.gitrepos import bare_origin, push_branch, show
from tests.test_reconciler_support import CONTROL, FakeClock, FakeContainer, Harness, h  # noqa: F401 (fixture)
from worker_api import beads as bx
from worker_api import events as ev
from worker_api.reconciler.invariants import check_invariants
from worker_api.reconciler.prompts import short_id


def violations(h: Harness) -> list:
    return h.sync(check_invariants, h.town_id, write=False)


async def dispatch_one(h: Harness, title: str = "Fix it", body: str = "the details") -> tuple[str, str]:
    bead_id = h.sling(title, body=body)
    await h.tick()
    agent_id = h.bead(bead_id)["assignee_agent_id"]
    assert agent_id is not None
    return bead_id, agent_id


async def test_dispatch_sends_the_start_request_contract_and_updates_state_first(h: Harness) -> None:
    bead_id, agent_id = await dispatch_one(h)
    [req] = h.container.starts
    assert req["agent_id"] == agent_id and agent_id.startswith("polecat-")
    assert req["town_id"] == "town-1" and req["rig_id"] == "rig-1" and req["role"] == "polecat"
    assert req["model"] == "fake/m1" and req["git_url"] == "https://github.com/acme/widgets.git"
    assert req["default_branch"] == "main"
    assert req["branch"] == f"gt/{req['name']}/{short_id(bead_id)}"
    assert "Fix it" in req["prompt"] and "the details" in req["prompt"]
    assert CONTROL not in repr(req) and h.container.targets[0].token == CONTROL
    assert CONTROL not in repr(h.container.targets[0])
    bead, agent = h.bead(bead_id), h.agent(agent_id)
    assert bead["status"] == "in_progress" and bead["dispatch_attempts"] == 1
    assert agent["status"] == "working" and agent["current_hook_bead_id"] == bead_id
    assert agent["dispatch_attempts"] == 0  # reset on a successful start (not for refineries)
    assert violations(h) == []


def local_origin(h: Harness, tmp_path: Path) -> Path:
    """Point the harness's rig at a local bare origin."""
    origin = bare_origin(tmp_path)
    h.sync(lambda conn: conn.execute("UPDATE rigs SET git_url = ? WHERE town_id = ? AND rig_id = ?",
                                     (str(origin), h.town_id, "rig-1")))
    return origin


async def polecat_done_and_refinery_approves(h: Harness, push: dict[str, str] | None = None,
                                             origin: Path | None = None, then_on_main: dict[str, str] | None = None,
                                             ) -> tuple[str, str, dict[str, Any]]:
    """A polecat's gt_done (having pushed ``push`` to its branch on ``origin``, after which
    ``then_on_main`` lands on main), then the refinery's."""
    bead_id, polecat = await dispatch_one(h)
    if push and origin:
        push_branch(origin, origin.parent / "polecat", h.container.starts[0]["branch"], push)
    if then_on_main and origin:
        push_branch(origin, origin.parent / "other", "main", then_on_main)
    h.clock.advance(30)
    h.event("agent_done", polecat, branch=h.container.starts[0]["branch"], summary="did it")
    await h.tick()
    assert h.bead(bead_id)["status"] == "in_review"
    assert h.agent(polecat)["status"] == "idle" and h.agent(polecat)["current_hook_bead_id"] is None
    [mr] = h.beads(type="merge_request")
    assert mr["status"] == "in_progress"  # R5 popped it in the same tick
    refinery = mr["assignee_agent_id"]
    assert refinery.startswith("refinery-") and h.container.starts[-1]["role"] == "refinery"
    assert h.container.starts[-1]["branch"] == h.container.starts[0]["branch"]
    assert violations(h) == []
    h.clock.advance(30)
    h.event("agent_done", refinery, branch=h.container.starts[0]["branch"])
    await h.tick()
    return bead_id, refinery, mr


async def test_full_flow_refinery_approval_makes_the_worker_merge_the_branch_on_origin(h: Harness, tmp_path: Path) -> None:
    """The refinery's gt_done closed the MR on its word: nothing was merged anywhere."""
    origin = local_origin(h, tmp_path)
    bead_id, refinery, mr = await polecat_done_and_refinery_approves(h, {"work.txt": "work\n"}, origin)
    assert h.bead(mr["bead_id"])["status"] == "closed" and h.bead(bead_id)["status"] == "closed"
    assert h.agent(refinery)["status"] == "idle" and h.agent(refinery)["current_hook_bead_id"] is None
    assert show(origin, "main:work.txt") == "work\n"
    assert violations(h) == []


async def test_an_approved_branch_that_is_not_on_origin_fails_the_mr_and_reopens_the_bead(h: Harness, tmp_path: Path) -> None:
    local_origin(h, tmp_path)
    bead_id, _, mr = await polecat_done_and_refinery_approves(h)
    assert h.bead(mr["bead_id"])["status"] == "failed"
    assert h.bead(bead_id)["status"] == "open"


async def test_a_merge_conflict_sends_the_mr_back_with_a_rework_bead_on_its_branch(h: Harness, tmp_path: Path) -> None:
    origin = local_origin(h, tmp_path)
    bead_id, _, mr = await polecat_done_and_refinery_approves(h, {"README.md": "mine\n"}, origin,
                                                              then_on_main={"README.md": "theirs\n"})
    mr_now = h.bead(mr["bead_id"])
    assert mr_now["status"] == "open" and not mr_now["metadata"].get("approved_at")
    [rework] = [b for b in h.beads(type="issue") if "gt:rework" in b["labels"]]
    assert rework["metadata"]["branch"] == h.container.starts[0]["branch"] and "README.md" in rework["body"]
    assert h.bead(bead_id)["status"] == "in_review"
    assert show(origin, "main:README.md") == "theirs\n"


async def test_request_changes_creates_rework_that_blocks_the_mr_until_done(h: Harness) -> None:
    from worker_api.routes_tools import RequestChanges, _request_changes_tx

    bead_id, polecat = await dispatch_one(h)
    h.event("agent_done", polecat, branch="gt/x/1")
    await h.tick()
    [mr] = h.beads(type="merge_request")
    out = h.sync(_request_changes_tx, h.town_id, mr["assignee_agent_id"], RequestChanges(feedback="add tests"),
                 h.clock.ms)
    rework = h.bead(out["rework_bead_id"])
    assert "gt:rework" in rework["labels"] and h.bead(mr["bead_id"])["status"] == "open"
    await h.tick()
    rework = h.bead(out["rework_bead_id"])
    assert rework["status"] == "in_progress" and h.container.starts[-1]["branch"] == "gt/x/1"
    assert h.bead(mr["bead_id"])["status"] == "open"  # blocked while the rework runs
    h.event("agent_done", rework["assignee_agent_id"], branch="gt/x/1")
    h.clock.advance(60)
    await h.tick()
    assert h.bead(out["rework_bead_id"])["status"] == "closed"
    assert h.bead(mr["bead_id"])["status"] == "in_progress"  # re-reviewed
    assert h.bead(bead_id)["status"] == "in_review" and violations(h) == []


async def test_regression_1358_dispatch_timeout_leaves_the_agent_working_and_heartbeats_decide(h: Harness) -> None:
    h.container.outcomes = ["timeout"]
    bead_id, agent_id = await dispatch_one(h)
    assert h.agent(agent_id)["status"] == "working" and h.agent(agent_id)["current_hook_bead_id"] == bead_id
    history = h.sync(bx.bead_history, h.town_id, bead_id)
    assert history[-1]["event_type"] == "dispatch_failed" and history[-1]["payload"]["outcome"] == "timeout"
    # The container did start it: heartbeats keep it working, the bead stays hooked.
    for _ in range(6):
        h.clock.advance(30)
        h.heartbeat(agent_id)
        await h.tick()
    assert h.agent(agent_id)["status"] == "working" and h.bead(bead_id)["status"] == "in_progress"
    assert len(h.container.starts) == 1


async def test_dispatch_timeout_without_heartbeats_releases_and_redispatches_after_backoff(h: Harness) -> None:
    h.container.outcomes = ["timeout"]
    bead_id, agent_id = await dispatch_one(h)
    h.clock.advance(91)
    await h.tick()  # working + stale → idle
    assert h.agent(agent_id)["status"] == "idle"
    await h.tick()  # idle + hook + stale → unhook, bead open
    assert h.bead(bead_id)["status"] == "open" and violations(h) == []
    await h.tick()  # Rule 1 (backoff elapsed) redispatches to a fresh polecat
    bead = h.bead(bead_id)
    assert bead["dispatch_attempts"] == 2 and bead["assignee_agent_id"] != agent_id
    assert h.agent(agent_id)["current_hook_bead_id"] is None and violations(h) == []


async def test_container_not_found_is_ignored_during_the_cold_start_grace(h: Harness) -> None:
    bead_id, agent_id = await dispatch_one(h)
    h.container.statuses[agent_id] = "not_found"
    h.clock.advance(60)
    h.heartbeat(agent_id)
    await h.tick()
    assert h.agent(agent_id)["status"] == "working"
    h.clock.advance(181)
    h.heartbeat(agent_id)  # heartbeat fresh, but the activity watermark (dispatch) is older than the grace
    h.sync(lambda c: c.execute("UPDATE agents SET last_activity_at = ? WHERE agent_id = ?",
                               (h.clock.ms - 181_000, agent_id)))
    await h.tick()
    assert h.agent(agent_id)["status"] == "idle"


async def test_orphaned_bead_cancelled_for_a_deleted_bead_is_terminal_not_retried(h: Harness) -> None:
    event_id = h.event("bead_cancelled", bead_id="bead-gone")
    await h.tick()
    event = h.sync(ev.get_event, h.town_id, event_id)
    assert event["processed_at"] is not None
    row = h.sync(lambda c: c.execute("SELECT attempts, last_error FROM town_events WHERE id = ?", (event_id,)).fetchone())
    assert row[0] == 0 and "not found" in row[1]


async def test_bead_cancelled_cancels_a_live_bead_and_unhooks_its_agent(h: Harness) -> None:
    bead_id, agent_id = await dispatch_one(h)
    h.event("bead_cancelled", bead_id=bead_id)
    await h.tick()
    assert h.bead(bead_id)["status"] == "failed" and h.agent(agent_id)["current_hook_bead_id"] is None
    assert h.agent(agent_id)["status"] == "idle" and violations(h) == []


async def test_deleting_a_bead_deletes_its_queued_events(h: Harness) -> None:
    bead_id = h.sling()
    h.event("bead_cancelled", bead_id=bead_id)
    assert h.sync(bx.delete_bead, h.town_id, bead_id)
    assert h.sync(ev.list_events, h.town_id, event_type="bead_cancelled") == []


async def test_an_event_that_keeps_failing_is_given_up_after_5_attempts(h: Harness, monkeypatch: Any) -> None:
    from worker_api.reconciler import events_apply

    def boom(conn: Any, ctx: Any, event: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(events_apply._HANDLERS, "pr_auto_merge", boom)
    event_id = h.event("pr_auto_merge", bead_id="x")
    for i in range(5):
        assert h.sync(ev.get_event, h.town_id, event_id)["processed_at"] is None, i
        await h.tick()
    assert h.sync(ev.get_event, h.town_id, event_id)["processed_at"] is not None


async def test_events_for_unknown_agents_are_terminal(h: Harness) -> None:
    ids = [h.event(t, "ghost", status="completed") for t in ("agent_done", "agent_completed", "container_status")]
    await h.tick()
    assert all(h.sync(ev.get_event, h.town_id, i)["processed_at"] for i in ids)


async def test_stale_completion_does_not_clobber_a_new_dispatch(h: Harness) -> None:
    """A completion of the previous run, recorded just before (or while) the agent is redispatched,
    must leave the new run alone."""
    bead_id, agent_id = await dispatch_one(h)
    h.clock.advance(100)
    h.heartbeat(agent_id)
    h.event("agent_completed", agent_id, status="completed", reason="idle timeout")  # old run ended
    # The same agent is put back on the bead (reassign) and redispatched in the same tick the
    # completion is drained... the completion is older than the new dispatch.
    h.sync(lambda c: c.execute("UPDATE agents SET working_since = ? WHERE agent_id = ?", (h.clock.ms + 1, agent_id)))
    await h.tick()
    agent = h.agent(agent_id)
    assert agent["status"] == "working" and agent["current_hook_bead_id"] == bead_id
    # Also within the race window just after the dispatch.
    h.sync(lambda c: c.execute("UPDATE agents SET working_since = ? WHERE agent_id = ?", (h.clock.ms - 5000, agent_id)))
    h.event("agent_completed", agent_id, status="failed", reason="crash of the old run")
    await h.tick()
    assert h.agent(agent_id)["status"] == "working" and h.bead(bead_id)["status"] == "in_progress"


async def test_completion_of_the_current_run_releases_the_agent_and_rule3_reopens(h: Harness) -> None:
    bead_id, agent_id = await dispatch_one(h)
    h.clock.advance(120)
    h.event("agent_completed", agent_id, status="completed", reason="idle timeout")
    await h.tick()
    assert h.agent(agent_id)["status"] == "idle" and h.agent(agent_id)["current_hook_bead_id"] is None
    assert h.bead(bead_id)["status"] == "in_progress"
    h.clock.advance(5 * 60)
    await h.tick()
    assert h.bead(bead_id)["status"] == "open"
    await h.tick()
    assert h.bead(bead_id)["dispatch_attempts"] == 2 and h.bead(bead_id)["status"] == "in_progress"


async def test_failed_completion_fails_the_bead(h: Harness) -> None:
    bead_id, agent_id = await dispatch_one(h)
    h.clock.advance(60)
    h.event("agent_completed", agent_id, status="failed", reason="kilo exited unexpectedly")
    await h.tick()
    assert h.bead(bead_id)["status"] == "failed" and violations(h) == []


async def test_regression_1342_refinery_completion_keeps_hook_and_attempts(h: Harness) -> None:
    bead_id, polecat = await dispatch_one(h)
    h.event("agent_done", polecat, branch="b")
    await h.tick()
    [mr] = h.beads(type="merge_request")
    refinery = mr["assignee_agent_id"]
    h.sync(lambda c: c.execute("UPDATE agents SET dispatch_attempts = 3 WHERE agent_id = ?", (refinery,)))
    h.clock.advance(60)
    h.event("agent_completed", refinery, status="completed", reason="idle timeout")
    await h.tick()
    agent = h.agent(refinery)
    assert agent["current_hook_bead_id"] == mr["bead_id"] and agent["dispatch_attempts"] >= 3
    # R6 redispatches within the MR's cap; at the cap the MR fails and the source reopens.
    for _ in range(12):
        h.clock.advance(600)
        h.heartbeat(refinery)
        h.event("agent_completed", refinery, status="completed", reason="idle timeout")
        await h.tick()
    assert h.bead(mr["bead_id"])["status"] == "failed"
    assert h.bead(mr["bead_id"])["dispatch_attempts"] == 5
    assert violations(h) == []


async def test_unhooked_refinery_done_without_pr_escalates_and_merges_nothing(h: Harness) -> None:
    h.sync(lambda c: c.execute("INSERT INTO agents (town_id, agent_id, role, name, status, created_at) VALUES"
                               " ('town-1', 'ref-x', 'refinery', 'Ref', 'idle', 1)"))
    h.event("agent_done", "ref-x", branch="main")
    await h.tick()
    [esc] = h.beads(type="escalation")
    assert "without an MR" in esc["title"]


async def test_eviction_context_keeps_the_branch_for_the_next_dispatch(h: Harness) -> None:
    bead_id, agent_id = await dispatch_one(h)
    h.event("agent_eviction_context", agent_id, branch="gt/wip/branch", agent_name="x", saved_at=1)
    await h.tick()
    assert h.bead(bead_id)["metadata"]["branch"] == "gt/wip/branch"


async def test_gupp_nudge_is_queued_and_pushed(h: Harness) -> None:
    bead_id, agent_id = await dispatch_one(h)
    h.sync(lambda c: c.execute("UPDATE agents SET last_event_at = ? WHERE agent_id = ?", (h.clock.ms, agent_id)))
    h.clock.advance(16 * 60)
    h.heartbeat(agent_id)
    await h.tick()
    assert h.container.messages and h.container.messages[0][0] == agent_id
    assert "quiet" in h.container.messages[0][1]
