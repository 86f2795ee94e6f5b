"""The one bring-up path (spawn → session → swap in, with rollback) without kilo: a host whose
servers are stand-ins records what was spawned, closed and followed."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from supervisor.agent import AgentRecord
from supervisor.bringup import BringUp, Server, Session, SpawnTimeout
from supervisor.kilo_env import AgentPaths
from supervisor.models import StartAgentRequest
from supervisor.states import AgentState, IllegalTransition, check_transition
from supervisor.tasks import TaskOwner
from tests.conftest import start_body


class StandInProcess:
    def __init__(self, pid: int) -> None:
        self.pid, self.running = pid, True

    async def stop(self, timeout: float = 3.0) -> None:
        self.running = False


class StandInClient:
    def __init__(self, sessions: set[str]) -> None:
        self.sessions, self.closed = sessions, False

    async def close(self) -> None:
        self.closed = True

    async def get_session(self, session_id: str, timeout: float | None = None) -> dict[str, Any]:
        if session_id not in self.sessions:
            raise LookupError(f"no session {session_id}")
        return {"id": session_id}


class Host:
    def __init__(self, *, sessions: set[str], spawn_delay: float = 0.0) -> None:
        self.sessions, self.spawn_delay = sessions, spawn_delay
        self.background = TaskOwner("test")
        self.spawned: list[Server] = []
        self.followed: list[int] = []
        self.next_pid = 100

    async def launch_server(self, rec: AgentRecord) -> Server:
        await asyncio.sleep(self.spawn_delay)
        self.next_pid += 1
        rec.config_json, rec.child_env = f"config-{self.next_pid}", {"PID": str(self.next_pid)}
        server = Server(StandInProcess(self.next_pid), StandInClient(self.sessions))  # type: ignore[arg-type]
        self.spawned.append(server)
        return server

    def adopt_server(self, rec: AgentRecord, server: Server) -> None:
        rec.process, rec.client = server.proc, server.client

    async def open_session(self, rec: AgentRecord, client: Any) -> None:
        rec.session_id = rec.session_id or "ses-new"

    async def follow_events(self, rec: AgentRecord) -> None:
        self.followed.append(rec.process.pid)
        if rec.process.pid == 999_999:
            raise RuntimeError("stream never connected")


def running_record(tmp_path: Path) -> tuple[AgentRecord, Server]:
    rec = AgentRecord(request=StartAgentRequest.model_validate(start_body()), paths=AgentPaths.for_agent(tmp_path, "polecat-1"))
    old = Server(StandInProcess(7), StandInClient(set()))  # type: ignore[arg-type]
    rec.process, rec.client, rec.session_id = old.proc, old.client, "ses-1"
    rec.config_json, rec.child_env, rec.model = "config-old", {"PID": "7"}, "fake/m1"
    rec.state = AgentState.running
    return rec, old


async def test_a_swap_that_fails_after_swap_in_puts_the_old_server_back_and_follows_it_again(tmp_path):
    rec, old = running_record(tmp_path)
    host = Host(sessions={"ses-1"})

    async def refuse(client: Any) -> None:
        raise ValueError("model not offered")

    with pytest.raises(ValueError):
        async with BringUp(host, rec) as up:  # type: ignore[arg-type]
            rec.model = "fake/m2"
            rec.request = rec.request.model_copy(update={"model": "fake/m2"})
            await up.spawn()
            await up.settle(Session.resume)
            await up.swap_in()
            await refuse(rec.client)
    new = host.spawned[0]
    assert not new.proc.running and new.client.closed
    assert rec.process is old.proc and rec.client is old.client and old.proc.running
    assert (rec.model, rec.request.model, rec.config_json, rec.child_env) == ("fake/m1", "fake/m1", "config-old", {"PID": "7"})
    assert host.followed == [new.proc.pid, old.proc.pid]


async def test_a_failed_resume_never_swaps_in_and_leaves_no_server(tmp_path):
    rec, old = running_record(tmp_path)
    host = Host(sessions=set())  # the new server does not know ses-1
    with pytest.raises(LookupError):
        async with BringUp(host, rec) as up:  # type: ignore[arg-type]
            await up.spawn()
            await up.settle(Session.resume)
            await up.swap_in()
    assert not host.spawned[0].proc.running and host.followed == []
    assert rec.process is old.proc and rec.session_id == "ses-1"


async def test_an_event_stream_that_never_connects_rolls_the_swap_back(tmp_path):
    rec, old = running_record(tmp_path)
    host = Host(sessions={"ses-1"})
    host.next_pid = 999_998
    with pytest.raises(RuntimeError, match="never connected"):
        async with BringUp(host, rec) as up:  # type: ignore[arg-type]
            await up.spawn()
            await up.settle(Session.resume)
            await up.swap_in()
    assert rec.process is old.proc and not host.spawned[0].proc.running
    assert host.followed == [999_999, 7]


async def test_a_spawn_past_its_timeout_is_reaped_when_it_arrives(tmp_path):
    rec, old = running_record(tmp_path)
    host = Host(sessions={"ses-1"}, spawn_delay=0.2)
    with pytest.raises(SpawnTimeout):
        async with BringUp(host, rec) as up:  # type: ignore[arg-type]
            await up.spawn(timeout=0.01)
    assert host.spawned == [] and rec.process is old.proc
    await asyncio.wait_for(asyncio.gather(*host.background.pending()), 5)
    assert len(host.spawned) == 1 and not host.spawned[0].proc.running and host.spawned[0].client.closed


async def test_a_cancelled_start_leaves_no_server_and_an_empty_record(tmp_path):
    rec = AgentRecord(request=StartAgentRequest.model_validate(start_body()), paths=AgentPaths.for_agent(tmp_path, "polecat-1"))
    host = Host(sessions=set())
    settled = asyncio.Event()

    async def slow_session(rec: AgentRecord, client: Any) -> None:
        rec.session_id = "ses-half"
        settled.set()
        await asyncio.sleep(30)

    host.open_session = slow_session  # type: ignore[method-assign]

    async def start() -> None:
        async with BringUp(host, rec) as up:  # type: ignore[arg-type]
            await up.spawn()
            await up.settle(Session.open)
            await up.swap_in()

    task = asyncio.create_task(start())
    await settled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert not host.spawned[0].proc.running and host.spawned[0].client.closed
    assert rec.process is None and rec.client is None and rec.session_id is None


def test_recycling_is_a_state_of_its_own_between_running_and_running_or_failed():
    for new in (AgentState.running, AgentState.failed):
        check_transition(AgentState.recycling, new)
    check_transition(AgentState.running, AgentState.recycling)
    for old, new in ((AgentState.running, AgentState.starting), (AgentState.recycling, AgentState.starting),
                     (AgentState.starting, AgentState.recycling), (AgentState.recycling, AgentState.exited)):
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


async def test_every_transition_is_one_typed_event_that_metrics_heartbeats_and_hooks_receive(tmp_path):
    from supervisor.config import RuntimeConfig
    from supervisor.runtime import ContainerRuntime

    rt = ContainerRuntime(RuntimeConfig(data_dir=tmp_path / "d"))
    seen = []

    def broken(rec, t):  # noqa: ANN001 - a failing subscriber must not stop the transition
        raise RuntimeError("subscriber bug")

    rt.supervisor.transition_hooks[1:1] = [broken]
    rt.supervisor.transition_hooks.append(lambda rec, t: seen.append(t))
    rec = rt.supervisor.new_record(StartAgentRequest.model_validate(start_body()))
    rec.transition(AgentState.running)
    rec.transition(AgentState.recycling, "wedged")
    assert rec.state == AgentState.recycling
    assert [(t.agent_id, t.role, t.old, t.new, t.reason) for t in seen] == [
        ("polecat-1", "polecat", AgentState.starting, AgentState.running, None),
        ("polecat-1", "polecat", AgentState.running, AgentState.recycling, "wedged")]
    metrics = rt.metrics.render().decode()
    assert 'gastown_agent_transitions_total{from="starting",to="running"} 1.0' in metrics
    assert 'gastown_agent_transitions_total{from="running",to="recycling"} 1.0' in metrics
    assert [t.get_name() for t in rt.tasks.pending()] == ["runtime:heartbeat:polecat-1"]  # on → running only
    await rt.shutdown()
