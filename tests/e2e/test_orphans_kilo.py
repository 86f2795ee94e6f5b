"""A SIGKILLed container runtime takes its kilo servers and their tool servers with it."""
from __future__ import annotations

import time

import psutil
import pytest

from tests.containers import ContainerProc, container_env, still_running

pytestmark = pytest.mark.kilo


async def test_sigkill_of_the_container_leaves_no_kilo_or_plugin_behind(worker, fake_llm, tmp_path):
    town_id, token = await worker.create_town(default_model="fake/m1")
    env = container_env(worker, fake_llm, town_id, token, tmp_path / "data")
    c = ContainerProc(env)
    try:
        await c.wait_ready()
        for agent in ("polecat-a", "polecat-b"):
            code, body = await c.call("POST", "/agents/start", {"agent_id": agent, "town_id": town_id, "rig_id": "rig-1",
                                                                 "role": "polecat", "name": agent, "model": "fake/m1",
                                                                 "prompt": "say hi"})
            assert code == 201, body
        for agent in ("polecat-a", "polecat-b"):  # a finished turn: kilo has spawned the plugin by then
            await c.wait_status(agent, lambda b: b["last_event_type"] in ("session.idle", "session.turn.close"))
        tree = psutil.Process(c.proc.pid).children(recursive=True)
        kilos = [p for p in tree if p.name() == "kilo"]
        plugins = [p for p in tree if "plugin" in p.cmdline() and p.parent().name() == "kilo"]
        assert len(kilos) == 2 and len(plugins) == 2, [p.cmdline() for p in tree]
        c.proc.kill()
        c.proc.wait(10)
        deadline = time.monotonic() + 10
        while still_running(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not still_running(tree), still_running(tree)
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
