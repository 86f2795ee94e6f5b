"""kilo.db snapshots against real SQLite and real S3 servers; each test is named after the failure
it guards against (see reference/gastown-behaviour.md §4.2-4.3 and the Litestream issues)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from supervisor.objstore import NotFound, ObjectStore, StoreUnavailable, TooLarge, open_store
from supervisor.snapshots import AgentSnapshots, SnapshotFailed, StaleWriter, quick_check
from tests.s3servers import TcpProxy, new_bucket, rclone_s3, s3_env, seaweedfs  # noqa: F401


# -- helpers --------------------------------------------------------------------------------------
def make_store(request, kind: str, tmp_path: Path, prefix: str = "snap") -> ObjectStore:
    if kind == "file":
        return open_store(f"file://{tmp_path / 'store'}")
    server = request.getfixturevalue("seaweedfs" if kind == "seaweedfs" else "rclone_s3")
    bucket = new_bucket(server)
    return open_store(f"s3://{bucket}/{prefix}", env=s3_env(server, bucket))


@pytest.fixture(params=["file", "seaweedfs"])
def store(request, tmp_path):
    return make_store(request, request.param, tmp_path)


def snaps(store, agent="mayor-1", town="town-a", instance="c1", **kw) -> AgentSnapshots:
    kw.setdefault("sleep", lambda s: None)
    return AgentSnapshots(store, town, agent, instance, **kw)


def make_db(path: Path, rows: int, tag: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT, payload BLOB)")
    c.executemany("INSERT INTO t(tag, payload) VALUES(?, randomblob(1000))", [(tag,)] * rows)
    c.commit()
    c.close()
    return path


def tags(path: Path) -> list[tuple[str, int]]:
    c = sqlite3.connect(path)
    try:
        return c.execute("SELECT tag, count(*) FROM t GROUP BY tag ORDER BY tag").fetchall()
    finally:
        c.close()


def integrity(path: Path) -> str:
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return c.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        c.close()


def listing(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


class FaultyStore(ObjectStore):
    """Delegates to a real store; ``hooks[name]`` may replace one method to inject a fault."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner.url, inner.prefix)
        self.inner, self.hooks = inner, {}

    def __getattribute__(self, name):
        hooks = object.__getattribute__(self, "__dict__").get("hooks", {})
        if name in hooks:
            return hooks[name]
        if name in ("put_file", "put_bytes", "get_bytes", "download_file", "head", "delete",
                    "list_keys", "supports_conditional_writes"):
            return getattr(object.__getattribute__(self, "inner"), name)
        return object.__getattribute__(self, name)


# -- consistency under a live writer ---------------------------------------------------------------
WRITER = textwrap.dedent("""
    import os, sqlite3, sys, time
    db, stop = sys.argv[1], sys.argv[2]
    c = sqlite3.connect(db, timeout=10, isolation_level=None)  # one long-lived connection, like kilo
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT, payload BLOB)")
    print("ready", flush=True)
    deadline = time.time() + 60
    while not os.path.exists(stop) and time.time() < deadline:
        c.execute("BEGIN IMMEDIATE")
        for _ in range(20):
            c.execute("INSERT INTO t(tag, payload) VALUES('w', randomblob(2000))")
        c.execute("COMMIT")
        time.sleep(0.002)
""")


def test_snapshot_while_writer_active_restores_consistent_db(request, store, tmp_path):
    db, stop = tmp_path / "home" / "kilo.db", tmp_path / "stop"
    db.parent.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        a = snaps(store)
        for i in range(5):
            assert Path(str(db) + "-wal").exists()  # really copying a live WAL database
            reader = sqlite3.connect(db, timeout=10)
            committed = reader.execute("SELECT max(id) FROM t").fetchone()[0] or 0
            reader.close()
            info = a.snapshot(str(db))
            assert info.generation == i + 1
            out = tmp_path / f"restored-{i}" / "kilo.db"
            res = snaps(store, instance="reader").restore(str(out))
            assert res.restored and res.generation == i + 1, res
            assert integrity(out) == "ok"
            c = sqlite3.connect(out)
            count, top = c.execute("SELECT count(*), max(id) FROM t").fetchone()
            c.close()
            assert top >= committed > 0
            assert count == top and top % 20 == 0  # no torn transaction, no gap
            time.sleep(0.2)
    finally:
        stop.touch()
        writer.wait(30)


