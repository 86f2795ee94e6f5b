"""The container reports to the real worker API: heartbeats, crashes, idle completion, nudges, waiting."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest
from gastown.contract.wire import epoch_ms


pytestmark = pytest.mark.kilo


async def _wait_event(worker, town_id: str, pred, timeout: float = 120.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for e in await worker.events(town_id):
            if pred(e):
                return e
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no matching worker event; have {await worker.events(town_id)}")
        await asyncio.sleep(0.1)


async def test_worker_receives_heartbeat_right_after_start(town, fake_llm):
    worker, container, town_id = town
    status, body = await container.start_agent(town_id=town_id)
    assert status == 201, body
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        code, agent = await worker.request("GET", f"/api/towns/{town_id}/agents")
        hb = [a for a in agent["agents"] if a["agent_id"] == "polecat-1" and a.get("last_heartbeat_at")]
        if hb:
            break
        assert asyncio.get_running_loop().time() < deadline, agent
        await asyncio.sleep(0.1)
    assert hb[0]["role"] == "polecat"
    code, registry = await worker.request("GET", f"/api/towns/{town_id}/container-registry")
    assert [e["agent_id"] for e in registry] == ["polecat-1"]
    assert "GASTOWN_CONTAINER_TOKEN" not in str(registry)


async def test_sigkilled_child_reported_failed_to_worker(town, fake_llm):
    worker, container, town_id = town
    status, body = await container.start_agent(town_id=town_id)
    assert status == 201
    os.kill(body["pid"], signal.SIGKILL)
    event = await _wait_event(worker, town_id, lambda e: e["event_type"] == "agent_completed", timeout=10)
    assert event["agent_id"] == "polecat-1" and '"failed"' in event["payload"]


async def test_idle_polecat_completes_after_timeout(town, fake_llm):
    worker, container, town_id = town
    container.runtime.cfg.idle_timeout_s = 1.0
    assert (await container.start_agent(town_id=town_id))[0] == 201
    event = await _wait_event(worker, town_id, lambda e: e["event_type"] == "agent_completed")
    assert '"completed"' in event["payload"]
    st = (await container.request("GET", "/agents/polecat-1/status"))[1]
    assert st["status"] == "exited" and st["exit_reason"] == "completed"
    code, registry = await worker.request("GET", f"/api/towns/{town_id}/container-registry")
    assert registry == []


async def test_pending_nudge_delivered_instead_of_exiting(town, fake_llm):
    worker, container, town_id = town
    container.runtime.cfg.idle_timeout_s = 2.0
    code, _ = await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "polecat-1", "role": "polecat", "name": "Toast"})
    assert code == 201
    assert (await container.start_agent(town_id=town_id, prompt="SLOW4 then stop"))[0] == 201
    code, nudge = await worker.request("POST", f"/api/towns/{town_id}/agents/polecat-1/nudges", json={"message": "NUDGE: check CI"})
    assert code == 201, nudge
    await fake_llm.wait_for(lambda r: "NUDGE: check CI" in r.last_user_text)
    code, pending = await worker.request("GET", f"/api/towns/{town_id}/agents/polecat-1/pending-nudges")
    for _ in range(50):
        if not pending["nudges"]:
            break
        await asyncio.sleep(0.1)
        code, pending = await worker.request("GET", f"/api/towns/{town_id}/agents/polecat-1/pending-nudges")
    assert pending["nudges"] == []
    st = (await container.request("GET", "/agents/polecat-1/status"))[1]
    assert st["message_count"] == 2
    await _wait_event(worker, town_id, lambda e: e["event_type"] == "agent_completed")


async def test_heartbeat_only_stream_does_not_keep_agent_active(town, fake_llm):
    """server.heartbeat events must not move the activity watermark (GUPP would never fire)."""
    worker, container, town_id = town
    assert (await container.start_agent(town_id=town_id))[0] == 201
    st = await container.wait_status("polecat-1", lambda b: b["last_event_type"] in ("session.idle", "session.turn.close"))
    rec = container.runtime.supervisor.get("polecat-1")
    before = rec.last_event_at
    assert not rec.handle_event({"type": "server.heartbeat", "properties": {}})
    assert not rec.handle_event({"type": "session.status", "properties": {"sessionID": "ses_other", "status": {"type": "busy"}}})
    assert rec.last_event_at == before
    assert st["last_event_at"] == epoch_ms(before)  # the wire is epoch ms, the record keeps seconds


async def test_mayor_idle_reports_waiting_and_never_exits(town, fake_llm):
    worker, container, town_id = town
    container.runtime.cfg.idle_timeout_s = 0.5
    code, _ = await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "mayor-1", "role": "mayor", "name": "Mayor"})
    assert code == 201
    status, body = await container.start_agent(town_id=town_id, agent_id="mayor-1", role="mayor", rig_id=f"mayor-{town_id}")
    assert status == 201, body
    await _wait_event(worker, town_id, lambda e: e["event_type"] == "agent_waiting")
    await asyncio.sleep(1.5)
    assert (await container.request("GET", "/agents/mayor-1/status"))[1]["status"] == "running"


async def test_the_mayor_idle_leaves_its_notices_to_the_worker_desk(town, fake_llm):
    """Two paths of turns to the mayor (the container at session.idle, the worker's desk) race for
    the same idle moment and kilo folds the two prompts into one turn: the container only reports
    waiting and an escalation queued for the mayor stays pending for the desk."""
    worker, container, town_id = town
    code, _ = await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "mayor-1", "role": "mayor", "name": "Mayor"})
    assert code == 201
    status, body = await container.start_agent(town_id=town_id, agent_id="mayor-1", role="mayor", rig_id=f"mayor-{town_id}",
                                               prompt="SLOW3 thinking")
    assert status == 201, body
    code, esc = await worker.request("POST", f"/api/towns/{town_id}/escalations",
                                     json={"agent_id": "mayor-1", "title": "ESCALATED: the build is red", "priority": "high"})
    assert code == 201, esc
    await _wait_event(worker, town_id, lambda e: e["event_type"] == "agent_waiting")
    await asyncio.sleep(1.0)
    assert not [r for r in fake_llm.chat_requests() if "ESCALATED: the build is red" in r.last_user_text]
    code, pending = await worker.request("GET", f"/api/towns/{town_id}/agents/mayor-1/pending-nudges")
    assert [n["message"][:40] for n in pending["nudges"]] == ["Escalation (high): ESCALATED: the build is red"[:40]]
