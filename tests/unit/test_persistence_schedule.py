"""When the runtime snapshots an agent's kilo.db, with a real SQLite DB and the file store (no kilo):
the mayor at the points where kilo has its conversation on disk, and never a growing queue."""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from supervisor.agent import AgentRecord
from supervisor.config import RuntimeConfig
from supervisor.kilo_env import AgentPaths
from supervisor.models import StartAgentRequest
from supervisor.persistence import Persistence
from supervisor.supervisor import Supervisor
from supervisor.worker_client import WorkerClient
from tests.conftest import start_body


def _setup(tmp_path: Path, role: str = "mayor") -> tuple[Persistence, AgentRecord, Path]:
    sup = Supervisor(RuntimeConfig(data_dir=tmp_path / "data"), WorkerClient(None, None, "town-test"))
    persistence = Persistence.from_url(sup, f"file://{tmp_path / 'store'}", "inst-1")
    assert persistence is not None
    req = StartAgentRequest.model_validate(start_body(agent_id="agent-1", role=role))
    rec = AgentRecord(request=req, paths=AgentPaths.for_agent(tmp_path / "data", "agent-1"))
    db = rec.paths.kilo_db
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE part(data TEXT)")
    return persistence, rec, tmp_path / "store" / "towns" / "town-test" / "agents" / "agent-1" / "generations"


def _write(db: Path, text: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO part VALUES (?)", (text,))


async def _events(persistence: Persistence, rec: AgentRecord, *types: str) -> None:
    for etype in types:
        for hook in persistence.supervisor.event_hooks:
            hook(rec, {"type": etype, "properties": {"sessionID": "ses_1"}})
    await persistence.flush(10)


async def test_mayor_message_snapshot_taken_after_kilo_stored_it_not_at_prompt_accept(tmp_path):
    """kilo answers prompt_async with 204 before it writes the user message: a snapshot taken at that
    moment missed the message, and a container killed mid-turn lost it."""
    persistence, rec, _ = _setup(tmp_path)
    await persistence.supervisor.notify(rec, "message")  # our prompt_async returned
    await persistence.flush(10)
    assert persistence.saved == 0, "a snapshot at prompt accept races kilo's own write"
    _write(rec.paths.kilo_db, "second question")
    await _events(persistence, rec, "session.turn.open")
    assert persistence.saved == 1
    _write(rec.paths.kilo_db, "the reply")
    await _events(persistence, rec, "message.part.delta", "session.idle")
    assert persistence.saved == 2 and rec.last_snapshot["generation"] == 2


async def test_non_mayor_turns_are_not_snapshotted_until_stop(tmp_path):
    persistence, rec, _ = _setup(tmp_path, role="polecat")
    await _events(persistence, rec, "session.turn.open", "session.idle")
    assert persistence.saved == 0
    await persistence.supervisor.notify(rec, "stopped")
    await persistence.flush(10)
    assert persistence.saved == 1


async def test_snapshots_requested_while_one_runs_coalesce_into_one(tmp_path):
    """A chatty mayor on a slow store must not queue one upload per event: the queued snapshot
    copies the DB when it runs, so it covers every request made while it waited."""
    persistence, rec, generations = _setup(tmp_path)
    lock = persistence._lock(rec.agent_id)
    await lock.acquire()  # a snapshot is running (its upload is slow)
    tasks = {persistence.schedule(rec, f"event {i}") for i in range(20)}
    assert len(tasks) == 1
    _write(rec.paths.kilo_db, "written while the first upload ran")
    lock.release()
    await persistence.flush(10)
    assert persistence.saved == 1
    assert len(list(generations.glob("*.db"))) == 1
    # Once that one has started copying, a new request queues a new snapshot.
    again = persistence.schedule(rec, "later")
    assert again not in tasks
    await asyncio.wait_for(again, 10)
    assert persistence.saved == 2


async def test_a_restart_waits_for_the_crash_snapshots_copy_but_not_for_its_upload(tmp_path):
    """An in-place restart waited for the crashed kilo's whole snapshot (copy and upload) before it
    spawned; it must wait for the copy only, or the new kilo's writes would end up in a snapshot
    that is meant to hold the crashed process's state."""
    import threading
    import time

    from supervisor.snapshots import AgentSnapshots

    persistence, rec, _ = _setup(tmp_path)
    await persistence.before_spawn(rec)  # the first start: nothing to restore, the DB is ours
    _write(rec.paths.kilo_db, "the turn before the kill")
    snaps = persistence.snaps(rec)
    copy, put = snaps.take_copy, snaps.store.put_file
    uploading, gate = threading.Event(), threading.Event()

    def slow_copy(db_path):  # noqa: ANN001, ANN202
        time.sleep(0.3)
        return copy(db_path)

    def stalled_put(key, path):  # noqa: ANN001, ANN202
        uploading.set()
        gate.wait(10)
        return put(key, path)

    snaps.take_copy, snaps.store.put_file = slow_copy, stalled_put
    try:
        await persistence.supervisor.notify(rec, "crashed")
        await asyncio.wait_for(persistence.before_spawn(rec), 5)  # the upload has not finished
        _write(rec.paths.kilo_db, "written by the new kilo")
        assert await asyncio.to_thread(uploading.wait, 5) and persistence.saved == 0
    finally:
        gate.set()
    await persistence.flush(10)
    assert persistence.saved == 1
    restored = tmp_path / "restored" / "kilo.db"
    restored.parent.mkdir()
    reader = AgentSnapshots(snaps.store, "town-test", "agent-1", "reader")
    assert reader.restore(str(restored)).restored
    with sqlite3.connect(restored) as conn:
        assert [r[0] for r in conn.execute("SELECT data FROM part")] == ["the turn before the kill"]
