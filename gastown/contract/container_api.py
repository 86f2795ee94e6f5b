"""Answers of the container's control API, one model each (the request models are in
``supervisor.models``). The worker reads AgentStatus through ``GET /agents``; the OpenAPI document
is generated from these, and ``extra="forbid"`` makes it say exactly which keys an answer has."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gastown.contract.agents import AgentState, Role
from gastown.core.ids import ID_PATTERN

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
EpochMs = Annotated[int, Field(description="epoch milliseconds")]
Count = Annotated[int, Field(ge=0)]


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LastExit(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: Optional[int]
    signal: Optional[int]
    at: Optional[EpochMs]
    oom_suspected: bool
    stderr_tail: str


class LastSnapshot(BaseModel):
    model_config = ConfigDict(extra="allow")
    at: Optional[EpochMs]
    bytes: Optional[int]
    sha256: Optional[str]
    generation: Optional[int | str]


class AgentStatus(Answer):
    """One agent as the container sees it; never a token or a secret env var."""

    agent_id: Id
    town_id: Id
    rig_id: Id
    role: Role
    name: str
    status: AgentState
    pid: Optional[int]
    server_port: Optional[int]
    session_id: Optional[str]
    model: str
    started_at: EpochMs
    last_activity_at: Optional[EpochMs]
    last_event_type: Optional[str]
    last_event_at: Optional[EpochMs]
    active_tools: list[str]
    message_count: Count
    exit_reason: Optional[str]
    last_exit: Optional[LastExit]
    last_snapshot: Optional[LastSnapshot]
    rss_bytes: Count
    restarts: Count
    fatal: bool


class AgentList(Answer):
    agents: list[AgentStatus]


class AgentEvent(Answer):
    id: int
    type: str
    data: Any
    ts: EpochMs


class EventPage(Answer):
    events: list[AgentEvent]


class StreamTicket(Answer):
    ticket: str = Field(description="pass as ?ticket= to the agent's stream or terminal")
    expires_at: EpochMs
    agent_id: Id


# One frame of an agent-event stream (the container's per agent, the worker's per town): what the
# document says an SSE response is made of.
SSE_EVENT = {"type": "object", "description": "one event of the stream", "properties": {
    "id": {"type": "string", "pattern": "^[0-9]+$"}, "event": {"type": "string", "enum": ["agent_event"]},
    "data": {"type": "string", "description": "JSON: {agent_id, type, data, ts}"}}}


class Health(Answer):
    status: Literal["ok", "draining"]
    agents: Annotated[int, Field(ge=0, description="active agents")]
    servers: Annotated[int, Field(ge=0, description="running kilo servers (prewarmed included)")]
    uptime_ms: Count
    started_at: EpochMs
    hydrated: bool
    draining: bool
    mayor_ready_at: Optional[EpochMs]


class RefreshItem(Answer):
    agent_id: str
    success: bool
    duration_ms: int
    error: Optional[str] = None


class RefreshResult(Answer):
    refreshed: bool
    agents_restarted: Count
    agents_failed: Count
    results: list[RefreshItem]


class Alive(Answer):
    status: Literal["ok"]


class Ready(Answer):
    status: Literal["ready"]


class NotReady(Answer):
    status: Literal["hydrating", "draining"]


class Stopped(Answer):
    stopped: bool


class Sent(Answer):
    sent: Literal[True]


class ModelUpdated(Answer):
    updated: Literal[True]
