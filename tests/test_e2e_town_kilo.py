"""End to end: worker reconciler → container → real kilo → MCP plugin → worker (issues 5 and 6)."""
from __future__ import annotations

import asyncio
import json

import pytest

from gastown.jsonlog import set_town_id
from tests.fakes.fake_llm import Reply, ToolCall

from tests.gitrepos import bare_origin

pytestmark = pytest.mark.kilo


async def _wired_town(worker, make_container, runtime_config, tmp_path):
    container = await make_container(runtime_config)
    town_id, token = await worker.create_town(container_url=container.url, default_model="fake/m1")
    rt = container.runtime
    rt.cfg.town_id = town_id
    set_town_id(town_id)
    rt.worker.update(api_url=worker.url, token=token, town_id=town_id)
    code, rig = await worker.request("POST", f"/api/towns/{town_id}/rigs", json={"name": "app", "git_url": str(bare_origin(tmp_path))})
    assert code == 201, rig
    return container, town_id, rig["rig_id"]


async def _until(fn, timeout: float = 180.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await fn()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def test_sling_dispatches_polecat_that_runs_bash_and_gt_done_creates_mr(worker, fake_llm, runtime_config, make_container, tmp_path):
    runtime_config.idle_timeout_s = 2.0
    container, town_id, rig_id = await _wired_town(worker, make_container, runtime_config, tmp_path)
    fake_llm.enqueue(ToolCall("bash", {"command": "echo e2e > result.txt && git add result.txt", "description": "write"}),
                     ToolCall("gastown_gt_done", {"branch": "gt/e2e/branch", "summary": "wrote result.txt"}),
                     Reply("All done."))
    code, slung = await worker.request("POST", f"/api/towns/{town_id}/sling", json={"rig_id": rig_id, "title": "Write the result file"})
    assert code == 201, slung
    bead_id = slung["bead_id"]

    async def done_event():
        return [e for e in await worker.events(town_id) if e["event_type"] == "agent_done"]

    done = (await _until(done_event, what="agent_done from the gastown_gt_done tool"))[0]
    assert json.loads(done["payload"])["branch"] == "gt/e2e/branch"
    polecat = done["agent_id"]
    workdir = container.runtime.supervisor.get(polecat).paths.workdir
    assert (workdir / "result.txt").read_text().strip() == "e2e"
    after_done = await fake_llm.wait_for(lambda r: r.has_tool_result and "gastown_gt_done" in json.dumps(r.messages[-2]))
    assert not str(after_done.messages[-1]["content"]).lower().startswith("error"), after_done.messages[-1]

    async def in_review():
        code, bead = await worker.request("GET", f"/api/towns/{town_id}/beads/{bead_id}")
        code, mrs = await worker.request("GET", f"/api/towns/{town_id}/beads?type=merge_request")
        return bead["status"] in ("in_review", "closed") and mrs["beads"]

    await _until(in_review, what="source bead in review with a merge request bead")
    code, invariants = await worker.request("GET", f"/api/towns/{town_id}/invariants")
    assert invariants["violations"] == []


async def test_polecat_without_gt_done_completes_and_bead_is_handled(worker, fake_llm, runtime_config, make_container, tmp_path):
    # The reconciler ignores a completion within 10 s of its dispatch (it cannot tell it from the
    # previous run's, see README); a realistic idle time keeps this one clear of that window.
    runtime_config.idle_timeout_s = 12.0
    container, town_id, rig_id = await _wired_town(worker, make_container, runtime_config, tmp_path)
    code, slung = await worker.request("POST", f"/api/towns/{town_id}/sling",
                                       json={"rig_id": rig_id, "title": "Quick", "body": 'CALL_TOOL bash {"command": "pwd"}'})
    assert code == 201
    await fake_llm.wait_for(lambda r: r.has_tool_result, timeout=60)

    async def completed():
        return [e for e in await worker.events(town_id) if e["event_type"] == "agent_completed"]

    event = (await _until(completed, what="agent_completed after the idle timeout"))[0]
    assert json.loads(event["payload"])["status"] == "completed"

    async def bead_handled():
        code, bead = await worker.request("GET", f"/api/towns/{town_id}/beads/{slung['bead_id']}")
        return bead["status"] != "in_progress" or bead.get("dispatch_attempts", 0) > 1

    await _until(bead_handled, what="the rules to reset or redispatch the bead")


async def test_mayor_gt_sling_creates_bead_and_polecat_is_dispatched(worker, fake_llm, runtime_config, make_container, tmp_path):
    container, town_id, rig_id = await _wired_town(worker, make_container, runtime_config, tmp_path)
    code, _ = await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "mayor", "role": "mayor", "name": "Mayor"})
    assert code == 201
    fake_llm.enqueue(ToolCall("gastown_gt_sling", {"rig_id": rig_id, "title": "Task slung by the mayor"}), Reply("Slung it."))
    status, body = await container.start_agent(agent_id="mayor", role="mayor", town_id=town_id, rig_id=f"mayor-{town_id}",
                                               name="Mayor", prompt="Please delegate the task")
    assert status == 201, body

    async def slung_bead():
        code, beads = await worker.request("GET", f"/api/towns/{town_id}/beads")
        return [b for b in beads["beads"] if b["title"] == "Task slung by the mayor"]

    bead = (await _until(slung_bead, what="the bead created by gastown_gt_sling"))[0]

    async def polecat_running():
        code, agents = await container.request("GET", "/agents")
        return [a for a in agents["agents"] if a["role"] == "polecat" and a["status"] in ("starting", "running", "exited")]

    polecat = (await _until(polecat_running, what="a polecat dispatched to the container"))[0]
    await fake_llm.wait_for(lambda r: "Task slung by the mayor" in r.last_user_text and "Bead:" in r.last_user_text)
    assert polecat["rig_id"] == rig_id and bead["bead_id"]
