"""Manifests the worker vouches for (issue 13, item 2): a snapshot published through a real worker
carries its seal; a manifest edited in the bucket — even one consistent with a substituted database
— is refused at restore, logged, and the local database is left alone (real SeaweedFS)."""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from supervisor.objstore import open_store
from supervisor.sealing import WorkerSealer
from supervisor.snapshots import AgentSnapshots
from supervisor.sqlitefile import digest
from supervisor.worker_bridge import WorkerBridge
from supervisor.worker_client import WorkerClient
from tests.s3servers import new_bucket, s3_env, seaweedfs  # noqa: F401


def _db(path: Path, tag: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE IF NOT EXISTS t(tag TEXT)")
    c.execute("INSERT INTO t VALUES (?)", (tag,))
    c.commit()
    c.close()
    return path


def _tags(path: Path) -> list[str]:
    c = sqlite3.connect(path)
    try:
        return [r[0] for r in c.execute("SELECT tag FROM t")]
    finally:
        c.close()


@pytest.fixture
async def sealed(worker, seaweedfs, tmp_path: Path):  # noqa: ANN001, ANN201
    town_id, token = await worker.create_town()
    assert (await worker.request("POST", f"/api/towns/{town_id}/agents",
                                 json={"agent_id": "polecat-1", "role": "polecat", "name": "P"}))[0] == 201
    bucket = new_bucket(seaweedfs)
    store = open_store(f"s3://{bucket}/snap", env=s3_env(seaweedfs, bucket))
    client = WorkerClient(worker.url, token, town_id)
    bridge = WorkerBridge(client)
    bridge.loop = asyncio.get_running_loop()
    sealer = WorkerSealer(bridge)

    def snaps(instance: str) -> AgentSnapshots:
        return AgentSnapshots(store, town_id, "polecat-1", instance, sealer=sealer, sleep=lambda s: None)

    yield store, snaps
    await client.close()


async def test_a_sealed_snapshot_restores_in_a_new_container(sealed, tmp_path: Path) -> None:
    store, snaps = sealed
    first = snaps("c1")
    await asyncio.to_thread(first.snapshot, str(_db(tmp_path / "a" / "kilo.db", "ours")))
    manifest = json.loads(store.get_bytes(first.manifest_key)[0])
    assert len(manifest["seal"]) == 64
    restored = await asyncio.to_thread(snaps("c2").restore, str(tmp_path / "b" / "kilo.db"))
    assert restored.restored and _tags(tmp_path / "b" / "kilo.db") == ["ours"]


async def test_a_substituted_database_with_a_consistent_manifest_is_refused(sealed, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Someone with write access to the bucket uploads their own valid kilo.db and rewrites the
    manifest's size, sha256 and key to match: the sha256 alone (the container's own word) accepted it."""
    store, snaps = sealed
    first = snaps("c1")
    await asyncio.to_thread(first.snapshot, str(_db(tmp_path / "a" / "kilo.db", "ours")))
    manifest = json.loads(store.get_bytes(first.manifest_key)[0])
    evil = _db(tmp_path / "evil" / "kilo.db", "planted")
    size, sha = digest(str(evil))
    key = manifest["key"].replace(".db", "-x.db")
    store.put_file(first.base + key, str(evil))
    store.put_bytes(first.manifest_key, json.dumps({**manifest, "bytes": size, "sha256": sha, "key": key}).encode())
    local = _db(tmp_path / "b" / "kilo.db", "local")
    with caplog.at_level(logging.ERROR):
        result = await asyncio.to_thread(snaps("c2").restore, str(local))
    assert not result.restored and result.reason == "bad_seal", result
    assert _tags(local) == ["local"], "the local database is untouched"
    assert "snapshot.manifest_refused" in [r.message for r in caplog.records]
    unsealed = {k: v for k, v in manifest.items() if k != "seal"}
    store.put_bytes(first.manifest_key, json.dumps(unsealed).encode())
    result = await asyncio.to_thread(snaps("c3").restore, str(local))
    assert not result.restored and result.reason == "unsealed_manifest", result


async def test_a_seal_of_one_agent_does_not_vouch_for_another(sealed, worker, tmp_path: Path) -> None:
    store, snaps = sealed
    first = snaps("c1")
    await asyncio.to_thread(first.snapshot, str(_db(tmp_path / "a" / "kilo.db", "ours")))
    manifest = json.loads(store.get_bytes(first.manifest_key)[0])
    body = {"manifest": {k: v for k, v in manifest.items() if k != "seal"}, "seal": manifest["seal"]}
    town_id = first.town_id
    assert (await worker.request("POST", f"/api/towns/{town_id}/agents",
                                 json={"agent_id": "polecat-2", "role": "polecat", "name": "Q"}))[0] == 201
    ok = await worker.request("POST", f"/api/towns/{town_id}/agents/polecat-1/snapshot-verify", json=body)
    other = await worker.request("POST", f"/api/towns/{town_id}/agents/polecat-2/snapshot-verify", json=body)
    assert ok == (200, {"valid": True}) and other == (200, {"valid": False})
