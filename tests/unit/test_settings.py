"""Town settings and rig overrides (issue 12, item 6) over HTTP, and what a dispatch takes from them."""
from __future__ import annotations

from typing import Any

import pytest

from tests.test_reconciler_support import Harness, h  # noqa: F401 (fixture)
from tests.test_worker_api_support import ADMIN_TOKEN, Worker, clock, worker  # noqa: F401
from tests.unit.test_users import new_user, user_town
from worker_api import settings as st

DEFAULTS = {"default_model": None, "small_model": None, "env_vars": {}, "git_author_name": None,
            "git_author_email": None, "disable_ai_coauthor": False, "code_review": True, "merge_strategy": "direct"}


async def settings(worker: Worker, town: str, token: str, body: Any = None) -> tuple[int, Any]:
    return await worker.call("PATCH" if body is not None else "GET", f"/api/towns/{town}/settings", token=token,
                             json=body)


async def test_settings_patch_merges_and_null_resets(worker: Worker) -> None:
    _, token = await new_user(worker)
    town = await user_town(worker, token)
    assert await settings(worker, town, token) == (200, DEFAULTS)
    status, s = await settings(worker, town, token, {"default_model": "fake/m2", "env_vars": {"A": "1", "B": "2"},
                                                     "git_author_name": "Ada", "git_author_email": "ada@example.com",
                                                     "code_review": "off", "merge_strategy": "pr"})
    assert status == 200 and s["env_vars"] == {"A": "1", "B": "2"} and s["code_review"] is False
    status, s = await settings(worker, town, token, {"env_vars": {"A": None, "C": "3"}, "git_author_name": None})
    assert s == {**DEFAULTS, "default_model": "fake/m2", "env_vars": {"B": "2", "C": "3"},
                 "git_author_email": "ada@example.com", "code_review": False, "merge_strategy": "pr"}
    assert await settings(worker, town, token) == (200, s)
    assert (await settings(worker, town, token, {}))[1] == s  # an empty patch changes nothing


@pytest.mark.parametrize("key", ["GASTOWN_CONTAINER_TOKEN", "GASTOWN_ANYTHING", "KILO_CONFIG_CONTENT", "KILOCODE_TOKEN",
                                 "PATH", "HOME", "XDG_DATA_HOME", "LD_PRELOAD", "https_proxy", "HTTP_PROXY",
                                 "SSL_CERT_FILE", "NODE_OPTIONS", "GIT_SSH_COMMAND", "GIT_CONFIG_COUNT", "GH_TOKEN",
                                 "PYTHONPATH", "pythonstartup"])
async def test_a_reserved_env_key_is_a_400_naming_it(worker: Worker, key: str) -> None:
    town, _ = await worker.create_town()
    await worker.call("POST", f"/api/towns/{town}/rigs", token=ADMIN_TOKEN,
                      json={"rig_id": "rig-1", "name": "r", "git_url": "https://example.com/r.git"})
    for path in (f"/api/towns/{town}/settings", f"/api/towns/{town}/rigs/rig-1"):
        status, err = await worker.call("PATCH", path, token=ADMIN_TOKEN, json={"env_vars": {"OK_VAR": "1", key: "x"}})
        assert status == 400 and err["error"]["code"] == "RESERVED_ENV_KEY" and key in err["error"]["message"], err
    assert (await settings(worker, town, ADMIN_TOKEN))[1]["env_vars"] == {}  # nothing of the refused patch stuck


@pytest.mark.parametrize("body", [
    {"env_vars": {"1BAD": "x"}}, {"env_vars": {"A B": "x"}}, {"env_vars": {"A": 5}}, {"env_vars": ["A"]},
    {"code_review": "maybe"}, {"merge_strategy": "squash"}, {"git_author_email": "not an email"},
    {"git_author_name": "Eve <eve@x>"}, {"git_author_name": "line\nbreak"}, {"default_model": "has space"},
    {"env_vars": {"FOO\n": "x"}}, {"env_vars": {"PATH\n": "x"}},
    {"disable_ai_coauthor": "yes"},
])
async def test_bad_settings_are_400(worker: Worker, body: dict) -> None:
    town, _ = await worker.create_town()
    status, err = await settings(worker, town, ADMIN_TOKEN, body)
    assert status == 400 and err["error"]["code"] in ("INVALID_REQUEST", "VALIDATION_ERROR"), err


