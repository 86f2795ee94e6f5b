"""kilo.db survives containers (issue 3), with real kilo, real SeaweedFS and real processes."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import CONTROL_TOKEN, kilo_processes
from tests.containers import ContainerProc
from tests.s3servers import free_port, new_bucket, s3_env, seaweedfs  # noqa: F401 - fixture
from worker_api import store
from worker_api.appkeys import DB
from worker_api.front import desk

pytestmark = pytest.mark.kilo
REPO = Path(__file__).resolve().parents[2]


def _env(tmp: Path, name: str, worker, town_id: str, token: str, fake_llm, store: dict[str, str], url: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], **store,
        "GASTOWN_TOWN_ID": town_id, "GASTOWN_API_URL": worker.url, "GASTOWN_CONTAINER_TOKEN": token,
        "GASTOWN_CONTROL_TOKEN": CONTROL_TOKEN, "GASTOWN_DATA_DIR": str(tmp / name / "data"),
        "GASTOWN_SNAPSHOT_URL": url, "GASTOWN_KILO_PROVIDERS": json.dumps(fake_llm.provider_config()),
    }


async def _turn(c: ContainerProc, agent_id: str, n: int) -> dict:
    return await c.wait_status(agent_id, lambda b: b["message_count"] >= n and b["last_event_type"] in ("session.idle", "session.turn.close"))


async def _say(c: ContainerProc, agent_id: str, prompt: str, timeout: float = 120) -> None:
    """Send ``prompt`` and wait for *its* turn to end: a turn that opens and goes idle after the send
    (the status alone may still show the previous turn's idle when the model has the new prompt)."""
    code, body = await c.call("GET", f"/agents/{agent_id}/events")
    after = max((e["id"] for e in body["events"]), default=0)
    assert (await c.call("POST", f"/agents/{agent_id}/message", {"prompt": prompt}))[0] == 202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = await c.call("GET", f"/agents/{agent_id}/events?after={after}")
        types = [e["type"] for e in body["events"]]
        if "session.turn.open" in types and "session.idle" in types[types.index("session.turn.open"):]:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the turn of {prompt!r} never ended")


def _snapshot_texts(url: str, store: dict[str, str], town_id: str, agent_id: str, tmp: Path) -> list[str]:
    """Texts of every message part in the agent's latest snapshot, read back from the store."""
    import sqlite3

    from supervisor.objstore import open_store
    from supervisor.snapshots import AgentSnapshots

    target = tmp / "kilo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    if not AgentSnapshots(open_store(url, env=store), town_id, agent_id, "reader").restore(str(target)).restored:
        return []
    with sqlite3.connect(target) as conn:
        return [json.loads(r[0]).get("text", "") for r in conn.execute("SELECT data FROM part")]


async def test_mayor_survives_container_sigkill_on_fresh_data_dir(worker, fake_llm, seaweedfs, tmp_path):
    town_id, token = await worker.create_town(default_model="fake/m1")
    assert (await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "mayor", "role": "mayor", "name": "Mayor"}))[0] == 201
    bucket = new_bucket(seaweedfs)
    store = s3_env(seaweedfs, bucket)
    url = f"s3://{bucket}/gastown"
    (tmp_path / "a").mkdir()
    (tmp_path / "read").mkdir()
    a = ContainerProc(_env(tmp_path, "a", worker, town_id, token, fake_llm, store, url))
    try:
        await a.wait_ready()
        start = {"agent_id": "mayor", "town_id": town_id, "rig_id": f"mayor-{town_id}", "role": "mayor", "name": "Mayor",
                 "model": "fake/m1", "prompt": "MAYOR STARTUP PROMPT"}
        code, body = await a.call("POST", "/agents/start", start)
        assert code == 201, body
        session_id = body["session_id"]
        await _turn(a, "mayor", 1)
        for q in ("first question", "second question"):
            await _say(a, "mayor", q)
        # The end-of-turn snapshot holds the whole conversation, replies included (read back from S3).
        deadline = time.monotonic() + 60
        while "Hello from the fake LLM. You said: second question" not in (
                texts := await asyncio.to_thread(_snapshot_texts, url, store, town_id, "mayor", tmp_path / "read")):
            assert time.monotonic() < deadline, f"no snapshot with the second turn: {texts}"
            await asyncio.sleep(0.3)
        assert "first question" in texts and "second question" in texts
    finally:
        a.sigkill_everything()
    # A new container gets an empty volume mounted at the same path (/workspace in Docker).
    shutil.rmtree(tmp_path / "a" / "data")
    assert not (tmp_path / "a" / "data").exists()
    b = ContainerProc(_env(tmp_path, "a", worker, town_id, token, fake_llm, store, url))
    try:
        await b.wait_ready()
        st = await b.wait_status("mayor", lambda s: s["status"] == "running")
        assert st["session_id"] == session_id
        assert (await b.call("POST", "/agents/mayor/message", {"prompt": "third question"}))[0] == 202
        req = await fake_llm.wait_for(lambda r: "third question" in r.last_user_text)
        history = json.dumps(req.messages)
        assert "first question" in history and "second question" in history and "MAYOR STARTUP PROMPT" in history
        assert "TOOL RESULT" not in history
        startup_turns = [r for r in fake_llm.chat_requests() if r.last_user_text.startswith("MAYOR STARTUP PROMPT")]
        assert len(startup_turns) == 1, "the startup prompt was replayed on resume"
        await _turn(b, "mayor", 1)
    finally:
        assert await b.terminate() == 0


