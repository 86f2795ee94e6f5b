"""Drain handshake and container token refresh, with an injected clock (no sleeping)."""
from __future__ import annotations

from tests.test_worker_api_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    JWT_SECRET,
    FakeClock,
    Worker,
    clock,
    town,
    worker,
)
from worker_api import drain, events
from worker_api.tokens import ContainerTokens


def _hb(instance: str) -> dict:
    return {"status": "running", "active_tools": [], "message_count": 0, "container_instance_id": instance}


async def _setup(worker: Worker, town: tuple[str, str]) -> tuple[str, str, str]:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    hb = f"/api/towns/{town_id}/agents/pc-1/heartbeat"
    status, data = await worker.call("POST", hb, token=token, json=_hb("old-instance"))
    assert (status, data) == (200, {"heartbeat": True})
    return town_id, token, hb


async def _evict(worker: Worker, town_id: str, token: str) -> str:
    status, data = await worker.call("POST", f"/api/towns/{town_id}/container-eviction", token=token)
    assert status == 200
    return data["drain_nonce"]


async def test_eviction_starts_a_drain_offered_on_heartbeats(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token, hb = await _setup(worker, town)
    nonce = await _evict(worker, town_id, token)
    assert isinstance(nonce, str) and len(nonce) >= 16
    status, data = await worker.call("POST", hb, token=token, json=_hb("old-instance"))
    assert (status, data) == (200, {"heartbeat": True, "drain_nonce": nonce})
    _, info = await worker.call("GET", f"/api/towns/{town_id}", token=token)
    assert info["draining"] is True
    [ev] = await worker.db.run(events.list_events, town_id, event_type="container_eviction")
    assert ev["agent_id"] is None and nonce not in str(ev["payload"])


async def test_container_ready_with_the_matching_nonce_clears_the_drain(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token, hb = await _setup(worker, town)
    nonce = await _evict(worker, town_id, token)
    ready = f"/api/towns/{town_id}/container-ready"
    assert await worker.call("POST", ready, token=token, json={"nonce": "wrong"}) == (200, {"cleared": False})
    assert await worker.db.run(drain.is_draining, town_id, worker.clock.ms)
    assert await worker.call("POST", ready, token=token, json={"nonce": nonce}) == (200, {"cleared": True})
    assert not await worker.db.run(drain.is_draining, town_id, worker.clock.ms)
    assert await worker.call("POST", hb, token=token, json=_hb("old-instance")) == (200, {"heartbeat": True})
    # acknowledging again, with no drain, clears nothing
    assert await worker.call("POST", ready, token=token, json={"nonce": nonce}) == (200, {"cleared": False})


async def test_container_ready_without_nonce_is_400(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    for body in (None, {}, {"nonce": ""}, {"nonce": 7}):
        status, data = await worker.call("POST", f"/api/towns/{town_id}/container-ready", token=token, json=body)
        assert status == 400, body
        assert data["error"]["code"] in ("INVALID_JSON", "INVALID_REQUEST")


async def test_a_repeated_eviction_rearms_with_a_new_nonce(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token, _ = await _setup(worker, town)
    first = await _evict(worker, town_id, token)
    second = await _evict(worker, town_id, token)
    assert first != second
    ready = f"/api/towns/{town_id}/container-ready"
    assert await worker.call("POST", ready, token=token, json={"nonce": first}) == (200, {"cleared": False})
    assert await worker.call("POST", ready, token=token, json={"nonce": second}) == (200, {"cleared": True})


async def test_heartbeat_from_a_new_container_instance_clears_the_drain(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token, hb = await _setup(worker, town)
    await _evict(worker, town_id, token)
    assert await worker.call("POST", hb, token=token, json=_hb("new-instance")) == (200, {"heartbeat": True})
    assert not await worker.db.run(drain.is_draining, town_id, worker.clock.ms)


async def test_stale_heartbeat_from_the_dying_container_does_not_clear_the_drain(
    worker: Worker, town: tuple[str, str]
) -> None:
    town_id, token, hb = await _setup(worker, town)
    nonce = await _evict(worker, town_id, token)
    status, data = await worker.call("POST", hb, token=token, json=_hb("old-instance"))
    assert data == {"heartbeat": True, "drain_nonce": nonce}
    assert await worker.db.run(drain.is_draining, town_id, worker.clock.ms)


async def test_first_heartbeat_during_drain_without_recorded_instance_does_not_clear_it(
    worker: Worker, town: tuple[str, str]
) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    nonce = await _evict(worker, town_id, token)  # no instance recorded yet
    status, data = await worker.call(
        "POST", f"/api/towns/{town_id}/agents/pc-1/heartbeat", token=token, json=_hb("some-instance")
    )
    assert data == {"heartbeat": True, "drain_nonce": nonce}


async def test_drain_expires_after_seven_minutes(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token, hb = await _setup(worker, town)
    nonce = await _evict(worker, town_id, token)
    worker.clock.advance(7 * 60 - 1)
    assert (await worker.call("POST", hb, token=token, json=_hb("old-instance")))[1].get("drain_nonce") == nonce
    worker.clock.advance(1)
    assert await worker.call("POST", hb, token=token, json=_hb("old-instance")) == (200, {"heartbeat": True})
    assert not await worker.db.run(drain.is_draining, town_id, worker.clock.ms)
    # an expired nonce no longer clears anything
    ready = f"/api/towns/{town_id}/container-ready"
    assert await worker.call("POST", ready, token=token, json={"nonce": nonce}) == (200, {"cleared": False})


async def test_drain_of_one_town_does_not_affect_another(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    other, _ = await worker.create_town(name="Other")
    await _evict(worker, town_id, token)
    assert not await worker.db.run(drain.is_draining, other, worker.clock.ms)


# ---------------------------------------------------------------- token refresh


def _refresh_path(town_id: str) -> str:
    return f"/api/towns/{town_id}/refresh-container-token"


async def test_expired_token_is_refused_by_routes_but_accepted_by_refresh(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    worker.clock.advance(8 * 3600 + 1)
    status, data = await worker.call("GET", f"/api/towns/{town_id}/agents", token=token)
    assert status == 401 and data["error"]["code"] == "UNAUTHORIZED" and "expired" in data["error"]["message"]
    status, data = await worker.call("POST", _refresh_path(town_id), token=token, json={})
    assert status == 200
    fresh = data["token"]
    claims = ContainerTokens(JWT_SECRET, now=worker.clock).verify(fresh)
    assert claims.town_id == town_id and claims.iat == int(worker.clock())
    assert (await worker.call("GET", f"/api/towns/{town_id}/agents", token=fresh))[0] == 200


async def test_refresh_refuses_tokens_older_than_seven_days(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    worker.clock.advance(7 * 24 * 3600 + 1)
    status, data = await worker.call("POST", _refresh_path(town_id), token=token)
    assert status == 401 and "too_old" in data["error"]["message"]


async def test_refresh_refuses_another_towns_token(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    _, other_token = await worker.create_town(name="Other")
    status, data = await worker.call("POST", _refresh_path(town_id), token=other_token)
    assert status == 403 and data["error"]["code"] == "FORBIDDEN"


async def test_refresh_refuses_tokens_signed_with_another_secret(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    forged = ContainerTokens("another-secret-0123456789abcdef0123", now=worker.clock).mint(town_id)
    status, data = await worker.call("POST", _refresh_path(town_id), token=forged)
    assert status == 401 and "bad_signature" in data["error"]["message"]
    status, _ = await worker.call("POST", _refresh_path(town_id), token="garbage")
    assert status == 401


async def test_refresh_with_the_admin_token_mints_a_token(worker: Worker, town: tuple[str, str], clock: FakeClock) -> None:
    town_id, _ = town
    status, data = await worker.call("POST", _refresh_path(town_id), token=ADMIN_TOKEN)
    assert status == 200
    assert ContainerTokens(JWT_SECRET, now=clock).verify(data["token"]).town_id == town_id
