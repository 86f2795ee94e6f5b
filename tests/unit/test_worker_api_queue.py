"""Worker API nudge queue and container telemetry routes, through real HTTP."""
from __future__ import annotations

from tests.test_worker_api_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    Worker,
    clock,
    town,
    worker,
)
from worker_api import events


# ---------------------------------------------------------------- nudges


async def test_pending_nudges_are_urgent_first_then_fifo(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    base = f"/api/towns/{town_id}/agents/pc-1"
    ids = {}
    for msg, prio in [("n1", "normal"), ("u1", "urgent"), ("n2", "normal"), ("u2", "urgent")]:
        status, data = await worker.call("POST", f"{base}/nudges", token=ADMIN_TOKEN, json={"message": msg, "priority": prio})
        assert status == 201 and data["delivered_at"] is None
        ids[msg] = data["nudge_id"]
    status, data = await worker.call("GET", f"{base}/pending-nudges", token=token)
    assert status == 200
    assert [n["message"] for n in data["nudges"]] == ["u1", "u2", "n1", "n2"]
    assert data["nudges"][0] == {"nudge_id": ids["u1"], "message": "u1", "mode": "wait-idle",
                                 "priority": "urgent", "source": "system"}
    assert await worker.call("POST", f"{base}/nudge-delivered", token=token, json={"nudge_id": ids["u1"]}) == (
        200, {"marked": True})
    # delivering twice is harmless
    assert (await worker.call("POST", f"{base}/nudge-delivered", token=token, json={"nudge_id": ids["u1"]}))[0] == 200
    _, data = await worker.call("GET", f"{base}/pending-nudges", token=token)
    assert [n["message"] for n in data["nudges"]] == ["u2", "n1", "n2"]


async def test_expired_nudges_are_not_offered(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    base = f"/api/towns/{town_id}/agents/pc-1"
    await worker.call("POST", f"{base}/nudges", token=ADMIN_TOKEN, json={"message": "short", "mode": "queue", "ttl_s": 60})
    await worker.call("POST", f"{base}/nudges", token=ADMIN_TOKEN, json={"message": "forever"})
    worker.clock.advance(61)
    _, data = await worker.call("GET", f"{base}/pending-nudges", token=token)
    assert [n["message"] for n in data["nudges"]] == ["forever"]


async def test_nudge_delivered_for_unknown_or_foreign_nudge_is_404(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    await worker.create_agent(town_id, agent_id="pc-2")
    _, nudge = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-2/nudges", token=ADMIN_TOKEN, json={"message": "m"})
    for nudge_id in ("nudge-unknown", nudge["nudge_id"]):
        status, data = await worker.call(
            "POST", f"/api/towns/{town_id}/agents/pc-1/nudge-delivered", token=token, json={"nudge_id": nudge_id}
        )
        assert status == 404 and data["error"]["code"] == "NUDGE_NOT_FOUND"


async def test_agent_can_nudge_another_agent_with_its_container_token(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/nudges", token=token, json={"message": "m"})
    assert status == 201, data


# ---------------------------------------------------------------- telemetry


async def test_container_events_are_accepted_and_stored(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    body = {"event": "mayor.prewarm_complete", "agent_id": "mayor-1", "duration_ms": 1234, "phase_ms": {"spawn": 10}}
    status, data = await worker.call("POST", f"/api/towns/{town_id}/container-events", token=token, json=body)
    assert (status, data) == (202, {"accepted": True})
    [ev] = await worker.db.run(events.list_events, town_id)
    assert ev["event_type"] == "container_telemetry" and ev["agent_id"] == "mayor-1"
    assert ev["payload"] == body


async def test_container_events_without_event_name_are_400(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    for body in ({"agent_id": "a"}, {"event": ""}, {"event": 5}):
        status, data = await worker.call("POST", f"/api/towns/{town_id}/container-events", token=token, json=body)
        assert status == 400 and data["error"]["code"] == "INVALID_REQUEST"