async def test_corrupt_remote_snapshot_agent_starts_fresh(town, fake_llm, tmp_path):
    worker, container, town_id = town
    store_dir = tmp_path / "store"
    from supervisor.persistence import Persistence

    rt = container.runtime
    rt.persistence = Persistence.from_url(rt.supervisor, f"file://{store_dir}", "inst-1")
    assert (await container.start_agent(town_id=town_id))[0] == 201
    assert (await container.request("POST", "/agents/polecat-1/stop"))[0] == 200
    await rt.persistence.flush(30)
    gens = list((store_dir / "towns" / town_id / "agents" / "polecat-1" / "generations").glob("*.db"))
    assert gens, "stop must snapshot"
    for g in gens:
        data = bytearray(g.read_bytes())
        data[100:200] = b"\x00" * 100
        g.write_bytes(bytes(data))
    db = rt.supervisor.get("polecat-1").paths.kilo_db
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    rt.persistence = Persistence.from_url(rt.supervisor, f"file://{store_dir}", "inst-2")
    rt.supervisor.spawn_hooks[:] = [rt.persistence.before_spawn]
    status, body = await container.start_agent(town_id=town_id, prompt="fresh start")
    assert status == 201, body
    assert body["status"] == "running"
    assert rt.supervisor.get("polecat-1").restored is False


async def test_prewarmed_mayor_reused_without_new_process(worker, fake_llm, runtime_config, make_container):
    town_id, token = await worker.create_town(default_model="fake/m1")
    await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "mayor", "role": "mayor", "name": "Mayor"})
    runtime_config.town_id, runtime_config.api_url, runtime_config.container_token = town_id, worker.url, token
    container = await make_container(runtime_config)
    await container.runtime.wait_hydrated(90)
    sup = container.runtime.supervisor
    assert "mayor" in sup.prewarm_pool.entries
    pre, proc, _ = sup.prewarm_pool.entries["mayor"]
    env = pre.child_env
    assert env["GASTOWN_AGENT_ROLE"] == "mayor" and env["GASTOWN_AGENT_ID"] == "mayor" and env["GASTOWN_TOWN_ID"] == town_id
    assert json.loads(env["KILO_CONFIG_CONTENT"])["mcp"]["gastown"]["environment"]["GASTOWN_AGENT_ROLE"] == "mayor"
    assert [p.pid for p in kilo_processes()] == [proc.pid]
    # The start the worker's mayor desk sends: what the prewarm context described, plus the prompt.
    def town_row(conn):
        return store.get_town(conn, town_id, with_settings=True)
    start = desk.start_request(await worker.server.app[DB].run(town_row), "mayor")
    status, body = await container.request("POST", "/agents/start", json={**start, "prompt": "hello mayor"})
    assert status == 201, body
    assert body["pid"] == proc.pid and [p.pid for p in kilo_processes()] == [proc.pid]
    rec = sup.get("mayor")
    assert rec.prewarmed and rec.child_env == env
    assert pre.session_id and body["session_id"] == pre.session_id, "the prewarm creates the first session"
    await fake_llm.wait_for(lambda r: "hello mayor" in r.last_user_text)


