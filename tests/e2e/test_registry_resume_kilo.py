"""A secret in one start request must not cost the town its registry: the agent is resumed after a
container crash with its ordinary env vars and without the secret (the worker used to reject the
whole registry for one ``GH_PAT``, so a restarted container resumed a stale set of agents)."""
from __future__ import annotations

import asyncio
import time

import pytest

from tests.containers import ContainerProc, container_env

pytestmark = pytest.mark.kilo


def _environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def _registry(worker, town_id: str, pred, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        code, entries = await worker.request("GET", f"/api/towns/{town_id}/container-registry")
        if code == 200 and pred(entries):
            return entries
        assert time.monotonic() < deadline, entries
        await asyncio.sleep(0.2)


async def test_agent_started_with_a_secret_env_var_is_resumed_after_a_crash_without_it(worker, fake_llm, tmp_path):
    town_id, token = await worker.create_town(default_model="fake/m1")
    env = container_env(worker, fake_llm, town_id, token, tmp_path / "data", GASTOWN_IDLE_TIMEOUT_S="3600")
    first = ContainerProc(env)
    try:
        await first.wait_ready()
        code, body = await first.call("POST", "/agents/start", {
            "agent_id": "polecat-1", "town_id": town_id, "rig_id": "rig-1", "role": "polecat", "name": "Toast",
            "model": "fake/m1", "prompt": "say hi", "env_vars": {"GH_PAT": "ghpat-value-0123456789", "LOG_LEVEL": "debug"}})
        assert code == 201, body
        assert _environ(body["pid"])["GH_PAT"] == "ghpat-value-0123456789"  # the agent itself gets it
        entries = await _registry(worker, town_id, lambda e: [x["agent_id"] for x in e] == ["polecat-1"])
        assert entries[0]["request"]["env_vars"] == {"LOG_LEVEL": "debug"}
        first.sigkill_everything()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()

    second = ContainerProc(env)
    try:
        await second.wait_ready()
        status = await second.wait_status("polecat-1", lambda b: b["status"] == "running")
        child = _environ(status["pid"])
        assert child["LOG_LEVEL"] == "debug" and "GH_PAT" not in child
    finally:
        await second.terminate()
