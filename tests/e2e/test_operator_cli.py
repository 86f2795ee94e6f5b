"""The operator CLI (`gastown agents`, `gastown logs`, `gastown town status`) run as a real
subprocess against the real control server and worker apps: tables, JSON, and one-line errors with a
non-zero exit for bad tokens, unreachable servers and unknown agents or towns."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from supervisor.agent import AgentRecord
from supervisor.kilo_env import AgentPaths
from supervisor.models import StartAgentRequest
from supervisor.states import AgentState
from tests.conftest import ADMIN_TOKEN, CONTROL_TOKEN, JWT_SECRET, Container, Worker, start_body

GASTOWN = str(Path(sys.executable).parent / "gastown")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GASTOWN_")}
    env.update(extra)
    return env


async def gastown(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop (the servers under test live in this process)."""
    proc = await asyncio.create_subprocess_exec(GASTOWN, *args, env=env or _env(), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def assert_one_line_error(rc: int, out: str, err: str, *needles: str) -> None:
    assert rc == 1, (rc, out, err)
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def fake_record(container: Container, agent_id: str, **fields) -> AgentRecord:
    """An agent record as the supervisor keeps it, without spawning kilo (table/log formatting)."""
    req = StartAgentRequest.model_validate(start_body(agent_id=agent_id))
    rec = AgentRecord(request=req, paths=AgentPaths.for_agent(container.runtime.cfg.data_dir, agent_id), **fields)
    container.runtime.supervisor.agents[agent_id] = rec
    return rec


# --- gastown agents --------------------------------------------------------------------------------

async def test_agents_empty_table_and_json(container: Container) -> None:
    rc, out, err = await gastown("agents", "--url", container.url, "--token", CONTROL_TOKEN)
    assert (rc, out.strip()) == (0, "no agents"), err
    env = _env(GASTOWN_CONTROL_TOKEN=CONTROL_TOKEN)
    rc, out, _ = await gastown("agents", "--json", "--url", container.url, env=env)
    assert rc == 0 and json.loads(out) == {"agents": []}


async def test_agents_table_shows_state_uptime_and_last_exit(container: Container) -> None:
    now = time.time()
    fake_record(container, "polecat-7", state=AgentState.exited, started_at=now - 400, message_count=3,
                last_event_type="session.idle", last_event_at=now - 7200,
                last_exit={"code": None, "signal": 9, "at": int((now - 3 * 3600 - 300) * 1000), "oom_suspected": True,
                           "stderr_tail": ""})
    fake_record(container, "mayor", state=AgentState.fatal,
                last_exit={"code": 1, "signal": None, "at": int((now - 5) * 1000), "oom_suspected": False, "stderr_tail": "boom"})
    rc, out, err = await gastown("agents", "--url", container.url, "--token", CONTROL_TOKEN)
    assert rc == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split() == ["AGENT", "ROLE", "STATE", "UPTIME", "RSS_MB", "MSGS", "LAST", "EVENT", "LAST", "EXIT"]
    assert [r.split()[0] for r in rows] == ["mayor", "polecat-7"]
    assert " fatal " in rows[0] and "code 1" in rows[0]
    polecat = rows[1].split()
    assert polecat[1:5] == ["polecat", "exited", "-", "-"]  # no uptime nor RSS once exited
    # ages in hours: stable however long the CLI takes to start on a loaded machine
    assert polecat[5] == "3" and "session.idle (2h00m ago)" in rows[1]
    assert "SIGKILL OOM? (3h05m ago)" in rows[1]
    rc, out, _ = await gastown("agents", "--json", "--url", container.url, "--token", CONTROL_TOKEN)
    agents = {a["agent_id"]: a for a in json.loads(out)["agents"]}
    assert agents["polecat-7"]["last_exit"]["oom_suspected"] is True


async def test_agents_wrong_or_missing_token_is_one_line_401(container: Container) -> None:
    rc, out, err = await gastown("agents", "--url", container.url, "--token", "not-the-token-123")
    assert_one_line_error(rc, out, err, "401", "refused the given token", "$GASTOWN_CONTROL_TOKEN")
    assert "not-the-token-123" not in err and CONTROL_TOKEN not in err
    rc, out, err = await gastown("agents", "--url", container.url)
    assert_one_line_error(rc, out, err, "refused no token", "missing bearer token")


async def test_unreachable_url_and_bad_url_are_clear_errors(unused_tcp_port: int) -> None:
    rc, out, err = await gastown("agents", "--url", f"http://127.0.0.1:{unused_tcp_port}", "--token", "x")
    assert_one_line_error(rc, out, err, f"cannot connect to http://127.0.0.1:{unused_tcp_port}", "refused")
    rc, out, err = await gastown("logs", "polecat-1", "--url", "not a url")
    assert_one_line_error(rc, out, err, "invalid URL")
    rc, out, err = await gastown("town", "status", "--town", "t1", "--url", f"http://127.0.0.1:{unused_tcp_port}")
    assert_one_line_error(rc, out, err, "cannot connect")


async def test_a_server_that_never_answers_times_out() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        rc, out, err = await gastown("agents", "--url", f"http://127.0.0.1:{port}", "--timeout", "0.5")
        assert_one_line_error(rc, out, err, "no answer", "within 0.5s")
    finally:
        server.close()


# --- gastown logs ----------------------------------------------------------------------------------

async def test_logs_unknown_agent_and_bad_id(container: Container) -> None:
    rc, out, err = await gastown("logs", "nobody", "--url", container.url, "--token", CONTROL_TOKEN)
    assert_one_line_error(rc, out, err, "404", "AGENT_NOT_FOUND", "nobody")
    rc, out, err = await gastown("logs", "../etc", "--url", container.url, "--token", CONTROL_TOKEN)
    assert_one_line_error(rc, out, err, "invalid agent id")


async def test_logs_prints_one_line_per_event_and_after_skips(container: Container) -> None:
    rec = fake_record(container, "polecat-2", state=AgentState.running)
    first = rec.events.append("message.part.delta", {"field": "text", "delta": "Hello\nthere"})
    rec.events.append("message.part.updated", {"part": {"type": "tool", "tool": "bash", "callID": "c1",
                                                        "state": {"status": "running", "title": "ls -la"}}})
    rec.events.append("session.error", {"error": {"name": "APIError", "data": {"message": "forced 400"}}})
    rec.events.append("session.idle", {"sessionID": "ses_1"})
    rc, out, err = await gastown("logs", "polecat-2", "--url", container.url, "--token", CONTROL_TOKEN)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4
    assert f"#{first['id']}  message.part.delta" in lines[0] and '"Hello\\nthere"' in lines[0]
    assert lines[1].endswith("message.part.updated  tool bash running: ls -la")
    assert lines[2].endswith("session.error  APIError: forced 400")
    assert lines[3].endswith("session.idle")
    rc, out, _ = await gastown("logs", "polecat-2", "--after", str(first["id"] + 1), "--url", container.url,
                               "--token", CONTROL_TOKEN)
    assert rc == 0 and [ln.split()[2] for ln in out.strip().splitlines()] == ["session.error", "session.idle"]


@pytest.mark.parametrize("sigint", ["default", "inherited_ignored"])
async def test_logs_follow_streams_new_events_and_exits_zero_on_ctrl_c(container: Container, sigint: str) -> None:
    """Started with SIGINT ignored (a script's background job; it happened under the full test run),
    Python installs no KeyboardInterrupt and asyncio.run no handler: Ctrl-C did nothing for 30 s."""
    rec = fake_record(container, "polecat-3", state=AgentState.running)
    rec.events.append("session.status", {"status": {"type": "busy"}})

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    proc = await asyncio.create_subprocess_exec(
        GASTOWN, "logs", "polecat-3", "--follow", "--interval", "0.1", "--url", container.url,
        env=_env(GASTOWN_CONTROL_TOKEN=CONTROL_TOKEN), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=ignore_sigint if sigint == "inherited_ignored" else None)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"session.status  busy" in line
        rec.events.append("session.status", {"status": {"type": "retry", "attempt": 2, "message": "overloaded"}})
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"retry attempt 2: overloaded" in line
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and b"Traceback" not in err, err


@pytest.mark.kilo
async def test_agents_and_logs_of_a_real_agent(container: Container) -> None:
    status, body = await container.start_agent()
    assert status == 201, body
    deadline = time.monotonic() + 60
    while True:  # the first turn (the startup prompt) has finished
        _, events = await container.request("GET", "/agents/polecat-1/events")
        if any(e["type"] == "session.idle" for e in events["events"]):
            break
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.2)
    rc, out, err = await gastown("agents", "--url", container.url, "--token", CONTROL_TOKEN)
    assert rc == 0, err
    row = out.strip().splitlines()[1].split()
    assert row[:3] == ["polecat-1", "polecat", "running"]
    assert row[3] != "-" and float(row[4]) > 10  # uptime, RSS of a live kilo in MB
    rc, out, err = await gastown("logs", "polecat-1", "--url", container.url, "--token", CONTROL_TOKEN)
    assert rc == 0, err
    assert "message.part.delta" in out and "session.idle" in out
    assert "Hello" in out  # the fake LLM's streamed text


