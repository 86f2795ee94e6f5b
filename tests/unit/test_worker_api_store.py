"""SQLite store: migrations, connection settings, town scoping, the event queue."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from worker_api import drain, events, nudges, store
from worker_api.db import Database, SchemaTooNewError, connect, migrate, user_version
from worker_api.migrations import MIGRATIONS, Migration

NOW = 1_800_000_000_000


def _town(conn: sqlite3.Connection, town_id: str = "town-a") -> None:
    store.create_town(conn, town_id=town_id, name="A", container_url="http://c", control_token="secret-123",
                      default_model=None, small_model=None, organization_id=None, now_ms=NOW)


def test_migrations_are_idempotent_when_opening_the_same_file_twice(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    conn = connect(path)
    assert user_version(conn) == len(MIGRATIONS)
    _town(conn)
    conn.close()
    conn = connect(path)  # second open: nothing re-applied, data kept
    assert user_version(conn) == len(MIGRATIONS)
    assert store.list_town_ids(conn) == ["town-a"]
    assert migrate(conn) == len(MIGRATIONS)
    conn.close()
    db1, db2 = Database(path), Database(path)  # two live handles on one file
    assert db1.run_sync(store.list_town_ids, write=False) == ["town-a"]
    assert db2.run_sync(store.list_town_ids, write=False) == ["town-a"]
    db1.close()
    db2.close()


def test_connection_uses_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    conn = connect(tmp_path / "w.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    with pytest.raises(sqlite3.IntegrityError):  # an agent needs its town
        conn.execute("INSERT INTO agents (town_id, agent_id, role, name, created_at) VALUES ('nope', 'a', 'polecat', 'n', 1)")


def test_a_later_migration_is_applied_to_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    connect(path).close()
    extra = [*MIGRATIONS, Migration("add beads", "CREATE TABLE beads (town_id TEXT NOT NULL, bead_id TEXT NOT NULL);")]
    conn = connect(path, migrations=extra)
    assert user_version(conn) == len(extra)
    conn.execute("INSERT INTO beads VALUES ('t', 'b')")
    conn.close()


def test_a_failing_migration_leaves_the_previous_version_intact(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    connect(path).close()
    broken = [*MIGRATIONS, Migration("broken", "CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1);")]
    with pytest.raises(sqlite3.OperationalError):
        connect(path, migrations=broken)
    conn = connect(path)
    assert user_version(conn) == len(MIGRATIONS)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None
    conn.close()


def test_a_database_from_newer_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    conn = connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError):
        connect(path)


async def test_database_runs_queries_on_its_own_thread_and_rolls_back_on_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "w.db")
    loop_thread = threading.get_ident()
    assert await db.run(lambda conn: threading.get_ident()) != loop_thread

    def create_then_fail(conn: sqlite3.Connection) -> None:
        _town(conn, "town-x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.run(create_then_fail)
    assert await db.run(store.get_town, "town-x") is None
    await db.aclose()
    await db.aclose()  # idempotent


def test_control_token_is_only_readable_through_its_own_helper(tmp_path: Path) -> None:
    conn = connect(tmp_path / "w.db")
    _town(conn)
    assert "control_token" not in store.get_town(conn, "town-a")
    assert store.get_town_control_token(conn, "town-a") == "secret-123"


def test_event_queue_is_fifo_scoped_by_town_and_prunable(tmp_path: Path) -> None:
    conn = connect(tmp_path / "w.db")
    _town(conn, "town-a")
    _town(conn, "town-b")
    a1 = events.insert_event(conn, "town-a", "agent_done", agent_id="pc-1", payload={"x": 1}, now_ms=NOW)
    events.insert_event(conn, "town-b", "agent_done", now_ms=NOW)
    a2 = events.insert_event(conn, "town-a", "agent_completed", now_ms=NOW + 1)
    assert [e["id"] for e in events.list_events(conn, "town-a")] == [a1, a2]
    assert events.mark_event_processed(conn, "town-a", a1, NOW + 5)
    assert not events.mark_event_processed(conn, "town-a", a1, NOW + 6)  # once
    assert not events.mark_event_processed(conn, "town-b", a2, NOW + 6)  # other town's id
    assert [e["id"] for e in events.list_events(conn, "town-a")] == [a2]
    assert len(events.list_events(conn, "town-a", unprocessed_only=False)) == 2
    assert events.get_event(conn, "town-a", a1)["processed_at"] == NOW + 5
    assert events.prune_processed_events(conn, "town-a", NOW + 1) == 1
    assert events.get_event(conn, "town-a", a1) is None
    assert len(events.list_events(conn, "town-b")) == 1


def test_nudges_of_a_deleted_agent_go_with_it(tmp_path: Path) -> None:
    conn = connect(tmp_path / "w.db")
    _town(conn)
    store.create_agent(conn, "town-a", agent_id="pc-1", role="polecat", name="n", rig_id=None, now_ms=NOW)
    nudges.enqueue_nudge(conn, "town-a", "pc-1", message="m", now_ms=NOW)
    conn.execute("DELETE FROM agents WHERE town_id = 'town-a' AND agent_id = 'pc-1'")
    assert conn.execute("SELECT COUNT(*) FROM nudges").fetchone()[0] == 0


def test_kv_values_round_trip_as_json_per_town(tmp_path: Path) -> None:
    conn = connect(tmp_path / "w.db")
    _town(conn, "town-a")
    _town(conn, "town-b")
    store.kv_set(conn, "town-a", "container:last_token_refresh_at", NOW)
    store.kv_set(conn, "town-a", "obj", {"a": [1]})
    assert store.kv_get(conn, "town-a", "container:last_token_refresh_at") == NOW
    assert store.kv_get(conn, "town-a", "obj") == {"a": [1]}
    assert store.kv_get(conn, "town-b", "obj", "dflt") == "dflt"
    store.kv_delete(conn, "town-a", "obj")
    assert store.kv_get(conn, "town-a", "obj") is None


def test_drain_timeout_is_evaluated_against_the_given_clock(tmp_path: Path) -> None:
    conn = connect(tmp_path / "w.db")
    _town(conn)
    drain.start_drain(conn, "town-a", NOW)
    assert drain.is_draining(conn, "town-a", NOW + drain.DRAIN_TIMEOUT_MS - 1)
    assert not drain.is_draining(conn, "town-a", NOW + drain.DRAIN_TIMEOUT_MS)
    assert store.kv_get(conn, "town-a", drain.K_DRAINING) is None  # cleared, not just hidden