# -- restore safety --------------------------------------------------------------------------------
def test_restore_removes_stale_wal_and_shm(store, tmp_path):
    src = make_db(tmp_path / "src" / "kilo.db", 50, "snap")
    snaps(store).snapshot(str(src))
    db = make_db(tmp_path / "home" / "kilo.db", 10, "old")
    # leave uncheckpointed frames in a -wal plus a -shm, as a killed kilo would
    script = ("import sqlite3,os,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_autocheckpoint=0');"
              "c.executemany(\"INSERT INTO t(tag,payload) VALUES('stale',randomblob(3000))\", [()]*40);"
              "c.commit(); os._exit(0)")
    subprocess.run([sys.executable, "-c", script, str(db)], check=True, timeout=30)
    assert Path(str(db) + "-wal").stat().st_size > 0 and Path(str(db) + "-shm").exists()
    res = snaps(store, instance="c2").restore(str(db))
    assert res.restored, res
    assert not Path(str(db) + "-wal").exists() and not Path(str(db) + "-shm").exists()
    assert sorted(os.listdir(db.parent)) == ["kilo.db"]  # no temp files left
    assert tags(db) == [("snap", 50)] and integrity(db) == "ok"


def _remote(store, a: AgentSnapshots) -> dict:
    return json.loads(store.get_bytes(a.manifest_key)[0])


def test_corrupt_remote_snapshot_not_restored(store, tmp_path):
    a = snaps(store)
    a.snapshot(str(make_db(tmp_path / "src" / "kilo.db", 50)))
    key = a.base + _remote(store, a)["key"]
    data = bytearray(store.get_bytes(key)[0])
    data[5000:5010] = b"\xff" * 10
    store.put_bytes(key, bytes(data))
    local = make_db(tmp_path / "home" / "kilo.db", 3, "local")
    before = listing(local.parent)
    res = snaps(store, instance="c2").restore(str(local))
    assert (res.restored, res.reason) == (False, "checksum_mismatch")
    assert listing(local.parent) == before  # local state untouched, no temp file
    fresh = tmp_path / "fresh" / "kilo.db"
    assert not snaps(store, instance="c3").restore(str(fresh)).restored
    assert not fresh.exists()  # fresh start


def test_corrupt_snapshot_with_matching_checksum_fails_integrity_check(store, tmp_path):
    import hashlib
    a = snaps(store)
    a.snapshot(str(make_db(tmp_path / "src" / "kilo.db", 200)))
    m = _remote(store, a)
    data = bytearray(store.get_bytes(a.base + m["key"])[0])
    data[4096 * 3:4096 * 3 + 200] = os.urandom(200)  # scribble over a b-tree page
    m.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    store.put_bytes(a.base + m["key"], bytes(data))
    store.put_bytes(a.manifest_key, json.dumps(m).encode())
    res = snaps(store, instance="c2").restore(str(tmp_path / "home" / "kilo.db"))
    assert not res.restored and res.reason.startswith("integrity_check_failed"), res
    assert os.listdir(tmp_path / "home") == []


