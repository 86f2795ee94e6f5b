"""Town-scoped snapshot access (issue 13, item 2): the container holds no store credential; the
worker presigns one request at a time on one of that agent's keys (real SeaweedFS, real worker)."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gastown.local.s3servers import s3_env
from supervisor.objstore import PreconditionFailed
from supervisor.objstore_broker import BrokeredStore
from supervisor.sealing import WorkerSealer
from supervisor.snapshots import AgentSnapshots, StaleWriter
from supervisor.worker_bridge import WorkerBridge
from supervisor.worker_client import WorkerClient
from tests.conftest import ADMIN_TOKEN, JWT_SECRET, Worker
from tests.integration.test_snapshot_seals import _db
from tests.s3servers import new_bucket, seaweedfs  # noqa: F401
from worker_api.app import create_app
from worker_api.snapshot_access import SnapshotBroker


@pytest.fixture
async def brokered(seaweedfs, tmp_path: Path):  # noqa: ANN001, ANN201
    bucket = new_bucket(seaweedfs)
    broker = SnapshotBroker.from_env({"GASTOWN_SNAPSHOT_URL": f"s3://{bucket}/gastown", **s3_env(seaweedfs, bucket)})
    server = TestServer(create_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET,
                                   snapshot_broker=broker), host="127.0.0.1")
    await server.start_server()
    worker = Worker(server, aiohttp.ClientSession())
    towns = {}
    for name in ("a", "b"):
        town_id, token = await worker.create_town()
        for agent in ("polecat-1", "polecat-2"):
            assert (await worker.request("POST", f"/api/towns/{town_id}/agents",
                                         json={"agent_id": agent, "role": "polecat", "name": agent}))[0] == 201
        client = WorkerClient(worker.url, token, town_id)
        bridge = WorkerBridge(client)
        bridge.loop = asyncio.get_running_loop()
        towns[name] = (town_id, token, client, bridge)

    def snaps(town: str, instance: str, agent: str = "polecat-1") -> AgentSnapshots:
        town_id, _, _, bridge = towns[town]
        return AgentSnapshots(BrokeredStore(bridge), town_id, agent, instance, sealer=WorkerSealer(bridge),
                              sleep=lambda s: None)

    yield worker, towns, snaps, seaweedfs, bucket
    for _, _, client, _ in towns.values():
        await client.close()
    await worker.http.close()
    await server.close()


async def test_snapshot_restore_and_fencing_work_with_no_store_credential(brokered, tmp_path: Path) -> None:
    worker, towns, snaps, *_ = brokered
    first = snaps("a", "c1")
    await asyncio.to_thread(first.snapshot, str(_db(tmp_path / "a" / "kilo.db", "one")))
    await asyncio.to_thread(first.snapshot, str(_db(tmp_path / "a" / "kilo.db", "two")))
    second = snaps("a", "c2")
    restored = await asyncio.to_thread(second.restore, str(tmp_path / "b" / "kilo.db"))
    assert restored.restored and restored.generation == 2, restored
    await asyncio.to_thread(second.snapshot, str(tmp_path / "b" / "kilo.db"))
    with pytest.raises(StaleWriter):  # the first container's manifest is stale now: fenced through the broker
        await asyncio.to_thread(first.snapshot, str(tmp_path / "a" / "kilo.db"))
    with pytest.raises(PreconditionFailed):  # conditional headers are signed and honoured
        await asyncio.to_thread(lambda: second.store.put_bytes(second.manifest_key, b"{}", if_none_match=True))
    keys = await asyncio.to_thread(second.store.list_keys, second.base + "generations/")
    assert keys and all(k.startswith(f"towns/{towns['a'][0]}/agents/polecat-1/generations/") for k in keys)


async def test_a_presigned_request_reaches_only_its_own_key(brokered, tmp_path: Path) -> None:
    """A URL for one agent's manifest, pointed at another town's (or agent's) key, is refused by
    the store itself: the signature covers the key."""
    worker, towns, snaps, server, bucket = brokered
    await asyncio.to_thread(snaps("b", "c1").snapshot, str(_db(tmp_path / "b" / "kilo.db", "theirs")))
    town_a, token_a = towns["a"][0], towns["a"][1]
    status, access = await worker.request("POST", f"/api/towns/{town_a}/agents/polecat-1/snapshot-access",
                                          token=token_a, json={"op": "get", "key": "manifest.json"})
    assert status == 200 and access["method"] == "GET", access
    theirs = access["url"].replace(f"/towns/{town_a}/", f"/towns/{towns['b'][0]}/")
    for url in (theirs, access["url"].replace("polecat-1", "polecat-2")):
        with pytest.raises(urllib.error.HTTPError) as e:
            await asyncio.to_thread(urllib.request.urlopen, url, None, 10)
        assert e.value.code == 403, url
    assert server.secret not in json.dumps(access)  # the key id names the signer; the secret never leaves


@pytest.mark.parametrize("body", [{"op": "get", "key": "../../b/agents/polecat-1/manifest.json"},
                                  {"op": "put", "key": "generations/../manifest.json"},
                                  {"op": "get", "key": "/etc/passwd"}, {"op": "list", "key": "../"},
                                  {"op": "put", "key": "manifest.json", "if_none_match": True, "if_match": "abc"}])
async def test_keys_outside_the_agents_prefix_cannot_be_named(brokered, body: dict) -> None:
    worker, towns, *_ = brokered
    town_a, token_a = towns["a"][0], towns["a"][1]
    status, data = await worker.request("POST", f"/api/towns/{town_a}/agents/polecat-1/snapshot-access",
                                        token=token_a, json=body)
    assert status == 400, data


async def test_only_the_towns_runtime_may_ask(brokered) -> None:
    worker, towns, *_ = brokered
    (town_a, token_a, *_), (town_b, token_b, *_) = towns["a"], towns["b"]
    path = f"/api/towns/{town_a}/agents/polecat-1/snapshot-access"
    body = {"op": "get", "key": "manifest.json"}
    assert (await worker.request("POST", path, token=token_b, json=body))[0] == 403  # another town's runtime
    _, agent = await worker.request("POST", f"/api/towns/{town_a}/agents/polecat-1/token", token=token_a, json={})
    assert (await worker.request("POST", path, token=agent["token"], json=body))[0] == 403  # the agent itself
    assert (await worker.request("GET", f"/api/towns/{town_a}/snapshot-store", token=token_a)) == \
        (200, {"conditional_writes": True})