# --- gastown town status ---------------------------------------------------------------------------

@pytest.fixture
async def quiet_worker(tmp_path: Path) -> AsyncIterator[Worker]:
    """The worker API without reconciler loops, so the counts the CLI prints stay put."""
    import aiohttp

    from worker_api.app import create_app

    app = create_app(tmp_path / "worker.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, run_reconciler=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    w = Worker(server, aiohttp.ClientSession())
    yield w
    await w.http.close()
    await server.close()


async def _seed_town(worker: Worker) -> tuple[str, str]:
    town_id, container_token = await worker.create_town()
    t = f"/api/towns/{town_id}"
    for path, body in [
        ("/agents", {"agent_id": "mayor", "role": "mayor", "name": "Mayor"}),
        ("/rigs", {"rig_id": "rig-1", "name": "Repo", "git_url": "https://example.com/r.git"}),
        ("/beads", {"title": "Loose issue", "rig_id": "rig-1"}),
        ("/convoys", {"rig_id": "rig-1", "title": "Big change", "staged": True,
                      "beads": [{"title": "a"}, {"title": "b", "depends_on": [0]}]}),
    ]:
        status, data = await worker.request("POST", t + path, json=body)
        assert status == 201, data
    return town_id, container_token


async def test_town_status_summary_and_json(quiet_worker: Worker) -> None:
    town_id, _ = await _seed_town(quiet_worker)
    rc, out, err = await gastown("town", "status", "--url", quiet_worker.url, "--town", town_id,
                                 env=_env(GASTOWN_ADMIN_TOKEN=ADMIN_TOKEN))
    assert rc == 0, err
    assert out.startswith(f'town {town_id} "test town"')
    assert "beads    4: open 4" in out and "issue 3" in out and "convoy 1" in out
    assert "agents   1: idle 1  (roles: mayor 1)" in out
    assert "convoys  1: open 1" in out and "0/2 closed" in out and "Big change" in out
    assert ADMIN_TOKEN not in out
    rc, out, _ = await gastown("town", "status", "--json", "--url", quiet_worker.url, "--town", town_id,
                               "--token", ADMIN_TOKEN)
    data = json.loads(out)
    assert rc == 0 and data["town"]["town_id"] == town_id and "control_token" not in data["town"]
    assert data["status"]["beads"]["by_type"] == {"convoy": 1, "issue": 3}
    assert [a["agent_id"] for a in data["agents"]] == ["mayor"] and len(data["convoys"]) == 1


async def test_town_status_with_the_container_token_from_env(quiet_worker: Worker) -> None:
    town_id, container_token = await _seed_town(quiet_worker)
    env = _env(GASTOWN_API_URL=quiet_worker.url, GASTOWN_TOWN_ID=town_id, GASTOWN_CONTAINER_TOKEN=container_token)
    rc, out, err = await gastown("town", "status", env=env)
    assert rc == 0 and f"town {town_id}" in out, err
    assert container_token not in out + err


async def test_town_status_errors(quiet_worker: Worker) -> None:
    town_id, _ = await _seed_town(quiet_worker)
    url = ["--url", quiet_worker.url]
    rc, out, err = await gastown("town", "status", *url, "--town", town_id, "--token", "wrong-admin-token")
    assert_one_line_error(rc, out, err, "401", "$GASTOWN_ADMIN_TOKEN")
    assert "wrong-admin-token" not in err
    rc, out, err = await gastown("town", "status", *url, "--town", "no-such-town", "--token", ADMIN_TOKEN)
    assert_one_line_error(rc, out, err, "404", "TOWN_NOT_FOUND")
    rc, out, err = await gastown("town", "status", *url, "--token", ADMIN_TOKEN)
    assert_one_line_error(rc, out, err, "--town", "$GASTOWN_TOWN_ID")
