"""The event archive and its forwarder (issue 12, item 3): a resent batch is stored once, a new
container's restarted ids are not taken for duplicates, each agent keeps a bounded history, and the
container's forwarder batches, retries in order and bounds its queue."""
from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from supervisor.event_forward import EventForwarder
from supervisor.worker_client import WorkerClient
from tests.test_worker_api_support import ADMIN_TOKEN, Worker, clock, town, worker  # noqa: F401
from worker_api.app import create_app
from worker_api.front import archive


def batch(agent: str, ids: range, ts0: int = 1000) -> dict[str, Any]:
    return {"events": [{"agent_id": agent, "id": i, "type": "session.status", "data": {"i": i}, "ts": ts0 + i}
                       for i in ids]}


async def test_a_resent_batch_is_stored_once_and_a_new_containers_ids_are_new_events(worker: Worker,
                                                                                   town: tuple[str, str]) -> None:
    town_id, token = town
    path = f"/api/towns/{town_id}/agent-events"
    assert (await worker.call("POST", path, token=token, json=batch("mayor", range(1, 4))))[1] == \
        {"stored": 3, "duplicates": 0}
    assert (await worker.call("POST", path, token=token, json=batch("mayor", range(1, 4))))[1] == \
        {"stored": 0, "duplicates": 3}
    # A new container counts from 1 again, later: new events, appended after the old ones.
    assert (await worker.call("POST", path, token=token, json=batch("mayor", range(1, 3), ts0=9000)))[1]["stored"] == 2
    status, page = await worker.call("GET", f"/api/towns/{town_id}/agents/mayor/events?after=0", token=ADMIN_TOKEN)
    assert status == 200 and [e["data"]["i"] for e in page["events"]] == [1, 2, 3, 1, 2]
    ids = [e["id"] for e in page["events"]]
    assert ids == sorted(ids) and len(set(ids)) == 5
    _, after = await worker.call("GET", f"/api/towns/{town_id}/agents/mayor/events?after={ids[2]}", token=ADMIN_TOKEN)
    assert [e["id"] for e in after["events"]] == ids[3:]


async def test_each_agent_keeps_a_bounded_history(aiohttp_client: Any, tmp_path: Any, clock: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GASTOWN_ARCHIVE_KEEP_EVENTS", "5")  # the worker reads its retention at start
    worker = Worker(await aiohttp_client(create_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret="j" * 32,
                                                    now=clock)), clock)
    town_id, token = await worker.create_town()
    path = f"/api/towns/{town_id}/agent-events"
    await worker.call("POST", path, token=token, json=batch("mayor", range(1, 21)))
    await worker.call("POST", path, token=token, json=batch("polecat-1", range(1, 3)))
    _, page = await worker.call("GET", f"/api/towns/{town_id}/agents/mayor/events", token=ADMIN_TOKEN)
    assert [e["data"]["i"] for e in page["events"]] == [16, 17, 18, 19, 20]
    _, other = await worker.call("GET", f"/api/towns/{town_id}/agents/polecat-1/events", token=ADMIN_TOKEN)
    assert len(other["events"]) == 2


def test_retention_is_configured_by_the_environment_and_refuses_nonsense() -> None:
    keep = archive.Retention.from_env({"GASTOWN_ARCHIVE_KEEP_EVENTS": "100", "GASTOWN_ARCHIVE_KEEP_HOURS": "2"})
    assert (keep.per_agent, keep.max_age_ms) == (100, 2 * 3_600_000)
    assert archive.Retention.from_env({}) == archive.Retention()
    for bad in ({"GASTOWN_ARCHIVE_KEEP_EVENTS": "0"}, {"GASTOWN_ARCHIVE_KEEP_HOURS": "0"},
                {"GASTOWN_ARCHIVE_KEEP_EVENTS": "many"}):
        with pytest.raises(ValueError):
            archive.Retention.from_env(bad)


async def test_bad_batches_are_4xx(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    path = f"/api/towns/{town_id}/agent-events"
    for body in ({"events": [{"agent_id": "../x", "id": 1, "type": "t", "ts": 1}]},
                 {"events": [{"agent_id": "a", "id": -1, "type": "t", "ts": 1}]},
                 {"events": [{"agent_id": "a", "id": 1, "type": "", "ts": 1}]},
                 batch("a", range(0, 501))):
        status, err = await worker.call("POST", path, token=token, json=body)
        assert status == 400 and err["error"]["code"], body
    assert (await worker.call("GET", f"/api/towns/{town_id}/agents/mayor/events?after=x", token=ADMIN_TOKEN))[0] == 400


class Sink:
    """A worker's agent-events route that fails the first ``fail`` calls with ``status``."""

    def __init__(self, fail: int = 0, status: int = 503) -> None:
        self.fail, self.status, self.batches = fail, status, []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail:
            self.fail -= 1
            return web.json_response({"error": {"code": "X", "message": "x"}}, status=self.status)
        self.batches.append([(e["agent_id"], e["id"]) for e in body["events"]])
        return web.json_response({"stored": len(body["events"]), "duplicates": 0})


async def forwarder_against(sink: Sink) -> tuple[EventForwarder, TestServer]:
    app = web.Application()
    app.router.add_post("/api/towns/town-1/agent-events", sink.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = WorkerClient(str(server.make_url("")), "token-0123456789", "town-1")
    return EventForwarder(client, linger_s=0.01), server


async def test_the_forwarder_retries_a_failed_batch_in_order(monkeypatch) -> None:
    import supervisor.event_forward as ef

    sleeps: list[float] = []
    real_sleep = ef.asyncio.sleep

    async def fast_sleep(s: float) -> None:
        sleeps.append(s)
        await real_sleep(0)

    monkeypatch.setattr(ef.asyncio, "sleep", fast_sleep)
    sink = Sink(fail=2)
    fwd, server = await forwarder_against(sink)
    try:
        for i in range(1, 4):
            fwd.push("mayor", {"id": i, "type": "t", "data": None, "ts": i})
        await fwd.flush(timeout=5)  # the first attempt fails; flush stops at a failure
        task = ef.asyncio.ensure_future(fwd.run())
        fwd.push("mayor", {"id": 4, "type": "t", "data": None, "ts": 4})
        for _ in range(200):
            if sum(len(b) for b in sink.batches) == 4:
                break
            await real_sleep(0.01)
        task.cancel()
        assert [x for b in sink.batches for x in b] == [("mayor", i) for i in range(1, 5)]
        assert 1.0 in sleeps  # backed off after the failure
    finally:
        await fwd.worker.close()
        await server.close()


async def test_a_refused_batch_is_dropped_and_the_queue_is_bounded() -> None:
    sink = Sink(fail=1, status=400)
    fwd, server = await forwarder_against(sink)
    fwd.max_queue = 3
    try:
        for i in range(1, 6):
            fwd.push("mayor", {"id": i, "type": "t", "data": None, "ts": i})
        assert fwd.dropped == 2 and [e["id"] for e in fwd.queue] == [3, 4, 5]
        await fwd.flush(timeout=5)  # refused for good (400): dropped so later events are not blocked
        fwd.push("mayor", {"id": 6, "type": "t", "data": None, "ts": 6})
        await fwd.flush(timeout=5)
        assert sink.batches == [[("mayor", 6)]]
    finally:
        await fwd.worker.close()
        await server.close()
