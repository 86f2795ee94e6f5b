"""End to end: worker reconciler → container → real kilo → MCP plugin → worker (issues 5 and 6)."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gastown.core.jsonlog import set_town_id
from tests.conftest import ADMIN_TOKEN, JWT_SECRET, Worker
from gastown.local.scripted_model import Reply, ToolCall
from tests.gitrepos import bare_origin
from worker_api.app import create_app as create_worker_app

pytestmark = pytest.mark.kilo


class JumpClock:
    """Real time plus jumps. Its ``sleep`` ends when *this* clock reaches the deadline, so a jump
    wakes the worker's reconciler loops as the passing of that time would."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    async def sleep(self, delay: float) -> None:
        until = self() + delay
        while (left := until - self()) > 0:
            await asyncio.sleep(min(left, 0.05))


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


async def test_polecat_without_gt_done_completes_and_rule3_gives_bead_back(fake_llm, runtime_config, make_container, tmp_path):
    """No gt_done: the idle polecat completes, the worker releases it, and Rule 3 (5 min stale) gives the
    bead back — the worker's injected clock jumps past the threshold instead of the test waiting."""
    clock = JumpClock()
    app = create_worker_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, now=clock, sleep=clock.sleep, run_reconciler=True)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    worker = Worker(server, aiohttp.ClientSession())
    try:
        runtime_config.idle_timeout_s = 12.0  # clear of the worker's 10 s stale-completion window
        container, town_id, rig_id = await _wired_town(worker, make_container, runtime_config, tmp_path)
        code, slung = await worker.request("POST", f"/api/towns/{town_id}/sling",
                                           json={"rig_id": rig_id, "title": "Quick", "body": 'CALL_TOOL bash {"command": "pwd"}'})
        assert code == 201
        await fake_llm.wait_for(lambda r: r.has_tool_result)

        async def completed():
            return [e for e in await worker.events(town_id) if e["event_type"] == "agent_completed" and e["processed_at"]]

        event = (await _until(completed, what="agent_completed applied by the reconciler"))[0]
        assert json.loads(event["payload"])["status"] == "completed"
        code, agent = await worker.request("GET", f"/api/towns/{town_id}/agents")
        polecat = next(a for a in agent["agents"] if a["agent_id"] == event["agent_id"])
        assert polecat["status"] == "idle" and not polecat.get("current_hook_bead_id")
        clock.offset += 6 * 60  # past Rule 3's 5 minutes

        async def bead_given_back():
            code, bead = await worker.request("GET", f"/api/towns/{town_id}/beads/{slung['bead_id']}")
            return bead["status"] == "open" or bead.get("dispatch_attempts", 0) > 1

        await _until(bead_given_back, what="Rule 3 to give the stale bead back")
    finally:
        await worker.http.close()
        await server.close()


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
