"""Answers of the worker API, one model each (request models are in ``worker_api.models``, the
route modules and ``gastown.contract.reports``). ``/openapi.json`` is generated from these; the
e2e conformance test drives every route and checks the real answer against the generated schema.

Stored rows (Town, Agent, Rig, Bead and its views) allow extra keys: a new column must not make
an old client's schema check fail. Small acknowledgements forbid them, so the document says
exactly which keys they carry.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, RootModel

from gastown.contract.agents import RoleName
from gastown.contract.container_api import Count, EpochMs, Id
from worker_api.beads import BEAD_STATUSES, BEAD_TYPES, PRIORITIES
from worker_api.models import MAX_REGISTRY_ENTRIES, RegistryEntry
from worker_api.store import AGENT_STATUSES

BeadType = Literal[BEAD_TYPES]  # type: ignore[valid-type]
BeadStatus = Literal[BEAD_STATUSES]  # type: ignore[valid-type]
Priority = Literal[PRIORITIES]  # type: ignore[valid-type]
AgentStatusName = Literal[AGENT_STATUSES]  # type: ignore[valid-type]
NudgePriority = Literal["normal", "urgent"]
Counts = dict[str, Count]


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Row(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- towns and agents

class WorkerAlive(Answer):
    status: Literal["ok"]


class Town(Row):
    town_id: Id
    name: str
    container_url: str
    default_model: Optional[str]
    small_model: Optional[str]
    organization_id: Optional[str]
    created_at: EpochMs
    owner_user_id: Optional[Id] = None
    draining: bool = False
    token_generation: int = 0


class TownCreated(Answer):
    town_id: Id
    container_token: str


class Agent(Row):
    """A row of ``agents``. List routes hold ``checkpoint``/``gupp_fired`` as the stored JSON text,
    the tool routes (reset, prime) decode them."""

    town_id: Id
    agent_id: Id
    role: RoleName
    name: str
    rig_id: Optional[str]
    status: AgentStatusName
    working_since: Optional[EpochMs]
    last_activity_at: Optional[EpochMs]
    last_event_type: Optional[str]
    last_event_at: Optional[EpochMs]
    active_tools: list[str]
    message_count: int
    container_status: Optional[str]
    container_instance_id: Optional[str]
    last_heartbeat_at: Optional[EpochMs]
    created_at: EpochMs
    current_hook_bead_id: Optional[str]
    dispatch_attempts: int
    stalled_at: Optional[EpochMs]
    checkpoint: Any
    gupp_fired: dict[str, Any] | str


class AgentList(Answer):
    agents: list[Agent]


class RegistryAnswer(RootModel[Annotated[list[RegistryEntry], Field(max_length=MAX_REGISTRY_ENTRIES)]]):
    """The stored registry, as the container put it (minus dropped secret fields)."""


class RegistryStored(Answer):
    stored: Count
    dropped: list[str] = Field(description="JSON paths of the secret-looking fields that were not stored")


class PrewarmContext(Answer):
    """With a mayor: every field of its start request but the prompt, so the prewarmed server is the one
    the start would build."""
    agent_id: Optional[str]
    model: Optional[str]
    small_model: Optional[str]
    organization_id: Optional[str]
    name: Optional[str] = None
    identity: Optional[str] = None
    system_prompt: Optional[str] = None
    env_vars: Optional[dict[str, str]] = None
    git_author_name: Optional[str] = None
    git_author_email: Optional[str] = None
    disable_ai_coauthor: Optional[bool] = None


class NewToken(Answer):
    token: str
    expires_at: Optional[int] = None  # epoch seconds


class Rotated(Answer):
    token_generation: int
    token: str                        # the town's new runtime token
    pushed: bool                      # the container took it (else hand it over with POST /refresh-token)


# ---------------------------------------------------------------- container-facing

class HeartbeatAck(Answer):
    heartbeat: Literal[True]
    drain_nonce: str = Field("", description="present while the town drains: the nonce to acknowledge")


class CompletedAck(Answer):
    completed: Literal[True]


class WaitingAck(Answer):
    acknowledged: Literal[True]


class DoneAck(Answer):
    done: Literal[True]


class Recorded(Answer):
    recorded: Literal[True]


class PendingNudge(Answer):
    nudge_id: str
    message: str
    mode: str
    priority: NudgePriority
    source: str


class PendingNudges(Answer):
    nudges: list[PendingNudge]


class Marked(Answer):
    marked: Literal[True]


class Nudge(Answer):
    nudge_id: str
    agent_id: Id
    message: str
    mode: str
    priority: NudgePriority
    source: str
    created_at: EpochMs
    expires_at: Optional[EpochMs]
    delivered_at: Optional[EpochMs]


class Accepted(Answer):
    accepted: Literal[True]


class DrainNonce(Answer):
    drain_nonce: str


class Cleared(Answer):
    cleared: bool


# ---------------------------------------------------------------- rigs, beads, convoys

class Rig(Row):
    rig_id: Id
    name: str
    git_url: str
    default_branch: str
    config: dict[str, Any]
    created_at: EpochMs


class RigList(Answer):
    rigs: list[Rig]


class GitCredential(Answer):
    """What git's credential helper prints for git (a secret: never logged)."""

    username: str
    password: str
    expires_at: Optional[EpochMs]
    rig_id: Id


