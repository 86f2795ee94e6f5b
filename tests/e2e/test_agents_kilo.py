"""Issue-2 behaviour through the control server with the real kilo binary and the fake LLM."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import psutil
import pytest

from tests.conftest import kilo_processes

pytestmark = pytest.mark.kilo


async def _turn_done(container, agent_id: str, min_messages: int = 1) -> dict:
    return await container.wait_status(
        agent_id, lambda b: b["last_event_type"] in ("session.idle", "session.turn.close") and b["message_count"] >= min_messages
    )


async def test_start_agent_prompt_reaches_llm_and_status_running(container, fake_llm):
    status, body = await container.start_agent(prompt="Fix the flux capacitor")
    assert status == 201, body
    req = await fake_llm.wait_for(lambda r: "Fix the flux capacitor" in r.last_user_text)
    assert req.model == "m1"
    st = await _turn_done(container, "polecat-1")
    assert st["status"] == "running"
    assert st["session_id"].startswith("ses")
    assert isinstance(st["server_port"], int) and isinstance(st["pid"], int)
    assert psutil.pid_exists(st["pid"])
    assert st["last_event_type"]
    assert st["message_count"] == 1


async def test_message_reaches_model_as_new_turn(container, fake_llm):
    assert (await container.start_agent())[0] == 201
    await _turn_done(container, "polecat-1")
    status, body = await container.request("POST", "/agents/polecat-1/message", json={"prompt": "Second turn please"})
    assert (status, body) == (202, {"sent": True})
    await fake_llm.wait_for(lambda r: "Second turn please" in r.last_user_text)
    st = await _turn_done(container, "polecat-1", min_messages=2)
    assert st["message_count"] == 2
    rec = container.runtime.supervisor.get("polecat-1")
    messages = await rec.client.messages(rec.session_id)
    user_texts = [p.get("text") for m in messages if m["info"]["role"] == "user" for p in m["parts"] if p.get("type") == "text"]
    assert user_texts == ["Please say hello", "Second turn please"]


async def test_stop_leaves_no_kilo_process(container, fake_llm):
    status, body = await container.start_agent()
    assert status == 201
    pids = container.runtime.supervisor.get("polecat-1").process.pids()
    assert pids and kilo_processes()
    assert await container.request("POST", "/agents/polecat-1/stop") == (200, {"stopped": True})
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert kilo_processes() == []
    st = (await container.request("GET", "/agents/polecat-1/status"))[1]
    assert st["status"] == "exited" and st["exit_reason"] == "stopped" and st["pid"] is None
    assert await container.request("POST", "/agents/polecat-1/stop") == (200, {"stopped": False})
    status, body = await container.request("POST", "/agents/polecat-1/message", json={"prompt": "hi"})
    assert status == 409 and body["error"]["code"] == "AGENT_NOT_RUNNING"


async def test_duplicate_start_same_ms_one_session(container, fake_llm):
    results = await asyncio.gather(*(container.start_agent() for _ in range(20)))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] * 19 + [201], results
    assert len({b["session_id"] for _, b in results}) == 1
    assert len({b["pid"] for _, b in results}) == 1
    assert len(kilo_processes()) == 1
    rec = container.runtime.supervisor.get("polecat-1")
    assert len(await rec.client.list_sessions()) == 1
    await fake_llm.wait_for(lambda r: "Please say hello" in r.last_user_text)
    await asyncio.sleep(1.0)
    assert sum("Please say hello" in r.last_user_text for r in fake_llm.chat_requests()) == 1


async def test_different_request_restarts_agent(container, fake_llm):
    first = (await container.start_agent())[1]
    status, second = await container.start_agent(prompt="A different task")
    assert status == 201
    assert second["session_id"] != first["session_id"] and second["pid"] != first["pid"]
    assert not psutil.pid_exists(first["pid"]) or psutil.Process(first["pid"]).status() == psutil.STATUS_ZOMBIE
    assert len(kilo_processes()) == 1


async def test_two_agents_separate_data_dirs_and_dbs(container, fake_llm, runtime_config):
    a, b = await asyncio.gather(
        container.start_agent(agent_id="polecat-a", prompt="task A"),
        container.start_agent(agent_id="polecat-b", prompt="task B"),
    )
    assert a[0] == b[0] == 201
    assert a[1]["server_port"] != b[1]["server_port"]
    await _turn_done(container, "polecat-a")
    await _turn_done(container, "polecat-b")
    sup = container.runtime.supervisor
    db_a, db_b = sup.get("polecat-a").paths.kilo_db, sup.get("polecat-b").paths.kilo_db
    assert db_a != db_b and db_a.exists() and db_b.exists()
    assert db_a.is_relative_to(runtime_config.data_dir / "agents" / "polecat-a")
    for db, sid in ((db_a, a[1]["session_id"]), (db_b, b[1]["session_id"])):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert [r[0] for r in conn.execute("SELECT id FROM session")] == [sid]
    env_a = sup.get("polecat-a").child_env
    assert env_a["XDG_DATA_HOME"] != sup.get("polecat-b").child_env["XDG_DATA_HOME"]
    assert env_a["GASTOWN_AGENT_ID"] == "polecat-a" and env_a["GASTOWN_AGENT_ROLE"] == "polecat"


async def test_sigkilled_child_noticed_failed_with_last_exit(container, fake_llm):
    status, body = await container.start_agent()
    assert status == 201
    os.kill(body["pid"], signal.SIGKILL)
    st = await container.wait_status("polecat-1", lambda b: b["status"] == "failed", timeout=10)
    assert st["last_exit"]["signal"] == signal.SIGKILL
    assert st["last_exit"]["oom_suspected"] is True
    assert "stderr_tail" in st["last_exit"]
    assert "kilo exited unexpectedly" in st["exit_reason"]
    assert kilo_processes() == []


async def test_agent_runs_bash_tool_in_its_workspace(container, fake_llm):
    cmd = 'CALL_TOOL bash {"command": "echo from-agent > proof.txt && pwd", "description": "write proof"}'
    assert (await container.start_agent(prompt=cmd))[0] == 201
    await fake_llm.wait_for(lambda r: r.has_tool_result)
    workdir: Path = container.runtime.supervisor.get("polecat-1").paths.workdir
    assert (workdir / "proof.txt").read_text().strip() == "from-agent"


async def test_clone_git_url_workspace(container, fake_llm, tmp_path):
    import subprocess

    from tests.gitrepos import bare_origin

    origin = bare_origin(tmp_path, {"README.md": "seeded\n"})
    status, body = await container.start_agent(git_url=str(origin), branch="gt/toast/abc123", default_branch="main")
    assert status == 201, body
    workdir = container.runtime.supervisor.get("polecat-1").paths.workdir
    assert (workdir / "README.md").read_text() == "seeded\n"
    head = subprocess.run(["git", "-C", str(workdir), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True)
    assert head.stdout.strip() == "gt/toast/abc123"


async def test_the_role_system_prompt_reaches_the_model_on_later_turns_too(container, fake_llm):
    """kilo takes the system prompt from the latest user message; it was sent with the first prompt
    only, so a polecat lost its instructions at its first nudge, GUPP or mail turn."""
    role = "You are polecat Toast. ROLE-MARKER-7"
    assert (await container.start_agent(system_prompt=role))[0] == 201
    await fake_llm.wait_for(lambda r: "Please say hello" in r.last_user_text)
    await _turn_done(container, "polecat-1")
    assert (await container.request("POST", "/agents/polecat-1/message", json={"prompt": "Second turn please"}))[0] == 202
    req = await fake_llm.wait_for(lambda r: "Second turn please" in r.last_user_text)
    system = " ".join(str(m.get("content")) for m in req.messages if m.get("role") == "system")
    assert "ROLE-MARKER-7" in system