def test_truncated_download_not_restored(store, tmp_path):
    a = snaps(store)
    a.snapshot(str(make_db(tmp_path / "src" / "kilo.db", 50)))
    key = a.base + _remote(store, a)["key"]
    data = store.get_bytes(key)[0]
    store.put_bytes(key, data[: len(data) // 2])
    local = make_db(tmp_path / "home" / "kilo.db", 3, "local")
    before = listing(local.parent)
    res = snaps(store, instance="c2").restore(str(local))
    assert not res.restored and res.reason.startswith("truncated"), res
    assert listing(local.parent) == before


def test_an_object_larger_than_its_manifest_is_never_downloaded(store, tmp_path):
    """The manifest's size was checked only after the whole object had been written to disk: an
    object replaced by a huge one filled the disk first."""
    a = snaps(store)
    a.snapshot(str(make_db(tmp_path / "src" / "kilo.db", 5)))
    key = a.base + _remote(store, a)["key"]
    store.put_bytes(key, store.get_bytes(key)[0] + b"\0" * (3 << 20))
    local = make_db(tmp_path / "home" / "kilo.db", 3, "local")
    before = listing(local.parent)
    res = snaps(store, instance="c2").restore(str(local))
    assert not res.restored and res.reason.startswith("size_mismatch: the object holds more"), res
    assert listing(local.parent) == before
    with pytest.raises(TooLarge):
        store.download_file(key, str(tmp_path / "big"), max_bytes=1024)
    assert not (tmp_path / "big").exists() or (tmp_path / "big").stat().st_size <= 1024


def test_download_dropped_midway_leaves_no_temp_file(store, tmp_path):
    snaps(store).snapshot(str(make_db(tmp_path / "src" / "kilo.db", 50)))
    faulty = FaultyStore(store)

    def half_then_drop(key, path, max_bytes=None):
        store.download_file(key, path, max_bytes)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise StoreUnavailable("connection reset mid-body")
    faulty.hooks["download_file"] = half_then_drop
    home = tmp_path / "home"
    res = snaps(faulty, instance="c2", retries=2).restore(str(home / "kilo.db"))
    assert not res.restored and res.reason.startswith("store_unavailable"), res
    assert os.listdir(home) == []


def test_restore_without_snapshot_reports_no_snapshot(store, tmp_path):
    local = make_db(tmp_path / "home" / "kilo.db", 3)
    before = listing(local.parent)
    res = snaps(store).restore(str(local))
    assert (res.restored, res.generation, res.reason) == (False, None, "no_snapshot")
    assert listing(local.parent) == before


def test_missing_db_snapshot_returns_none(store, tmp_path):
    assert snaps(store).snapshot(str(tmp_path / "nothing" / "kilo.db")) is None
    assert store.list_keys("towns/") == []


def test_corrupt_local_db_is_not_uploaded(store, tmp_path):
    a = snaps(store)
    good = make_db(tmp_path / "home" / "kilo.db", 200)
    a.snapshot(str(good))
    with open(good, "r+b") as f:  # the db itself is damaged (disk error, bad write)
        f.seek(4096 * 3)
        f.write(os.urandom(300))
    with pytest.raises(SnapshotFailed) as ei:
        a.snapshot(str(good))
    assert ei.value.reason == "integrity_check_failed"
    assert _remote(store, a)["generation"] == 1  # the good generation stays current


# -- fencing ---------------------------------------------------------------------------------------
def test_stale_writer_cannot_replace_newer_generation(store, tmp_path, caplog):
    old = snaps(store, instance="container-old")
    old.snapshot(str(make_db(tmp_path / "a" / "kilo.db", 10, "old")))
    new = snaps(store, instance="container-new")
    new_db = tmp_path / "b" / "kilo.db"
    assert new.restore(str(new_db)).restored
    make_db(new_db, 5, "new")
    assert new.snapshot(str(new_db)).generation == 2
    with caplog.at_level(logging.WARNING), pytest.raises(StaleWriter):
        old.snapshot(str(tmp_path / "a" / "kilo.db"))
    assert "snapshot.stale_writer" in [r.getMessage() for r in caplog.records]
    m = _remote(store, new)
    assert (m["generation"], m["instance_id"]) == (2, "container-new")
    check = tmp_path / "c" / "kilo.db"
    assert snaps(store, instance="c3").restore(str(check)).generation == 2
    assert tags(check) == [("new", 5), ("old", 10)]


def test_fresh_container_without_restore_cannot_clobber_history(store, tmp_path):
    snaps(store, instance="c1").snapshot(str(make_db(tmp_path / "a" / "kilo.db", 10)))
    with pytest.raises(StaleWriter):
        snaps(store, instance="c2").snapshot(str(make_db(tmp_path / "b" / "kilo.db", 1)))
    adopter = snaps(store, instance="c3")
    assert adopter.adopt_remote() == 1  # explicit takeover is possible
    assert adopter.snapshot(str(tmp_path / "b" / "kilo.db")).generation == 2


def test_stale_writer_rejected_by_conditional_put_when_precheck_races(store, tmp_path):
    """The head() pre-check can pass just before the other container publishes: the conditional
    manifest PUT must still refuse."""
    a, b = snaps(store, instance="a"), snaps(store, instance="b")
    a.snapshot(str(make_db(tmp_path / "a" / "kilo.db", 5)))
    b.restore(str(tmp_path / "b" / "kilo.db"))
    seen_etag = store.head(a.manifest_key)
    a.snapshot(str(tmp_path / "a" / "kilo.db"))  # generation 2 by a
    faulty = FaultyStore(store)
    faulty.hooks["head"] = lambda key: seen_etag if key.endswith("manifest.json") else store.head(key)
    b.store = faulty
    with pytest.raises(StaleWriter):
        b.snapshot(str(tmp_path / "b" / "kilo.db"))
    assert _remote(store, a)["instance_id"] == "a"
    gens = [k for k in store.list_keys(a.base + "generations/") if "-b-" in k]
    assert gens == []  # the loser's orphan data object was removed


def test_concurrent_writers_exactly_one_wins(store, tmp_path):
    a, b = snaps(store, instance="a"), snaps(store, instance="b")
    make_db(tmp_path / "seed" / "kilo.db", 5)
    a.snapshot(str(tmp_path / "seed" / "kilo.db"))
    for x in (a, b):
        x.restore(str(tmp_path / x.instance_id / "kilo.db"))
    results, barrier = {}, threading.Barrier(2)

    def run(x):
        barrier.wait()
        try:
            results[x.instance_id] = x.snapshot(str(tmp_path / x.instance_id / "kilo.db"))
        except StaleWriter as e:
            results[x.instance_id] = e
    threads = [threading.Thread(target=run, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stale = [v for v in results.values() if isinstance(v, StaleWriter)]
    assert len(results) == 2 and len(stale) == 1, results


def test_lost_manifest_response_is_not_mistaken_for_stale_writer(store, tmp_path):
    faulty = FaultyStore(store)
    calls = []

    def put_then_lose_response(key, data, **kw):
        etag = store.put_bytes(key, data, **kw)
        if key.endswith("manifest.json") and not calls:
            calls.append(key)
            raise StoreUnavailable("read timeout after the PUT landed")
        return etag
    faulty.hooks["put_bytes"] = put_then_lose_response
    a = snaps(faulty)
    db = make_db(tmp_path / "a" / "kilo.db", 5)
    assert a.snapshot(str(db)).generation == 1
    assert a.snapshot(str(db)).generation == 2


# -- outages and retention -------------------------------------------------------------------------
def _proxied_store(seaweedfs, proxy):  # noqa: F811
    bucket = new_bucket(seaweedfs)
    env = s3_env(seaweedfs, bucket) | {"AWS_ENDPOINT_URL": proxy.endpoint}
    return open_store(f"s3://{bucket}/p", env=env, max_attempts=1, connect_timeout=1, read_timeout=5)


def test_store_unavailable_retried_then_succeeds(seaweedfs, tmp_path):  # noqa: F811
    proxy = TcpProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]))
    try:
        st = _proxied_store(seaweedfs, proxy)
        db = make_db(tmp_path / "home" / "kilo.db", 20)
        delays = []

        def fake_sleep(s):
            delays.append(s)
            if len(delays) == 2:
                proxy.up()  # the store comes back during the backoff
        proxy.down()
        a = snaps(st, sleep=fake_sleep, retries=5, backoff_s=0.5)
        assert a.snapshot(str(db)).generation == 1
        assert delays == [0.5, 1.0]
    finally:
        proxy.close()


def test_store_unavailable_bounded_retries_then_next_snapshot_succeeds(seaweedfs, tmp_path, caplog):  # noqa: F811
    proxy = TcpProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]))
    try:
        st = _proxied_store(seaweedfs, proxy)
        db = make_db(tmp_path / "home" / "kilo.db", 20)
        delays = []
        a = snaps(st, sleep=delays.append, retries=3, backoff_s=0.5, backoff_max_s=1.5)
        assert a.snapshot(str(db)).generation == 1
        proxy.down()
        t0 = time.monotonic()
        with caplog.at_level(logging.ERROR), pytest.raises(SnapshotFailed) as ei:
            a.snapshot(str(db))
        assert time.monotonic() - t0 < 10
        assert ei.value.reason == "store_unavailable"
        assert delays == [0.5, 1.0, 1.5]  # bounded count, capped backoff
        assert "snapshot.failed" in [r.getMessage() for r in caplog.records]
        proxy.up()
        assert a.snapshot(str(db)).generation == 2
    finally:
        proxy.close()


