"""The record of one agent: its request, state, process handles and activity watermark.

Only events of the agent's own session move the watermark (``last_event_*``, ``active_tools``);
``server.heartbeat`` does not, so a stuck agent cannot look busy (a bug of the system we re-imagine).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from gastown.contract.wire import epoch_ms
from supervisor.events import SERVER_EVENTS, EventBuffer, event_session_id
from supervisor.kilo_client import KiloClient
from supervisor.kilo_env import AgentPaths
from supervisor.kilo_process import KiloProcess
from supervisor.models import StartAgentRequest
from supervisor.states import ACTIVE_STATES, AgentState, Transition, check_transition

RSS_CACHE_S = 1.0


@dataclass
class Liveness:
    """The health monitor's memory of one agent life (a recycle keeps the life, a start makes a new one)."""

    misses: int = 0  # consecutive unanswered health probes
    recycled_at: float | None = None  # monitor clock of the last recycle
    grace_s: float | None = None  # how long a recycled kilo may boot before it is probed again
    crash_counted: bool = False  # this life's crash is on the crash policy's books already
    running_since: float | None = None  # monitor clock when this life last reached running


@dataclass
class AgentRecord:
    request: StartAgentRequest
    paths: AgentPaths
    state: AgentState = AgentState.starting
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: float = field(default_factory=time.time)
    model: str = ""
    small_model: str | None = None
    process: KiloProcess | None = None
    client: KiloClient | None = None
    session_id: str | None = None
    resumed: bool = False
    restored: bool = False
    restarts: int = 0
    prewarmed: bool = False
    config_json: str = ""
    child_env: dict[str, str] = field(default_factory=dict)
    last_activity_at: float | None = None
    last_event_type: str | None = None
    last_event_at: float | None = None
    active_tools: dict[str, str] = field(default_factory=dict)
    message_count: int = 0
    exit_reason: str | None = None
    last_exit: dict[str, Any] | None = None
    last_snapshot: dict[str, Any] | None = None
    events: EventBuffer = field(default_factory=EventBuffer)
    tasks: set[asyncio.Task] = field(default_factory=set)
    event_task: asyncio.Task | None = None
    liveness: Liveness = field(default_factory=Liveness)
    _rss_cache: tuple[int, float, int] | None = None
    on_transition: Callable[[Transition], None] | None = None

    def __post_init__(self) -> None:
        self.model = self.model or self.request.model
        self.small_model = self.small_model or self.request.small_model

    @property
    def agent_id(self) -> str:
        return self.request.agent_id

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def transition(self, new: AgentState, reason: str | None = None) -> None:
        old = self.state
        if old == new:
            return
        check_transition(old, new)
        self.state = new
        if reason is not None and new != AgentState.backoff:  # backoff keeps the crash's reason
            self.exit_reason = reason if new not in ACTIVE_STATES else None
        if self.on_transition is not None:
            self.on_transition(Transition(self.agent_id, self.run_id, self.request.role.value, old, new, reason))

    def fail(self, reason: str) -> bool:
        """Move to ``failed`` unless the record already left its live states: the exit watcher may
        have won the race (failed, and the crash policy moved it on to backoff or fatal)."""
        if self.state in (AgentState.starting, AgentState.running, AgentState.recycling, AgentState.stopping):
            self.transition(AgentState.failed, reason)
            return True
        return False

    def handle_event(self, event: dict[str, Any]) -> bool:
        """Apply one kilo event; return True when it belongs to this agent's session."""
        etype = event.get("type")
        if not isinstance(etype, str) or etype == "sync" or etype in SERVER_EVENTS:
            return False
        sid = event_session_id(event)
        if sid is None or sid != self.session_id:
            return False
        now = time.time()
        self.last_event_type = etype
        self.last_event_at = now
        self.last_activity_at = now
        props = event.get("properties") or {}
        if etype == "message.part.updated":
            part = props.get("part") or {}
            if part.get("type") == "tool":
                call_id = str(part.get("callID") or part.get("id") or "")
                status = (part.get("state") or {}).get("status")
                if status in ("pending", "running"):
                    self.active_tools[call_id] = str(part.get("tool") or "")
                else:
                    self.active_tools.pop(call_id, None)
        elif etype in ("session.idle", "session.error"):
            self.active_tools.clear()
        self.events.append(etype, props)
        return True

    def rss_bytes(self, max_age_s: float = RSS_CACHE_S) -> int:
        """RSS of the kilo tree, cached briefly: a tree walk scans /proc (ms), status calls are hot."""
        if self.process is None or not self.process.running:
            return 0
        now = time.monotonic()
        cached = self._rss_cache
        if cached is not None and cached[0] == self.process.pid and now - cached[1] < max_age_s:
            return cached[2]
        value = self.process.rss_bytes()
        self._rss_cache = (self.process.pid, now, value)
        return value

    def status(self) -> dict[str, Any]:
        proc = self.process
        live = proc is not None and proc.running and self.active
        req = self.request
        return {
            "agent_id": req.agent_id,
            "town_id": req.town_id,
            "rig_id": req.rig_id,
            "role": req.role.value,
            "name": req.name,
            "status": self.state.value,
            "pid": proc.pid if live else None,
            "server_port": proc.port if live else None,
            "session_id": self.session_id,
            "model": self.model,
            "started_at": epoch_ms(self.started_at),
            "last_activity_at": epoch_ms(self.last_activity_at),
            "last_event_type": self.last_event_type,
            "last_event_at": epoch_ms(self.last_event_at),
            "active_tools": sorted(set(self.active_tools.values())),
            "message_count": self.message_count,
            "exit_reason": self.exit_reason,
            "last_exit": self.last_exit,
            "last_snapshot": self.last_snapshot,
            "rss_bytes": self.rss_bytes() if live else 0,
            "restarts": self.restarts,
            "fatal": self.state == AgentState.fatal,
        }

    def spawn_task(self, coro: Any, name: str) -> asyncio.Task:
        """Tasks owned by this agent life: cancelled together on stop."""
        task = asyncio.create_task(coro, name=f"{self.agent_id}:{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self.tasks if t is not current]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
