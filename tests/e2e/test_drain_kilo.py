"""SIGTERM drain of a real container process (issue 4 §6)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time

import psutil
import pytest

from tests.containers import ContainerProc, container_env
from tests.gitrepos import bare_origin

pytestmark = pytest.mark.kilo


async def test_sigterm_drain_completes_idle_freezes_working_and_exits_clean(worker, fake_llm, tmp_path):
    fake_llm.slow_interval = 0.5
    town_id, token = await worker.create_town(default_model="fake/m1")
    for agent in ("polecat-idle", "polecat-busy"):
        await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": agent, "role": "polecat", "name": agent})
    origin = bare_origin(tmp_path)
    store = tmp_path / "store"
    drain_timeout = 40
    env = container_env(worker, fake_llm, town_id, token, tmp_path / "data", GASTOWN_SNAPSHOT_URL=f"file://{store}",
                        GASTOWN_DRAIN_TIMEOUT_S=str(drain_timeout))
    c = ContainerProc(env)
    base = {"town_id": town_id, "rig_id": "rig-1", "role": "polecat", "model": "fake/m1"}
    try:
        await c.wait_ready()
        code, idle = await c.call("POST", "/agents/start", {**base, "agent_id": "polecat-idle", "name": "Idle", "prompt": "quick one"})
        assert code == 201, idle
        code, busy = await c.call("POST", "/agents/start", {**base, "agent_id": "polecat-busy", "name": "Busy", "prompt": "SLOW200",
                                                             "git_url": str(origin), "branch": "gt/busy/abc12345", "default_branch": "main"})
        assert code == 201, busy
        await c.wait_status("polecat-idle", lambda b: b["last_event_type"] in ("session.idle", "session.turn.close"))
        await fake_llm.wait_for(lambda r: "SLOW200" in r.last_user_text)
        workdir = tmp_path / "data" / "agents" / "polecat-busy" / "workspace"
        (workdir / "half-done.txt").write_text("work in progress\n")
        kilo_pids = [p.pid for p in psutil.Process(c.proc.pid).children(recursive=True)]
        t0 = time.monotonic()
        c.proc.send_signal(15)
        await asyncio.sleep(1.0)
        code, ready = await c.call("GET", "/ready")
        assert code == 503 and ready["status"] == "draining"
        code, refused = await c.call("POST", "/agents/start", {**base, "agent_id": "late", "name": "Late", "prompt": "x"})
        assert code == 503 and refused["error"]["code"] == "DRAINING"
        code, st = await c.call("GET", "/agents/polecat-idle/status")
        rc = await c.wait_exit(timeout=drain_timeout + 30)
        elapsed = time.monotonic() - t0
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
    assert rc == 0
    assert elapsed < drain_timeout, elapsed
    assert not [p for p in kilo_pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    events = await worker.events(town_id)
    kinds = [(e["event_type"], e["agent_id"]) for e in events]
    assert ("container_eviction", None) in kinds
    completed = {e["agent_id"]: json.loads(e["payload"]) for e in events if e["event_type"] == "agent_completed"}
    assert completed["polecat-idle"]["reason"] == "idle timeout"
    assert completed["polecat-busy"]["reason"] == "container eviction"
    ctx = [json.loads(e["payload"]) for e in events if e["event_type"] == "agent_eviction_context"]
    assert ctx and ctx[0]["branch"] == "gt/busy/abc12345"
    assert kinds.index(("agent_eviction_context", "polecat-busy")) < kinds.index(("agent_completed", "polecat-busy"))
    log = subprocess.run(["git", "--git-dir", str(origin), "log", "--format=%s", "gt/busy/abc12345"], capture_output=True, text=True)
    assert log.stdout.splitlines()[0] == "WIP: container eviction save"
    files = subprocess.run(["git", "--git-dir", str(origin), "ls-tree", "--name-only", "gt/busy/abc12345"], capture_output=True, text=True)
    assert "half-done.txt" in files.stdout
    for agent in ("polecat-idle", "polecat-busy"):
        assert list((store / "towns" / town_id / "agents" / agent).glob("manifest.json")), agent
    code, registry = await worker.request("GET", f"/api/towns/{town_id}/container-registry")
    assert registry == []


async def test_second_sigterm_cuts_drain_short_and_leaves_no_process(worker, fake_llm, tmp_path):
    town_id, token = await worker.create_town(default_model="fake/m1")
    env = container_env(worker, fake_llm, town_id, token, tmp_path / "data", GASTOWN_DRAIN_TIMEOUT_S="300")
    c = ContainerProc(env)
    try:
        await c.wait_ready()
        base = {"town_id": town_id, "rig_id": "rig-1", "role": "polecat", "model": "fake/m1", "prompt": "SLOW200"}
        for agent in ("polecat-1", "polecat-2"):
            assert (await c.call("POST", "/agents/start", {**base, "agent_id": agent, "name": agent}))[0] == 201
        kilo_pids = [p.pid for p in psutil.Process(c.proc.pid).children(recursive=True)]
        t0 = time.monotonic()
        c.proc.send_signal(15)
        await asyncio.sleep(1.0)
        c.proc.send_signal(15)
        rc = await c.wait_exit(timeout=60)
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
    assert rc == 0 and time.monotonic() - t0 < 30
    assert not [p for p in kilo_pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