def test_restore_when_store_unavailable_keeps_local_and_fences(seaweedfs, tmp_path):  # noqa: F811
    proxy = TcpProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]))
    try:
        st = _proxied_store(seaweedfs, proxy)
        snaps(st, instance="c1").snapshot(str(make_db(tmp_path / "a" / "kilo.db", 20)))
        proxy.down()
        b = snaps(st, instance="c2", retries=2)
        local = make_db(tmp_path / "b" / "kilo.db", 1, "fresh")
        res = b.restore(str(local))
        assert not res.restored and res.reason.startswith("store_unavailable")
        assert tags(local) == [("fresh", 1)]
        proxy.up()
        with pytest.raises(StaleWriter):  # a fresh db must not supersede history it never saw
            b.snapshot(str(local))
    finally:
        proxy.close()


def test_previous_generation_kept_until_manifest_written(store, tmp_path):
    a = snaps(store, retries=1)
    db = make_db(tmp_path / "home" / "kilo.db", 5)
    gens = lambda: sorted(int(k.rsplit("/", 1)[1][:10]) for k in store.list_keys(a.base + "generations/"))  # noqa: E731
    a.snapshot(str(db))
    a.snapshot(str(db))
    assert gens() == [1, 2]
    a.snapshot(str(db))
    assert gens() == [2, 3]  # older than the previous one: deleted
    faulty = FaultyStore(store)

    def no_manifest(key, data, **kw):
        if key.endswith("manifest.json"):
            raise StoreUnavailable("down")
        return store.put_bytes(key, data, **kw)
    faulty.hooks["put_bytes"] = no_manifest
    a.store = faulty
    with pytest.raises(SnapshotFailed):
        a.snapshot(str(db))
    assert _remote(store, a)["generation"] == 3 and 2 in gens() and 3 in gens()
    res = snaps(store, instance="c2").restore(str(tmp_path / "r" / "kilo.db"))
    assert res.restored and res.generation == 3


