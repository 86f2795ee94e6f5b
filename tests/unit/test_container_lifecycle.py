"""The worker owns its towns' containers: started when work or a user's message needs one, stopped when
the town is idle (worker_api/containers/service.py), with a provider that records what it is asked."""
from __future__ import annotations

from typing import AsyncIterator

import pytest
from aiohttp import web

from tests.test_reconciler_support import Harness, h  # noqa: F401  (fixture)
from worker_api import store
from worker_api.containers.base import Launch, ProviderError
from worker_api.containers.docker import DockerProvider, DockerSettings
from worker_api.containers.service import LaunchSettings, TownContainers
from worker_api.front.desk import enqueue_tx
from worker_api.routes_container import _waiting_tx
from worker_api.tokens import ContainerTokens

SECRET = "lifecycle-jwt-secret-0123456789abcdef0123"


class FakeProvider:
    """A provider over a tiny real server that answers ``/ready`` (the start contract)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.launches: list[Launch] = []
        self.stops = 0
        self.state_value = "stopped"
        self.fail_start = False

    async def start(self, launch: Launch) -> str:
        if self.fail_start:
            raise ProviderError("engine unreachable")
        self.launches.append(launch)
        self.state_value = "running"
        return self.url

    async def state(self, town_id: str) -> str:
        return self.state_value

    async def stop(self, town_id: str) -> None:
        self.stops += 1
        self.state_value = "stopped"

    async def aclose(self) -> None:
        pass


@pytest.fixture
async def ready_url() -> AsyncIterator[str]:
    app = web.Application()
    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def lifecycle(h: Harness, ready_url: str) -> AsyncIterator[tuple[Harness, FakeProvider, TownContainers]]:  # noqa: F811
    provider = FakeProvider(ready_url)
    containers = TownContainers(h.db, provider, ContainerTokens(SECRET), LaunchSettings(
        worker_url="http://127.0.0.1:8787", base_env={"GASTOWN_KILO_PROVIDERS": "{}"}, brokered_snapshots=True,
        idle_stop_s=300, idle_stop_throttle_s=120), clock_ms=lambda: h.clock.ms)
    h.deps.containers = containers
    yield h, provider, containers
    await containers.aclose()


async def test_a_sling_for_a_stopped_town_starts_its_container_before_the_dispatch(lifecycle) -> None:
    h, provider, _ = lifecycle
    h.sling()
    await h.tick()
    assert len(provider.launches) == 1 and h.container.starts, "started, then dispatched"
    env = provider.launches[0].env
    assert env["GASTOWN_TOWN_ID"] == h.town_id and env["GASTOWN_SNAPSHOT_URL"] == "worker:"
    assert ContainerTokens(SECRET).verify(env["GASTOWN_CONTAINER_TOKEN"]).town_id == h.town_id
    assert env["GASTOWN_CONTROL_TOKEN"] and env["GASTOWN_KILO_PROVIDERS"] == "{}"
    assert env["GASTOWN_CONTAINER_TOKEN"] not in repr(provider.launches[0]) and env["GASTOWN_CONTROL_TOKEN"] not in repr(
        provider.launches[0])
    assert h.sync(store.get_town, h.town_id)["container_url"] == provider.url
    await h.tick()
    assert len(provider.launches) == 1, "a running container is used as is"


async def test_a_failed_start_is_not_retried_at_once(lifecycle) -> None:
    h, provider, containers = lifecycle
    provider.fail_start = True
    assert await containers.ensure_running(h.town_id) is None
    provider.fail_start = False
    assert await containers.ensure_running(h.town_id) is None, "within the retry delay"
    containers.monotonic = lambda: 1e12
    assert await containers.ensure_running(h.town_id) is not None


async def test_idle_container_stop_with_throttle_and_mayor_guard(lifecycle) -> None:
    h, provider, _ = lifecycle
    provider.state_value = "running"
    h.sync(enqueue_tx, h.town_id, "hello", h.clock.ms)  # a user's message: activity
    h.sync(lambda c: c.execute("UPDATE agents SET status = 'waiting' WHERE agent_id = 'mayor-1'"))
    await h.tick()
    assert provider.stops == 0  # the user wrote less than 5 min ago
    h.clock.advance(6 * 60)
    await h.tick()
    assert provider.stops == 1
    provider.state_value = "running"
    h.clock.advance(60)
    await h.tick()
    assert provider.stops == 1  # throttled: at most once per 2 min
    h.clock.advance(61)
    h.sling()
    await h.tick()
    assert provider.stops == 1  # active work


async def test_mayor_heartbeats_kept_an_idle_towns_container_up_forever(lifecycle) -> None:
    """Heartbeats say a process is alive, not that anyone needs it: with every 30 s mayor heartbeat
    setting the activity mark, 'quiet for 5 minutes' never held and the container never stopped."""
    h, provider, _ = lifecycle
    provider.state_value = "running"
    h.sync(enqueue_tx, h.town_id, "hello", h.clock.ms)
    h.sync(lambda c: c.execute("UPDATE agents SET status = 'waiting' WHERE agent_id = 'mayor-1'"))
    for _ in range(13):  # 6.5 minutes of heartbeats
        h.clock.advance(30)
        h.heartbeat("mayor-1")
        await h.tick()
    assert provider.stops == 1


async def test_a_mayor_in_a_turn_keeps_the_container(lifecycle) -> None:
    h, provider, _ = lifecycle
    provider.state_value = "running"
    h.sync(lambda c: c.execute("UPDATE agents SET status = 'working' WHERE agent_id = 'mayor-1'"))
    h.clock.advance(10 * 60)
    await h.tick()
    assert provider.stops == 0


def test_docker_create_body_keeps_secrets_out_of_labels_and_uses_the_host_network() -> None:
    p = DockerProvider(DockerSettings(image="localhost/gastown-runtime:dev", memory_bytes=2 << 30, nano_cpus=2 * 10**9))
    body = p.config(Launch("town-x", {"GASTOWN_CONTROL_TOKEN": "ctl-secret-value-0123"}), 18555)
    host = body["HostConfig"]
    assert host["NetworkMode"] == "host" and host["Memory"] == 2 << 30 and host["NanoCpus"] == 2 * 10**9
    assert host["UsernsMode"].startswith("auto") and body["StopTimeout"] >= 300 + 30
    assert "ctl-secret-value-0123" not in repr(body["Labels"]) and body["Labels"]["gastown.town"] == "town-x"
    assert "GASTOWN_PORT=18555" in body["Env"] and "GASTOWN_HOST=127.0.0.1" in body["Env"]


async def test_town_without_a_container_url_needs_a_worker_that_starts_containers(worker) -> None:
    code, body = await worker.request("POST", "/api/towns", json={"name": "t"})
    assert code == 400 and body["error"]["code"] == "CONTAINER_REQUIRED"
    code, body = await worker.request("POST", "/api/towns", json={"name": "t", "container_url": "http://127.0.0.1:9"})
    assert code == 400 and body["error"]["code"] == "CONTAINER_REQUIRED"


async def test_a_provider_worker_creates_a_town_without_a_url(tmp_path, ready_url) -> None:
    from tests.conftest import ADMIN_TOKEN
    from worker_api.app import create_app
    from aiohttp.test_utils import TestClient, TestServer

    app = create_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=SECRET, run_reconciler=False,
                     container_provider=FakeProvider(ready_url), launch=LaunchSettings("http://127.0.0.1:1"))
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/api/towns", json={"name": "t"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status == 201, await r.text()



async def test_work_that_ended_a_minute_ago_keeps_the_container(lifecycle) -> None:
    h, provider, _ = lifecycle
    h.sling()
    await h.tick()  # the container starts for the dispatch
    h.clock.advance(4 * 60)
    await h.tick()  # still working: the activity mark moves
    h.sync(lambda c: c.execute("UPDATE town_beads SET status = 'closed' WHERE town_id = ?", (h.town_id,)))
    h.sync(lambda c: c.execute("UPDATE agents SET status = 'idle', current_hook_bead_id = NULL WHERE town_id = ?",
                               (h.town_id,)))
    h.clock.advance(3 * 60)
    await h.tick()
    assert provider.stops == 0, "the town worked 3 minutes ago"
    h.clock.advance(3 * 60)
    await h.tick()
    assert provider.stops == 1


async def test_stop_if_idle_spares_a_busy_mayor(lifecycle) -> None:
    h, provider, containers = lifecycle
    provider.state_value = "running"
    now = h.clock.ms + 3600_000
    assert not await containers.stop_if_idle(h.town_id, now, active=False, mayor_busy=True, last_stop_at=0)
    assert await containers.stop_if_idle(h.town_id, now, active=False, mayor_busy=False, last_stop_at=0)


async def test_a_long_answer_does_not_shorten_the_idle_window(lifecycle) -> None:
    """The window counts from the end of the mayor's answer, not from the question: a 4-minute turn
    followed by one quiet minute was 'idle for 5 minutes' and the container stopped under the user."""
    h, provider, _ = lifecycle
    provider.state_value = "running"
    h.sync(enqueue_tx, h.town_id, "hello", h.clock.ms)
    h.sync(lambda c: c.execute("UPDATE agents SET status = 'working', working_since = ? WHERE agent_id = 'mayor-1'",
                               (h.clock.ms,)))
    h.clock.advance(4 * 60)
    assert h.sync(_waiting_tx, h.town_id, "mayor-1", h.clock.ms, h.clock.ms)  # the answer ends
    h.clock.advance(2 * 60)
    await h.tick()
    assert provider.stops == 0, "two minutes after the answer"
    h.clock.advance(3 * 60 + 1)
    await h.tick()
    assert provider.stops == 1
