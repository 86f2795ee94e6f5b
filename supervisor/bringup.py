"""The one way a kilo server is put behind an agent: spawn → wait until it answers → settle the
session → swap in, with rollback.

Start, prewarm, wedge recycle and hot swap all run these steps through :class:`BringUp`; they
differ only in which session step they take (open a session, or resume the agent's own) and
whether the server is swapped in (a prewarm parks it). Leaving the ``async with`` by an exception,
cancellation included, stops the new server and puts back every field of the record the attempt
touched (config, env, request, process, client, session), so a failed hot swap leaves the old
server serving and a failed start leaves nothing running. What a failure means for the agent
(failed, rolled back, retried) is the caller's decision.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum
from typing import Any, Awaitable, Callable, NamedTuple, Protocol

from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.config import RuntimeConfig
from supervisor.kilo_client import KiloClient
from supervisor.kilo_process import KiloProcess
from supervisor.models import StartAgentRequest
from supervisor.tasks import TaskOwner

log = get_logger("supervisor.bringup")

STARTUP_CALL_TIMEOUT_S = 30.0  # first calls on a fresh kilo boot its directory instance; slow under load


class Server(NamedTuple):
    """One running kilo server and the client that talks to it."""

    proc: KiloProcess
    client: KiloClient

    async def close(self, timeout: float = 3.0) -> None:
        await self.client.close()
        await self.proc.stop(timeout=timeout)


class Session(str, Enum):
    open = "open"  # the role's rule: the mayor resumes its latest session, others get a new one
    resume = "resume"  # the agent's own session, which must exist on the new server (same DB)


class SpawnTimeout(TimeoutError):
    pass


class Host(Protocol):
    """What a bring-up borrows from the supervisor (which owns the records and the spawn details)."""

    cfg: RuntimeConfig
    agents: dict[str, AgentRecord]
    background: TaskOwner

    def lock(self, agent_id: str) -> asyncio.Lock: ...
    def new_record(self, req: StartAgentRequest) -> AgentRecord: ...
    def build_launch(self, rec: AgentRecord, password: str) -> dict[str, str]: ...
    def adopt_server(self, rec: AgentRecord, server: Server) -> None: ...
    async def prepare_workspace(self, rec: AgentRecord) -> None: ...
    async def launch_server(self, rec: AgentRecord) -> Server: ...
    async def open_session(self, rec: AgentRecord, client: KiloClient) -> None: ...
    async def follow_events(self, rec: AgentRecord) -> None: ...


_SAVED = ("request", "model", "small_model", "config_json", "child_env", "process", "client", "session_id", "resumed")


@dataclass(frozen=True)
class _Saved:
    values: tuple[Any, ...]

    @classmethod
    def of(cls, rec: AgentRecord) -> "_Saved":
        return cls(tuple(getattr(rec, name) for name in _SAVED))

    def restore(self, rec: AgentRecord) -> None:
        for name, value in zip(_SAVED, self.values):
            setattr(rec, name, value)


async def _reap_when_done(spawn: asyncio.Task, agent_id: str) -> None:
    """Stop the server a timed-out spawn produces once it finally arrives. Cancelling this reaper
    (shutdown) cancels the spawn too, and ``launch_server`` stops its half-started child."""
    try:
        server = await spawn
    except asyncio.CancelledError:
        raise
    except Exception:
        return
    log.warning("bringup.orphan_reaped", agent_id=agent_id, pid=server.proc.pid)
    await server.close()


class BringUp:
    """One attempt; the record's fields are captured when it is made, before the caller changes
    any of them (a hot swap's new model), so a rollback restores what was there."""

    def __init__(self, host: Host, rec: AgentRecord, server: Server | None = None) -> None:
        self.host = host
        self.rec = rec
        self.server = server  # e.g. an adopted prewarm: spawn is skipped
        self._saved = _Saved.of(rec)
        self._swapped = False

    async def __aenter__(self) -> "BringUp":
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            await asyncio.shield(self.rollback())

    async def spawn(self, timeout: float | None = None) -> Server:
        """A new server with the record's current config (nothing of the record's live one is
        touched). With ``timeout``, a spawn still running then is left to a reaper."""
        if self.server is not None:
            return self.server
        if timeout is None:
            self.server = await self.host.launch_server(self.rec)
            return self.server
        task = asyncio.create_task(self.host.launch_server(self.rec), name=f"{self.rec.agent_id}:spawn")
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            self.host.background.spawn(_reap_when_done(task, self.rec.agent_id), f"reap:{self.rec.agent_id}")
            raise SpawnTimeout(f"kilo for {self.rec.agent_id} did not start within {timeout:.0f}s")
        self.server = task.result()
        return self.server

    async def settle(self, session: Session, check: Callable[[KiloClient], Awaitable[None]] | None = None) -> None:
        """The session step on the new server, then the caller's own check of it (e.g. the model)."""
        assert self.server is not None
        client = self.server.client
        if session == Session.resume:
            await client.get_session(self.rec.session_id, timeout=STARTUP_CALL_TIMEOUT_S)
        else:
            await self.host.open_session(self.rec, client)
        if check is not None:
            await check(client)

    async def swap_in(self) -> None:
        """Make the new server the agent's (exit watcher, event stream live before returning)."""
        assert self.server is not None
        self.host.adopt_server(self.rec, self.server)
        self._swapped = True
        await self.host.follow_events(self.rec)

    async def rollback(self) -> None:
        rec = self.rec
        if self.server is not None:
            await self.server.close()
        self._saved.restore(rec)
        old = rec.process
        if self._swapped and old is not None and old.running:
            await self.host.follow_events(rec)  # the old server serves again: follow it again
        if self.server is not None:
            log.info("bringup.rolled_back", agent_id=rec.agent_id, pid=self.server.proc.pid)
