"""Model PATCH and token refresh restart a child and resume its session (issue 4 §4–5)."""
from __future__ import annotations

import asyncio

import psutil
import pytest

from tests.conftest import kilo_processes

pytestmark = pytest.mark.kilo


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


async def _idle(container, agent_id, n):
    return await container.wait_status(agent_id, lambda b: b["message_count"] >= n and b["last_event_type"] in ("session.idle", "session.turn.close"))


async def test_model_patch_on_resumed_mayor_keeps_history_and_uses_new_model(container, fake_llm):
    mayor = dict(agent_id="mayor-1", role="mayor", rig_id="mayor-town-test", prompt="Mayor startup prompt")
    assert (await container.start_agent(**mayor))[0] == 201
    await _idle(container, "mayor-1", 1)
    assert (await container.request("POST", "/agents/mayor-1/stop"))[0] == 200
    status, body = await container.start_agent(**mayor)
    assert status == 201 and body["message_count"] == 0
    session_id, old_pid = body["session_id"], body["pid"]
    turns_before = len(fake_llm.chat_requests())
    status, resp = await container.request("PATCH", "/agents/mayor-1/model", json={"model": "fake/m2"})
    assert (status, resp) == (200, {"updated": True})
    st = (await container.request("GET", "/agents/mayor-1/status"))[1]
    assert st["session_id"] == session_id and st["pid"] != old_pid and st["model"] == "fake/m2"
    assert not _alive(old_pid) and len(kilo_processes()) == 1
    await asyncio.sleep(0.5)
    assert len(fake_llm.chat_requests()) == turns_before, "the switch must not run a turn"
    assert (await container.request("POST", "/agents/mayor-1/message", json={"prompt": "after switch"}))[0] == 202
    req = await fake_llm.wait_for(lambda r: "after switch" in r.last_user_text)
    assert req.model == "m2"
    history = [m for m in req.messages if m["role"] in ("user", "assistant")]
    assert "Mayor startup prompt" in str(history[0]["content"])
    assert sum("Mayor startup prompt" in r.last_user_text for r in fake_llm.chat_requests()) == 1


async def test_model_patch_to_rejected_model_keeps_old_process(container, fake_llm):
    status, body = await container.start_agent()
    assert status == 201
    status, resp = await container.request("PATCH", "/agents/polecat-1/model", json={"model": "fake/m9"})
    assert status == 422 and resp["error"]["code"] == "MODEL_NOT_AVAILABLE"
    st = (await container.request("GET", "/agents/polecat-1/status"))[1]
    assert st["status"] == "running" and st["pid"] == body["pid"] and st["model"] == "fake/m1"
    assert len(kilo_processes()) == 1
    await _idle(container, "polecat-1", 1)
    assert (await container.request("POST", "/agents/polecat-1/message", json={"prompt": "still m1?"}))[0] == 202
    assert (await fake_llm.wait_for(lambda r: "still m1?" in r.last_user_text)).model == "m1"


async def test_model_patch_whose_spawn_times_out_keeps_the_old_process_and_reaps_the_late_spawn(container, fake_llm):
    container.runtime.cfg.hot_swap_timeout_s = 45.0
    ids = ["polecat-a", "polecat-b"]
    started = await asyncio.gather(*(container.start_agent(agent_id=i, prompt=f"task {i}") for i in ids))
    before = {b["agent_id"]: b for _, b in started}
    sup = container.runtime.supervisor

    async def slow_spawn_for_b(rec):
        if rec.agent_id == "polecat-b":
            await asyncio.sleep(47.0)

    sup.spawn_hooks.append(slow_spawn_for_b)
    ok, late = await asyncio.gather(
        container.request("PATCH", "/agents/polecat-a/model", json={"model": "fake/m2"}),
        container.request("PATCH", "/agents/polecat-b/model", json={"model": "fake/m2"}))
    assert ok[0] == 200 and late[0] >= 400, (ok, late)
    a, b = sup.get("polecat-a"), sup.get("polecat-b")
    assert a.session_id == before["polecat-a"]["session_id"] and a.process.pid != before["polecat-a"]["pid"]
    assert b.process.pid == before["polecat-b"]["pid"] and b.state.value == "running"
    reapers = sup.background.pending()  # the late spawn finishes, then must be reaped
    assert reapers, "a timed-out spawn must have a reaper"
    await asyncio.wait(reapers, timeout=180)
    assert sorted(p.pid for p in kilo_processes()) == sorted(sup.get(i).process.pid for i in ids)


async def test_refresh_token_adopts_the_token_without_restarting_any_agent(container, fake_llm):
    """The runtime's token is no longer in any kilo's env (agents read their own token file), so a
    new one restarts nothing: the old refresh restarted every agent (seconds each)."""
    _, body = await container.start_agent(agent_id="polecat-a", prompt="task")
    status, resp = await container.request("POST", "/refresh-token", json={"token": "fresh-container-token-1234567", "issued_at": 2000})
    assert status == 200 and resp["refreshed"] is True and resp["agents_restarted"] == 0, resp
    rt = container.runtime
    assert rt.worker.token == "fresh-container-token-1234567"
    assert rt.supervisor.get("polecat-a").process.pid == body["pid"]
    assert "fresh-container-token" not in str(resp)
    assert "fresh-container-token" not in str(rt.supervisor.get("polecat-a").child_env)


async def test_stale_refresh_token_ignored(container, fake_llm):
    rt = container.runtime
    rt.worker.update(token="current-token-1234567890", issued_at=5000)
    status, resp = await container.request("POST", "/refresh-token", json={"token": "older-token-1234567890", "issued_at": 4000})
    assert status == 200 and resp["refreshed"] is False
    assert rt.worker.token == "current-token-1234567890"
