"""Answers of the front-door routes (one model each; ``/openapi.json`` is generated from them)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from gastown.contract.container_api import Count, EpochMs, Id
from worker_api.answers import Answer, Town


class UserCreated(Answer):
    user_id: Id
    name: str
    token: str = Field(description="The user's bearer token; shown once, only its hash is stored")


class TownList(Answer):
    towns: list[Town]


class MayorAccepted(Answer):
    accepted: Literal[True]
    agent_id: Id
    message_id: Count


class MayorView(Answer):
    agent_id: Id
    status: str = Field(description="The container's status of the mayor (running, exited, …), or unknown")
    model: Optional[str]
    session_id: Optional[str]
    last_activity_at: Optional[EpochMs]
    last_event_id: int = Field(0, description="the archive's newest event of the mayor: stream ?after= it for what "
                                            "comes next")


class ChatMessage(Answer):
    n: Count = Field(description="Position in the conversation; ?after=n pages")
    role: Literal["user", "assistant"]
    text: str
    ts: EpochMs


class Conversation(Answer):
    messages: list[ChatMessage]


class ArchivedEvent(Answer):
    id: Count
    agent_id: Id
    type: str
    data: Any
    ts: EpochMs


class ArchivedEvents(Answer):
    events: list[ArchivedEvent]


class Ingested(Answer):
    stored: Count
    duplicates: Count


class DrainState(Answer):
    draining: bool
    drain_nonce: str = Field(description="the nonce to acknowledge with container-ready, empty when not draining")


class TownSettings(Answer):
    default_model: Optional[str]
    small_model: Optional[str]
    env_vars: dict[str, str] = Field(description="custom variables given to every agent (rig env_vars add to them)")
    git_author_name: Optional[str]
    git_author_email: Optional[str]
    disable_ai_coauthor: bool
    code_review: bool = Field(description="false: MRs skip the refinery (a convoy's review-and-merge beads keep it)")
    merge_strategy: Literal["direct", "pr"]