async def test_settings_are_the_owners_only(worker: Worker) -> None:
    _, ada = await new_user(worker, "ada")
    _, bob = await new_user(worker, "bob")
    town = await user_town(worker, ada)
    assert (await settings(worker, town, bob))[0] == 403
    assert (await settings(worker, town, bob, {"env_vars": {"A": "1"}}))[0] == 403
    agent_town, agent_token = await worker.create_town()
    # An agent (container token) may not change what every other agent runs with.
    assert (await settings(worker, agent_town, agent_token, {"env_vars": {"A": "1"}}))[0] == 403


async def test_rig_overrides_win_and_null_falls_back_to_the_town(worker: Worker) -> None:
    town, container_token = await worker.create_town()
    await worker.call("POST", f"/api/towns/{town}/rigs", token=ADMIN_TOKEN,
                      json={"rig_id": "rig-1", "name": "r", "git_url": "https://example.com/r.git"})
    await settings(worker, town, ADMIN_TOKEN, {"env_vars": {"A": "town", "B": "town"}, "git_author_name": "Town"})
    status, rig = await worker.call("PATCH", f"/api/towns/{town}/rigs/rig-1", token=ADMIN_TOKEN,
                                    json={"env_vars": {"B": "rig"}, "git_author_name": "Rig", "merge_strategy": "pr",
                                          "default_model": "fake/big"})
    assert status == 200 and rig["config"]["git_author_name"] == "Rig"
    eff = await worker.db.run(lambda c: st.effective_tx(c, town, rig))
    assert eff.env_vars == {"A": "town", "B": "rig"} and eff.git_author_name == "Rig" and eff.merge_strategy == "pr"
    assert eff.model == "fake/big"
    status, rig = await worker.call("PATCH", f"/api/towns/{town}/rigs/rig-1", token=ADMIN_TOKEN,
                                    json={"git_author_name": None})
    eff = await worker.db.run(lambda c: st.effective_tx(c, town, rig))
    assert eff.git_author_name == "Town"
    status, scm = await worker.call("GET", f"/api/towns/{town}/rigs/rig-1/scm", token=ADMIN_TOKEN)
    assert scm["merge_strategy"] == "pr"  # one setting, seen the same from both routes
    assert (await worker.call("PATCH", f"/api/towns/{town}/rigs/nope", token=ADMIN_TOKEN, json={}))[0] == 404
    # The owner sees the rig's env vars; an agent (every rig's agents share the town's container token) does not.
    assert (await worker.call("GET", f"/api/towns/{town}/rigs", token=ADMIN_TOKEN))[1]["rigs"][0]["config"]["env_vars"]
    _, listed = await worker.call("GET", f"/api/towns/{town}/rigs", token=container_token)
    assert "env_vars" not in listed["rigs"][0]["config"] and listed["rigs"][0]["config"]["merge_strategy"] == "pr"


async def test_a_dispatch_carries_the_effective_settings(h: Harness) -> None:
    def configure(conn: Any) -> None:
        st.patch_town_tx(conn, h.town_id, st.SettingsPatch(env_vars={"CUSTOM": "town", "SHARED": "town"},
                                                            git_author_name="Acme Bot", small_model="fake/small"))
        conn.execute("UPDATE rigs SET config = ? WHERE town_id = ?", ('{"env_vars": {"SHARED": "rig"}}', h.town_id))
    h.sync(configure)
    h.sling("Fix it")
    await h.tick()
    [req] = h.container.starts
    assert req["env_vars"] == {"CUSTOM": "town", "SHARED": "rig"} and req["small_model"] == "fake/small"
    assert req["git_author_name"] == "Acme Bot" and req["disable_ai_coauthor"] is False
    assert f"Co-authored-by: {req['name']} (gastown) <{req['agent_id']}@gastown.local>" in req["system_prompt"]
    h.sync(st.patch_town_tx, h.town_id, st.SettingsPatch(disable_ai_coauthor=True))
    h.sling("Fix that")
    await h.tick()
    assert "Co-authored-by" not in h.container.starts[-1]["system_prompt"]
    assert h.container.starts[-1]["disable_ai_coauthor"] is True


async def code_review_off(h: Harness, tmp_path: Any) -> Any:
    from tests.unit.test_reconciler_tick import local_origin

    origin = local_origin(h, tmp_path)
    h.sync(st.patch_town_tx, h.town_id, st.SettingsPatch(code_review=False))
    return origin


