"""The plugin against the real worker app (not a stand-in): a container token minted by the worker,
gt_done recorded as an ``agent_done`` town event, token expiry healed by refresh-container-token,
and gt_nudge queued for the target agent."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.test_plugin_support import Plugin
from tests.test_worker_api_support import ADMIN_TOKEN, CONTROL_TOKEN, JWT_SECRET, FakeClock
from worker_api import events, nudges
from worker_api.app import create_app
from worker_api.appkeys import DB


class RealWorker:
    def __init__(self, server: TestServer, clock: FakeClock) -> None:
        self.server = server
        self.clock = clock

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def admin(self, method: str, path: str, body: Any) -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.url + path, json=body,
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
                assert resp.status in (200, 201), await resp.text()
                return await resp.json()

    async def db(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await self.server.app[DB].run(fn, *args, write=False, **kw)


@pytest.fixture
async def real_worker(tmp_path: Path) -> AsyncIterator[RealWorker]:
    clock = FakeClock()
    app = create_app(tmp_path / "worker.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, now=clock)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield RealWorker(server, clock)
    finally:
        await server.close()


async def _town(w: RealWorker) -> tuple[str, str]:
    town = await w.admin("POST", "/api/towns", {"name": "Plugin town", "container_url": "http://127.0.0.1:9",
                                                "control_token": CONTROL_TOKEN})
    t = town["town_id"]
    for agent_id, role in (("polecat-1", "polecat"), ("refinery-1", "refinery")):
        await w.admin("POST", f"/api/towns/{t}/agents", {"agent_id": agent_id, "role": role, "name": agent_id,
                                                         "rig_id": "rig-1"})
    return t, town["container_token"]


def _env(w: RealWorker, town_id: str, token: str) -> dict[str, str]:
    return {"GASTOWN_AGENT_ROLE": "polecat", "GASTOWN_AGENT_ID": "polecat-1", "GASTOWN_TOWN_ID": town_id,
            "GASTOWN_RIG_ID": "rig-1", "GASTOWN_API_URL": w.url, "GASTOWN_CONTAINER_TOKEN": token}


async def test_gt_done_reaches_the_worker_and_survives_token_expiry(real_worker: RealWorker, tmp_path: Path) -> None:
    town_id, token = await _town(real_worker)
    async with Plugin(_env(real_worker, town_id, token), tmp_path / "err.log") as p:
        is_error, text = await p.call("gt_done", {"branch": "gt/polecat-1/bd-1", "pr_url": "https://git.example/pull/7",
                                                  "summary": "fixed login"})
        assert not is_error, text
        real_worker.clock.advance(9 * 3600)  # past the 8 h token lifetime: next call gets a 401
        is_error, text = await p.call("gt_done", {"branch": "gt/polecat-1/bd-1-again"})
        assert not is_error, text
        stderr = p.stderr()
    done = await real_worker.db(events.list_events, town_id, event_type=events.AGENT_DONE)
    assert [(e["agent_id"], e["payload"]["branch"]) for e in done] == [
        ("polecat-1", "gt/polecat-1/bd-1"), ("polecat-1", "gt/polecat-1/bd-1-again"),
    ]
    assert done[0]["payload"]["pr_url"] == "https://git.example/pull/7"
    assert '"token.refreshed"' in stderr and token not in stderr


async def test_gt_done_for_an_unknown_agent_is_a_short_error(real_worker: RealWorker, tmp_path: Path) -> None:
    town_id, token = await _town(real_worker)
    env = {**_env(real_worker, town_id, token), "GASTOWN_AGENT_ID": "polecat-ghost"}
    async with Plugin(env, tmp_path / "err.log") as p:
        is_error, text = await p.call("gt_done", {"branch": "b"})
    assert is_error and text == "error: AGENT_NOT_FOUND: agent polecat-ghost not found", text


async def test_gt_nudge_queues_for_the_target(real_worker: RealWorker, tmp_path: Path) -> None:
    town_id, token = await _town(real_worker)
    async with Plugin(_env(real_worker, town_id, token), tmp_path / "err.log") as p:
        is_error, text = await p.call("gt_nudge", {"target_agent_id": "refinery-1", "message": "ready for review"})
    assert not is_error, text
    pending = await real_worker.db(nudges.pending_nudges, town_id, "refinery-1", real_worker.clock.ms)
    assert [(n["message"], n["mode"], n["source"]) for n in pending] == [("ready for review", "wait-idle", "polecat-1")]


async def _ok(p: Plugin, tool: str, args: dict[str, Any] | None = None) -> str:
    is_error, text = await p.call(tool, args)
    assert not is_error, (tool, text)
    return text


async def test_mayor_tools_against_the_real_routes(real_worker: RealWorker, tmp_path: Path) -> None:
    """Sling, convoy with depends_on, listings, update, reassign, agent reset: the worker's user and
    tool routes (the reconciler does not run under the fake clock, so nothing is dispatched)."""
    w = real_worker
    town_id, token = await _town(w)
    rig = await w.admin("POST", f"/api/towns/{town_id}/rigs", {"rig_id": "rig-web", "name": "web",
                                                               "git_url": "https://git.example/o/web"})
    await w.admin("POST", f"/api/towns/{town_id}/agents", {"agent_id": "mayor-1", "role": "mayor", "name": "Mayor"})
    env = {**_env(w, town_id, token), "GASTOWN_AGENT_ROLE": "mayor", "GASTOWN_AGENT_ID": "mayor-1"}
    async with Plugin(env, tmp_path / "err.log") as p:
        assert f"- {rig['rig_id']} web https://git.example/o/web" in await _ok(p, "gt_list_rigs")
        slung = await _ok(p, "gt_sling", {"rig_id": "rig-web", "title": "Add search", "body": "details"})
        bead_id = re.match(r"slung bead (\S+) to rig rig-web \[open\]", slung).group(1)  # type: ignore[union-attr]
        assert f"{bead_id} [open] Add search" in await _ok(p, "gt_list_beads", {"status": "open", "rig_id": "rig-web"})
        text = await _ok(p, "gt_sling_batch", {"rig_id": "rig-web", "title": "Feature", "staged": True,
                                               "merge_mode": "review-then-land",
                                               "beads": [{"title": "schema"}, {"title": "api", "depends_on": [0]}]})
        m = re.match(r"convoy (\S+) \(staged\): 2 beads: (\S+), (\S+)$", text)
        assert m, text
        convoy_id, first, second = m.groups()
        status = await _ok(p, "gt_convoy_status", {"convoy_id": convoy_id})
        assert "(0/2 closed)" in status and "merge_mode review-then-land" in status, status
        assert re.search(rf"{second} \[open\] api \(.*blocked by {first}\)", status), status
        assert convoy_id in await _ok(p, "gt_list_convoys")
        await _ok(p, "gt_convoy_start", {"convoy_id": convoy_id})
        assert f"bead {bead_id} reassigned to polecat-1" in await _ok(
            p, "gt_bead_reassign", {"bead_id": bead_id, "agent_id": "polecat-1"})
        assert f"polecat-1 polecat polecat-1 [idle] hooked {bead_id}" in await _ok(p, "gt_list_agents")
        await _ok(p, "gt_agent_reset", {"agent_id": "polecat-1"})
        assert f"hooked {bead_id}" not in await _ok(p, "gt_list_agents")
        updated = await _ok(p, "gt_bead_update", {"bead_id": bead_id, "status": "closed", "priority": "high"})
        assert f"{bead_id} [closed] Add search" in updated, updated
        await _ok(p, "gt_convoy_close", {"convoy_id": convoy_id})
        is_error, text = await p.call("gt_convoy_status", {"convoy_id": "no-such-convoy"})
        assert is_error and text.startswith("error: ") and "no-such-convoy" in text, text


async def test_rig_tools_against_the_real_routes(real_worker: RealWorker, tmp_path: Path) -> None:
    """Prime, mail between two agents, escalation, checkpoint read back by prime, bead close, and the
    worker's role rule on request-changes surfacing as a short error."""
    town_id, token = await _town(real_worker)
    polecat_env = _env(real_worker, town_id, token)
    refinery_env = {**polecat_env, "GASTOWN_AGENT_ROLE": "refinery", "GASTOWN_AGENT_ID": "refinery-1"}
    async with Plugin(polecat_env, tmp_path / "p.log") as pol, Plugin(refinery_env, tmp_path / "r.log") as ref:
        prime = await _ok(pol, "gt_prime")
        assert prime.startswith("agent: polecat-1 polecat") and "hooked bead: none" in prime, prime
        assert "mail sent to refinery-1 (mail " in await _ok(
            pol, "gt_mail_send", {"to_agent_id": "refinery-1", "subject": "ready", "body": "branch b1 pushed"})
        assert "unread mail: 1" in await _ok(ref, "gt_prime")
        mail = await _ok(ref, "gt_mail_check")
        assert mail.startswith("1 message:") and "from polecat-1: ready" in mail and "branch b1 pushed" in mail
        assert await _ok(ref, "gt_mail_check") == "0 messages."
        escalated = await _ok(pol, "gt_escalate", {"title": "no credentials", "priority": "high"})
        esc_id = escalated.removeprefix("escalated: bead ")
        assert esc_id != escalated, escalated
        assert f"{esc_id} [open] (escalation) no credentials" in await _ok(pol, "gt_bead_status", {"bead_id": esc_id})
        await _ok(pol, "gt_checkpoint", {"data": '{"step": 3, "todo": ["tests"]}'})
        assert 'checkpoint (saved by you earlier): {"step": 3, "todo": ["tests"]}' in await _ok(pol, "gt_prime")
        assert f"closed bead {esc_id} [closed]" in await _ok(pol, "gt_bead_close", {"bead_id": esc_id})
        is_error, text = await ref.call("gt_request_changes", {"feedback": "add tests"})
        assert is_error and text.startswith("error: ROLE_FORBIDDEN: only a refinery hooked"), text
