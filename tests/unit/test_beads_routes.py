"""User and tool routes of the town (rigs, beads, sling, convoys, mail, escalations...) over HTTP."""
from __future__ import annotations

from typing import Any

import pytest

from tests.test_worker_api_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    CONTROL_TOKEN,
    Worker,
    clock,
    town,
    worker,
)
from worker_api import beads as bx
from worker_api import store


async def _rig(worker: Worker, town_id: str, token: str = ADMIN_TOKEN, **kw: Any) -> dict:
    body = {"rig_id": "rig-1", "name": "Repo", "git_url": "https://example.com/r.git", **kw}
    status, data = await worker.call("POST", f"/api/towns/{town_id}/rigs", token=token, json=body)
    assert status == 201, data
    return data


async def test_rigs_create_list_and_conflict(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    rig = await _rig(worker, town_id, token=token)
    assert rig["rig_id"] == "rig-1" and rig["default_branch"] == "main"
    status, data = await worker.call("GET", f"/api/towns/{town_id}/rigs", token=token)
    assert status == 200 and [r["rig_id"] for r in data["rigs"]] == ["rig-1"]
    status, data = await worker.call("POST", f"/api/towns/{town_id}/rigs", token=token,
                                     json={"rig_id": "rig-1", "name": "x", "git_url": "https://e.com/x"})
    assert status == 409 and data["error"]["code"] == "RIG_EXISTS"


@pytest.mark.parametrize("body", [
    {}, {"name": "x"}, {"name": "x", "git_url": "ftp://x"}, {"name": "x", "git_url": "--upload-pack=x"},
    {"name": "x", "git_url": "https://e.com/x", "default_branch": "a..b"},
    {"name": "x", "git_url": "https://e.com/x", "rig_id": "../etc"}, {"name": 5, "git_url": "https://e.com/x"},
])
async def test_bad_rig_bodies_are_400(worker: Worker, town: tuple[str, str], body: dict) -> None:
    status, data = await worker.call("POST", f"/api/towns/{town[0]}/rigs", token=ADMIN_TOKEN, json=body)
    assert status == 400, data


async def test_sling_creates_an_open_bead_and_bead_routes_work(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await _rig(worker, town_id)
    status, data = await worker.call("POST", f"/api/towns/{town_id}/sling", token=token,
                                     json={"rig_id": "rig-1", "title": "Fix it", "body": "details"})
    assert status == 201 and data["status"] == "open"
    bead_id = data["bead_id"]
    status, bead = await worker.call("GET", f"/api/towns/{town_id}/beads/{bead_id}", token=token)
    assert status == 200 and bead["title"] == "Fix it" and bead["assignee_agent_id"] is None
    assert bead["dispatch_attempts"] == 0 and bead["type"] == "issue"
    status, data = await worker.call("GET", f"/api/towns/{town_id}/beads?status=open&rig_id=rig-1", token=token)
    assert [b["bead_id"] for b in data["beads"]] == [bead_id]
    status, bead = await worker.call("PATCH", f"/api/towns/{town_id}/beads/{bead_id}", token=token,
                                     json={"title": "Fix it now", "priority": "high"})
    assert status == 200 and bead["title"] == "Fix it now" and bead["priority"] == "high"
    status, bead = await worker.call("POST", f"/api/towns/{town_id}/beads/{bead_id}/close", token=token, json={})
    assert status == 200 and bead["status"] == "closed" and bead["closed_at"] is not None
    status, data = await worker.call("DELETE", f"/api/towns/{town_id}/beads/{bead_id}", token=token)
    assert status == 200 and data == {"deleted": True}
    status, data = await worker.call("GET", f"/api/towns/{town_id}/beads/{bead_id}", token=token)
    assert status == 404 and data["error"]["code"] == "BEAD_NOT_FOUND"


@pytest.mark.parametrize("method, path, body, code", [
    ("POST", "/sling", {"rig_id": "nope", "title": "t"}, 404),
    ("POST", "/sling", {"rig_id": "rig-1"}, 400),
    ("POST", "/sling", {"rig_id": "rig-1", "title": ""}, 400),
    ("POST", "/sling", {"rig_id": "rig-1", "title": "t", "metadata": {"convoy_id": "x"}}, 400),
    ("POST", "/beads", {"title": "t"}, 400),
    ("POST", "/beads", {"rig_id": "rig-1", "title": "t", "type": "convoy"}, 400),
    ("POST", "/beads", {"rig_id": "rig-1", "title": "t", "priority": "urgent"}, 400),
    ("GET", "/beads?status=weird", None, 400),
    ("GET", "/beads?type=weird", None, 400),
    ("GET", "/beads/bad..id", None, 400),
    ("PATCH", "/beads/missing", {"title": "x"}, 404),
    ("PATCH", "/beads/missing", {"status": "in_progress"}, 400),
    ("DELETE", "/beads/missing", None, 404),
    ("POST", "/beads/missing/close", {}, 404),
    ("POST", "/beads/missing/reassign", {}, 404),
    ("POST", "/convoys", {"rig_id": "rig-1", "title": "c", "beads": []}, 400),
    ("POST", "/convoys", {"rig_id": "rig-1", "title": "c", "beads": [{"title": "a", "depends_on": [0]}]}, 400),
    ("POST", "/convoys", {"rig_id": "rig-1", "title": "c", "beads": [{"title": "a", "depends_on": [5]}]}, 400),
    ("POST", "/convoys", {"rig_id": "rig-1", "title": "c", "beads": [{"title": "a", "depends_on": [1]},
                                                                    {"title": "b", "depends_on": [0]}]}, 409),
    ("POST", "/convoys", {"rig_id": "rig-1", "title": "c", "beads": [{"title": "a"}], "merge_mode": "yolo"}, 400),
    ("GET", "/convoys/missing", None, 404),
    ("POST", "/convoys/missing/start", None, 404),
    ("POST", "/mail", {"from_agent_id": "a", "to_agent_id": "nobody", "subject": "s", "body": "b"}, 404),
    ("POST", "/mail", {"from_agent_id": "a", "subject": "s", "body": "b"}, 400),
    ("POST", "/escalations", {"agent_id": "a"}, 400),
    ("GET", "/agents/nobody/prime", None, 404),
    ("GET", "/agents/nobody/mail", None, 404),
    ("POST", "/agents/nobody/checkpoint", {"data": {}}, 404),
    ("POST", "/agents/nobody/reset", None, 404),
    ("POST", "/agents/nobody/request-changes", {"feedback": "x"}, 404),
    ("POST", "/agents/nobody/request-changes", {}, 400),
    ("POST", "/sling", "not json", 400),
])
async def test_bad_inputs_are_4xx(worker: Worker, town: tuple[str, str], method: str, path: str, body: Any,
                                  code: int) -> None:
    town_id, token = town
    await _rig(worker, town_id)
    if body == "not json":
        resp = await worker.client.request(method, f"/api/towns/{town_id}{path}", data=b"{nope",
                                           headers={"Authorization": f"Bearer {token}"})
        assert resp.status == code
        return
    status, data = await worker.call(method, f"/api/towns/{town_id}{path}", token=token, json=body)
    assert status == code, data
    assert set(data["error"]) >= {"code", "message"}


async def test_routes_need_a_token_of_this_town(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    _, other_token = await worker.create_town(name="Other")
    for method, path in (("GET", "/beads"), ("POST", "/sling"), ("GET", "/status"), ("GET", "/invariants")):
        status, _ = await worker.call(method, f"/api/towns/{town_id}{path}", token=other_token, json={})
        assert status == 403
        status, _ = await worker.call(method, f"/api/towns/{town_id}{path}", json={})
        assert status == 401


async def test_convoy_create_get_start_close(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await _rig(worker, town_id)
    body = {"rig_id": "rig-1", "title": "Big change", "merge_mode": "review-then-land", "staged": True,
            "beads": [{"title": "a"}, {"title": "b", "depends_on": [0]}, {"title": "c", "depends_on": [0, 1]}]}
    status, data = await worker.call("POST", f"/api/towns/{town_id}/convoys", token=token, json=body)
    assert status == 201 and len(data["bead_ids"]) == 3
    cid, ids = data["convoy_id"], data["bead_ids"]
    status, convoy = await worker.call("GET", f"/api/towns/{town_id}/convoys/{cid}", token=token)
    assert convoy["staged"] is True and convoy["status"] == "open"
    assert convoy["feature_branch"].startswith("convoy/big-change/") and convoy["feature_branch"].endswith("/head")
    assert convoy["progress"] == {"total": 3, "closed": 0, "failed": 0, "open": 3}
    assert {b["bead_id"]: b["blocked_by"] for b in convoy["beads"]} == {ids[0]: [], ids[1]: [ids[0]],
                                                                      ids[2]: sorted([ids[0], ids[1]])}
    status, convoy = await worker.call("POST", f"/api/towns/{town_id}/convoys/{cid}/start", token=token)
    assert status == 200 and convoy["staged"] is False and convoy["status"] == "in_progress"
    status, data = await worker.call("GET", f"/api/towns/{town_id}/convoys", token=token)
    assert [c["bead_id"] for c in data["convoys"]] == [cid]
    status, convoy = await worker.call("POST", f"/api/towns/{town_id}/convoys/{cid}/close", token=token)
    assert status == 200 and convoy["status"] == "closed"
    assert {b["status"] for b in convoy["beads"]} == {"failed"}  # cancelled with the convoy
    status, data = await worker.call("POST", f"/api/towns/{town_id}/convoys/{cid}/start", token=token)
    assert status == 409


async def test_mail_prime_checkpoint_escalation(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await _rig(worker, town_id)
    await worker.create_agent(town_id, "mayor", agent_id="mayor-1")
    await worker.create_agent(town_id, "polecat", agent_id="pc-1", rig_id="rig-1")
    status, mail = await worker.call("POST", f"/api/towns/{town_id}/mail", token=token,
                                     json={"from_agent_id": "mayor-1", "to_agent_id": "pc-1", "subject": "hi",
                                           "body": "do X"})
    assert status == 201 and mail["subject"] == "hi"
    status, prime = await worker.call("GET", f"/api/towns/{town_id}/agents/pc-1/prime", token=token)
    assert status == 200 and prime["hooked_bead"] is None and [m["subject"] for m in prime["mail"]] == ["hi"]
    status, data = await worker.call("GET", f"/api/towns/{town_id}/agents/pc-1/mail", token=token)
    assert [m["body"] for m in data["mail"]] == ["do X"]
    status, data = await worker.call("GET", f"/api/towns/{town_id}/agents/pc-1/mail", token=token)
    assert data["mail"] == []  # delivered once
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/checkpoint", token=token,
                                     json={"data": {"step": 3}})
    assert status == 200 and data == {"saved": True}
    status, prime = await worker.call("GET", f"/api/towns/{town_id}/agents/pc-1/prime", token=token)
    assert prime["agent"]["checkpoint"] == {"step": 3}
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/checkpoint", token=token,
                                     json={"data": "x" * 70000})
    assert status == 413
    status, data = await worker.call("POST", f"/api/towns/{town_id}/escalations", token=token,
                                     json={"agent_id": "pc-1", "title": "Stuck", "priority": "high"})
    assert status == 201
    esc = await worker.db.run(bx.get_bead, town_id, data["bead_id"])
    assert esc["type"] == "escalation" and "severity:high" in esc["labels"]
    pending = await worker.db.run(lambda c: [r[0] for r in c.execute(
        "SELECT message FROM nudges WHERE town_id = ? AND agent_id = 'mayor-1'", (town_id,))])
    assert any("Stuck" in m for m in pending)
    ack = f"/api/towns/{town_id}/escalations/{data['bead_id']}/acknowledge"
    status, bead = await worker.call("POST", ack, token=token, json={"agent_id": "mayor-1", "note": "on it"})
    assert status == 200 and bead["status"] == "open" and bead["metadata"]["acknowledged_by"] == "mayor-1"
    status, again = await worker.call("POST", ack, token=token)  # idempotent: the first acknowledgement counts
    assert status == 200 and again["metadata"]["acknowledged_at"] == bead["metadata"]["acknowledged_at"]
    status, err = await worker.call("POST", f"/api/towns/{town_id}/escalations/bd-nope/acknowledge", token=token)
    assert status == 404 and err["error"]["code"] == "BEAD_NOT_FOUND"
    status, sling = await worker.call("POST", f"/api/towns/{town_id}/sling", token=token,
                                      json={"rig_id": "rig-1", "title": "t"})
    status, err = await worker.call("POST", f"/api/towns/{town_id}/escalations/{sling['bead_id']}/acknowledge",
                                    token=token, json={})
    assert status == 409 and err["error"]["code"] == "NOT_AN_ESCALATION"


async def test_request_changes_is_refinery_only(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, "polecat", agent_id="pc-1", rig_id="rig-1")
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/request-changes", token=token,
                                     json={"feedback": "no"})
    assert status == 403 and data["error"]["code"] == "ROLE_FORBIDDEN"


async def test_status_invariants_and_no_control_token(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await _rig(worker, town_id)
    await worker.call("POST", f"/api/towns/{town_id}/sling", token=token, json={"rig_id": "rig-1", "title": "t"})
    status, data = await worker.call("GET", f"/api/towns/{town_id}/status", token=token)
    assert status == 200 and data["beads"]["by_status"] == {"open": 1} and data["pending_events"] == 1
    status, data = await worker.call("GET", f"/api/towns/{town_id}/invariants", token=token)
    assert status == 200 and data == {"violations": []}
    for path in ("/status", "/rigs", "/beads", "/convoys"):
        resp = await worker.client.get(f"/api/towns/{town_id}{path}", headers={"Authorization": f"Bearer {token}"})
        assert CONTROL_TOKEN not in await resp.text()


async def test_reassign_and_reset(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await _rig(worker, town_id)
    await worker.create_agent(town_id, "polecat", agent_id="pc-1", rig_id="rig-1")
    _, data = await worker.call("POST", f"/api/towns/{town_id}/sling", token=token, json={"rig_id": "rig-1", "title": "t"})
    bead_id = data["bead_id"]
    status, bead = await worker.call("POST", f"/api/towns/{town_id}/beads/{bead_id}/reassign", token=token,
                                     json={"agent_id": "pc-1"})
    assert status == 200 and bead["assignee_agent_id"] == "pc-1" and bead["hooked_agents"] == ["pc-1"]
    await worker.db.run(store.set_agent_status, town_id, "pc-1", "working", worker.clock.ms)
    status, data = await worker.call("POST", f"/api/towns/{town_id}/beads/{bead_id}/reassign", token=token, json={})
    assert status == 200 and data["assignee_agent_id"] is None and data["hooked_agents"] == []
    status, agent = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/reset", token=token)
    assert status == 200 and agent["status"] == "idle" and agent["current_hook_bead_id"] is None


async def test_reset_agent_gives_its_bead_a_fresh_dispatch_count(worker: Worker, town: tuple[str, str]) -> None:
    """Resetting an agent left its bead's dispatch_attempts and backoff: after a few failed runs the
    bead stayed capped or backed off although an operator had just reset the agent for it."""
    town_id, token = town
    await _rig(worker, town_id)
    await worker.create_agent(town_id, "polecat", agent_id="pc-1", rig_id="rig-1")
    _, data = await worker.call("POST", f"/api/towns/{town_id}/sling", token=token, json={"rig_id": "rig-1", "title": "t"})
    bead_id = data["bead_id"]
    assert (await worker.call("POST", f"/api/towns/{town_id}/beads/{bead_id}/reassign", token=token,
                              json={"agent_id": "pc-1"}))[0] == 200
    await worker.db.run(lambda conn: conn.execute(
        "UPDATE town_beads SET dispatch_attempts = 4, last_dispatch_attempt_at = ?, status = 'in_progress'"
        " WHERE bead_id = ?", (worker.clock.ms, bead_id)))
    status, _ = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/reset", token=token)
    assert status == 200
    _, bead = await worker.call("GET", f"/api/towns/{town_id}/beads/{bead_id}", token=token)
    assert bead["status"] == "open" and bead["dispatch_attempts"] == 0 and bead["last_dispatch_attempt_at"] is None