async def test_code_review_off_lands_the_branch_without_a_refinery(h: Harness, tmp_path: Any) -> None:
    from tests.gitrepos import push_branch, show
    from tests.unit.test_reconciler_tick import dispatch_one

    origin = await code_review_off(h, tmp_path)
    bead_id, polecat = await dispatch_one(h)
    branch = h.container.starts[0]["branch"]
    push_branch(origin, origin.parent / "polecat", branch, {"work.txt": "work\n"})
    h.clock.advance(30)
    h.event("agent_done", polecat, branch=branch, summary="did it")
    await h.tick()  # the MR is created approved, and put in line (open → in_progress)
    h.clock.advance(30)
    await h.tick()  # R8 lands it
    [mr] = h.beads(type="merge_request")
    assert mr["status"] == "closed" and mr["metadata"]["approved_by"] == "code_review_off"
    assert h.bead(bead_id)["status"] == "closed" and show(origin, "main:work.txt") == "work\n"
    assert [s["role"] for s in h.container.starts] == ["polecat"]  # no refinery was ever started


async def test_code_review_off_watches_a_polecats_pr_without_a_refinery(h: Harness, tmp_path: Any) -> None:
    from tests.unit.test_reconciler_tick import dispatch_one

    await code_review_off(h, tmp_path)
    h.sync(lambda c: c.execute("UPDATE rigs SET git_url = 'https://github.com/acme/widgets.git'"))
    _, polecat = await dispatch_one(h)
    h.clock.advance(30)
    h.event("agent_done", polecat, branch=h.container.starts[0]["branch"],
            pr_url="https://github.com/acme/widgets/pull/7")
    await h.tick()
    [mr] = h.beads(type="merge_request")
    assert mr["status"] == "in_progress" and mr["metadata"]["fast_tracked"] is True
    h.clock.advance(31 * 60)
    await h.tick()
    assert h.bead(mr["bead_id"])["status"] == "in_progress"  # not failed as an orphaned PR (R4)
    assert [s["role"] for s in h.container.starts] == ["polecat"]


async def test_a_review_and_merge_convoy_bead_is_still_reviewed_with_code_review_off(h: Harness, tmp_path: Any) -> None:
    from worker_api.routes_user import ConvoyBead, CreateConvoy, _create_convoy_tx

    await code_review_off(h, tmp_path)
    convoy = h.sync(_create_convoy_tx, h.town_id, CreateConvoy(rig_id="rig-1", title="C", beads=[ConvoyBead(title="a")]),
                    h.clock.ms)
    await h.tick()
    [req] = h.container.starts
    h.clock.advance(30)
    h.event("agent_done", req["agent_id"], branch=req["branch"])
    await h.tick()
    [mr] = h.beads(type="merge_request")
    assert "approved_at" not in mr["metadata"] and convoy["bead_ids"]
    assert h.container.starts[-1]["role"] == "refinery"


async def test_a_fast_tracked_mr_sent_back_for_a_conflict_still_skips_review_after_the_fix(h: Harness,
                                                                                          tmp_path: Any) -> None:
    """A merge conflict cleared the MR's approval, so after the fix a refinery was dispatched to
    review it although code review is off for the rig."""
    from tests.gitrepos import push_branch, show
    from tests.unit.test_reconciler_tick import dispatch_one
    from worker_api import lifecycle as lc

    origin = await code_review_off(h, tmp_path)
    _, polecat = await dispatch_one(h)
    branch = h.container.starts[0]["branch"]
    push_branch(origin, origin.parent / "polecat", branch, {"README.md": "mine\n"})
    push_branch(origin, origin.parent / "other", "main", {"README.md": "theirs\n"})
    h.clock.advance(30)
    h.event("agent_done", polecat, branch=branch)
    for _ in range(2):
        await h.tick()
        h.clock.advance(30)
    [mr] = h.beads(type="merge_request")
    [rework] = [b for b in h.beads(type="issue") if "gt:rework" in b["labels"]]
    assert h.bead(mr["bead_id"])["status"] == "open" and h.bead(mr["bead_id"])["metadata"]["approved_at"]
    push_branch(origin, origin.parent / "polecat", branch, {"README.md": "theirs\n", "work.txt": "work\n"})
    h.sync(lc.transition_bead, h.town_id, rework["bead_id"], "closed", h.clock.ms, reason="done")
    for _ in range(3):
        h.clock.advance(31)
        await h.tick()
    assert h.bead(mr["bead_id"])["status"] == "closed" and show(origin, "main:work.txt") == "work\n"
    assert "refinery" not in [s["role"] for s in h.container.starts]