def test_keys_scoped_by_town_and_agent(store, tmp_path):
    """The old system keyed snapshots by agent id only: two towns with the same agent id collided."""
    make_db(tmp_path / "a" / "kilo.db", 3, "town-a")
    make_db(tmp_path / "b" / "kilo.db", 4, "town-b")
    snaps(store, town="town-a", agent="mayor").snapshot(str(tmp_path / "a" / "kilo.db"))
    snaps(store, town="town-b", agent="mayor").snapshot(str(tmp_path / "b" / "kilo.db"))
    keys = store.list_keys("towns/")
    assert {k.split("/")[1] for k in keys} == {"town-a", "town-b"}
    assert all(k.split("/")[2:4] == ["agents", "mayor"] for k in keys)
    assert "towns/town-a/agents/mayor/manifest.json" in keys
    out = tmp_path / "out" / "kilo.db"
    assert snaps(store, town="town-b", agent="mayor", instance="z").restore(str(out)).restored
    assert tags(out) == [("town-b", 4)]
    with pytest.raises(ValueError):
        AgentSnapshots(store, "../x", "mayor", "c1")


def test_discard_remote_removes_manifest_and_generations(store, tmp_path):
    a = snaps(store)
    db = make_db(tmp_path / "home" / "kilo.db", 3)
    a.snapshot(str(db))
    a.snapshot(str(db))
    a.discard_remote()
    assert store.list_keys(a.base) == []
    with pytest.raises(NotFound):
        store.get_bytes(a.manifest_key)
    assert a.snapshot(str(db)).generation == 3  # generations stay monotonic


def test_snapshot_and_restore_on_rclone_with_best_effort_fencing(request, tmp_path, caplog):
    st = make_store(request, "rclone", tmp_path)
    a = snaps(st, instance="old")
    db = make_db(tmp_path / "a" / "kilo.db", 30, "r")
    with caplog.at_level(logging.WARNING):
        assert a.snapshot(str(db)).generation == 1
    assert "snapshot.fencing_best_effort" in [r.getMessage() for r in caplog.records]
    b = snaps(st, instance="new")
    out = tmp_path / "b" / "kilo.db"
    assert b.restore(str(out)).restored and tags(out) == [("r", 30)] and quick_check(str(out)) == "ok"
    b.snapshot(str(out))
    with pytest.raises(StaleWriter):  # sequential staleness is still caught by read-compare-write
        a.snapshot(str(db))


async def test_async_wrappers_do_not_block_event_loop(store, tmp_path):
    a = snaps(store)
    db = make_db(tmp_path / "home" / "kilo.db", 2000)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)
    task = asyncio.create_task(ticker())
    info = await a.snapshot_async(str(db))
    res = await snaps(store, instance="r").restore_async(str(tmp_path / "r" / "kilo.db"))
    task.cancel()
    assert info.generation == 1 and res.restored and ticks > 3


@pytest.mark.parametrize("field, value", [("generation", 10**10), ("generation", 10**30), ("bytes", 1 << 40)])
def test_a_manifest_with_an_out_of_range_generation_or_size_is_refused_and_our_keys_stay_valid(
        store, tmp_path, field, value):
    """A generation of 11+ digits was adopted as ours: our next key had 11 digits, which our own
    restore then refused. A claimed size of a terabyte was downloaded before it was checked."""
    a = snaps(store)
    a.snapshot(str(make_db(tmp_path / "src" / "kilo.db", 5)))
    m = _remote(store, a)
    store.put_bytes(a.manifest_key, json.dumps({**m, field: value}).encode())
    b = snaps(store, instance="c2")
    res = b.restore(str(tmp_path / "fresh" / "kilo.db"))
    assert (res.restored, res.reason) == (False, "bad_manifest")
    assert b.generation < 10**10
    b.snapshot(str(make_db(tmp_path / "next" / "kilo.db", 3)))  # takes the snapshot over again
    res = snaps(store, instance="c3").restore(str(tmp_path / "again" / "kilo.db"))
    assert res.restored, res