async def test_prewarm_failing_after_its_kilo_started_leaves_no_kilo(worker, fake_llm, runtime_config, make_container):
    """A prewarm that failed once its kilo was up (here: settling the session) left that kilo running,
    held by nobody: every later test on the box saw a stray kilo."""
    town_id, token = await worker.create_town(default_model="fake/m1")
    await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "mayor", "role": "mayor", "name": "Mayor"})
    runtime_config.town_id, runtime_config.api_url, runtime_config.container_token = town_id, worker.url, token
    container = await make_container(runtime_config)
    sup = container.runtime.supervisor
    seen: list[int] = []

    async def broken_open_session(rec, client):
        seen.extend(p.pid for p in kilo_processes())
        raise RuntimeError("injected failure after spawn")

    sup.open_session = broken_open_session
    await container.runtime.wait_hydrated(90)
    assert len(seen) == 1 and "mayor" not in sup.prewarm_pool.entries
    assert kilo_processes() == [] and not psutil.pid_exists(seen[0])


async def test_prewarm_with_different_model_is_replaced(worker, fake_llm, runtime_config, make_container):
    town_id, token = await worker.create_town(default_model="fake/m1")
    await worker.request("POST", f"/api/towns/{town_id}/agents", json={"agent_id": "mayor", "role": "mayor", "name": "Mayor"})
    runtime_config.town_id, runtime_config.api_url, runtime_config.container_token = town_id, worker.url, token
    container = await make_container(runtime_config)
    await container.runtime.wait_hydrated(90)
    pre, proc, _ = container.runtime.supervisor.prewarm_pool.entries["mayor"]
    status, body = await container.start_agent(agent_id="mayor", town_id=town_id, rig_id=f"mayor-{town_id}", role="mayor",
                                               name="Mayor", prompt="hello", model="fake/m2")
    assert status == 201
    assert body["pid"] != proc.pid and not proc.running
    assert [p.pid for p in kilo_processes()] == [body["pid"]]
    # The session the replaced prewarm left empty is the mayor's latest: it never had the startup prompt.
    assert body["session_id"] == pre.session_id and not container.runtime.supervisor.get("mayor").resumed
    req = await fake_llm.wait_for(lambda r: r.last_user_text == "hello")
    assert req.model == "m2"


async def test_snapshot_mid_turn_restores_consistent_db_with_completed_turns(container, fake_llm, tmp_path):
    import sqlite3

    from supervisor.objstore import open_store
    from supervisor.persistence import Persistence
    from supervisor.snapshots import AgentSnapshots

    rt = container.runtime
    rt.persistence = Persistence.from_url(rt.supervisor, f"file://{tmp_path / 'store'}", "inst-a")
    fake_llm.slow_interval = 0.5
    status, body = await container.start_agent()
    assert status == 201
    await container.wait_status("polecat-1", lambda b: b["last_event_type"] in ("session.idle", "session.turn.close"))
    assert (await container.request("POST", "/agents/polecat-1/message", json={"prompt": "SLOW40"}))[0] == 202
    await fake_llm.wait_for(lambda r: "SLOW40" in r.last_user_text)
    await asyncio.sleep(2.0)  # kilo is now streaming the slow reply into its WAL
    rec = rt.supervisor.get("polecat-1")
    assert rec.last_event_type not in ("session.idle", "session.turn.close")
    info = await rt.persistence.snapshot(rec, "mid-turn")
    assert info is not None and info["bytes"] > 0
    restored = tmp_path / "restored" / "kilo.db"
    restored.parent.mkdir()
    other = AgentSnapshots(open_store(f"file://{tmp_path / 'store'}"), rec.request.town_id, "polecat-1", "inst-b")
    result = await other.restore_async(str(restored))
    assert result.restored, result
    with sqlite3.connect(restored) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        texts = [json.loads(r[0]).get("text", "") for r in conn.execute("SELECT data FROM part")]
    assert "Please say hello" in texts
    assert any(t.startswith("Hello from the fake LLM") for t in texts), "the completed first turn's reply is missing"
    assert "SLOW40" in texts