class ScmView(Answer):
    rig_id: Id
    provider: Literal["github"]
    token_configured: bool
    auto_merge_delay_minutes: float = Field(ge=0)
    merge_strategy: Literal["direct", "pr"]


class Bead(Row):
    bead_id: Id
    type: BeadType
    status: BeadStatus
    title: str
    body: str
    rig_id: Optional[str]
    parent_bead_id: Optional[str]
    assignee_agent_id: Optional[str]
    priority: Priority
    labels: list[str]
    metadata: dict[str, Any]
    dispatch_attempts: int
    last_dispatch_attempt_at: Optional[EpochMs]
    created_by: Optional[str]
    created_at: EpochMs
    updated_at: EpochMs
    closed_at: Optional[EpochMs]


class BeadList(Answer):
    beads: list[Bead]


class Review(Row):
    bead_id: Id
    branch: Optional[str]
    target_branch: str
    pr_url: Optional[str]
    merge_commit: Optional[str]
    retry_count: int
    last_poll_at: Optional[EpochMs]


class BeadView(Bead):
    blocked_by: list[str]
    hooked_agents: list[str]
    review: Optional[Review] = None


class Deleted(Answer):
    deleted: Literal[True]


class Slung(Answer):
    bead_id: Id
    status: str


class ConvoyCreated(Answer):
    convoy_id: Id
    bead_ids: list[str]


class ConvoyProgress(Answer):
    total: int
    closed: int
    failed: int
    open: int


class ConvoyBeadView(Answer):
    bead_id: Id
    title: str
    status: str
    assignee_agent_id: Optional[str]
    dispatch_attempts: int
    blocked_by: list[str]


class Convoy(Bead):
    merge_mode: Optional[str]
    staged: bool
    feature_branch: Optional[str]
    landing_attempts: int
    landed_at: Optional[EpochMs]
    progress: ConvoyProgress
    beads: list[ConvoyBeadView] = []


class ConvoyList(Answer):
    convoys: list[Convoy]


class TownStatusBeads(Answer):
    by_status: Counts
    by_type: Counts


class TownStatusAgents(Answer):
    by_status: Counts
    by_role: Counts


class TownStatusConvoys(Answer):
    by_status: Counts


class ReconcilerStatus(Answer):
    running: bool
    ticks: Count
    replica: str | None = None  # the worker replica that holds the town's lease now


class TownStatus(Answer):
    town_id: Id
    draining: bool
    beads: TownStatusBeads
    agents: TownStatusAgents
    convoys: TownStatusConvoys
    pending_events: Count
    reconciler: ReconcilerStatus


class Violation(Row):
    invariant: int
    rule: str


class Violations(Answer):
    violations: list[Violation]


# ---------------------------------------------------------------- agent tools

class MailMessage(Answer):
    mail_id: str
    from_agent_id: str
    to_agent_id: str
    subject: str
    body: str
    created_at: EpochMs


class MailList(Answer):
    mail: list[MailMessage]


class Prime(Answer):
    agent: Agent
    hooked_bead: Optional[BeadView]
    mail: list[MailMessage]
    open_beads: list[Bead]


class ChangesRequested(Answer):
    rework_bead_id: Optional[str]
    mr_status: Literal["open", "failed"]


class Escalated(Answer):
    bead_id: Id


class Saved(Answer):
    saved: Literal[True]
