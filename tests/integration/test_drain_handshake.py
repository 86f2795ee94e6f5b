"""The drain handshake (issue 12, item 7): after a clean eviction the new container acknowledges the
drain nonce once it is ready, so dispatch resumes at once instead of after the 7-minute drain
window; the draining container itself never does."""
from __future__ import annotations

import asyncio
from dataclasses import replace

from supervisor.config import RuntimeConfig


async def draining(worker, town_id: str) -> bool:  # noqa: ANN001
    status, town = await worker.request("GET", f"/api/towns/{town_id}")
    assert status == 200
    return bool(town["draining"])


async def test_a_new_container_with_no_agents_acknowledges_the_drain_when_ready(worker, make_container,
                                                                               runtime_config: RuntimeConfig):
    """The nonce came only with heartbeats, and a container with no agent sends none: the drain held
    dispatch for its whole window."""
    town_id, token = await worker.create_town()
    status, body = await worker.request("POST", f"/api/towns/{town_id}/container-eviction", token=token)
    assert status == 200 and body["drain_nonce"] and await draining(worker, town_id)
    cfg = replace(runtime_config, town_id=town_id, api_url=worker.url, container_token=token)
    container = await make_container(cfg)
    await asyncio.wait_for(container.runtime.hydrated.wait(), 30)
    for _ in range(100):
        if not await draining(worker, town_id):
            break
        await asyncio.sleep(0.05)
    assert not await draining(worker, town_id)


async def test_a_draining_container_never_acknowledges(worker, make_container, runtime_config: RuntimeConfig):
    town_id, token = await worker.create_town()
    cfg = replace(runtime_config, town_id=town_id, api_url=worker.url, container_token=token)
    container = await make_container(cfg)
    await asyncio.wait_for(container.runtime.hydrated.wait(), 30)
    container.runtime.draining = True  # this container is the one being evicted
    status, body = await worker.request("POST", f"/api/towns/{town_id}/container-eviction", token=token)
    container.runtime.heartbeats.on_drain_nonce(body["drain_nonce"])  # as a heartbeat answer would
    await asyncio.sleep(0.3)
    assert await draining(worker, town_id)
