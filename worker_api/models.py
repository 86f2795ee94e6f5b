"""Request bodies of the worker API, one pydantic model each.

Strict types (no ``"5"`` → 5, no ``true`` → 1) and bounded lengths so garbage is a 400, never a 500
or a row of junk. Unknown fields are ignored: the container may send more than we read (the
original heartbeat also sent ``agentId``/``timestamp``), and that must not break it.
Times are normalised to epoch milliseconds (see :data:`EpochMs`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, RootModel

from gastown.contract.agents import AgentStateName, RoleName
from gastown.contract.reports import (  # noqa: F401 - the worker's models build on the shared ones
    MAX_COUNT,
    MAX_EPOCH_MS,
    BlankableText,
    Body,
    Completed,
    EpochMs,
    EvictionContext,
    Heartbeat,
    Id,
    ShortText,
    Waiting,
    check_id,
)
from gastown.core.http import ApiError, parse_model

MAX_REGISTRY_ENTRIES = 100  # a container runs far fewer agents; each is resumed at boot


def check_http_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    if parts.password:
        raise ValueError("must not embed credentials")
    return v


HttpUrl = Annotated[str, Field(max_length=2048, json_schema_extra={"pattern": "^https?://[^/?#@\\s]+"}),
                    AfterValidator(check_http_url)]
Role = RoleName
ContainerStatus = AgentStateName


class CreateTown(Body):
    """``container_url`` and ``control_token`` name a container someone else runs; a worker that
    starts containers itself (a container provider) picks both when they are left out."""
    name: ShortText
    container_url: Optional[HttpUrl] = None
    control_token: Optional[Annotated[str, Field(min_length=8, max_length=4096)]] = None
    default_model: Optional[ShortText] = None
    small_model: Optional[ShortText] = None
    organization_id: Optional[ShortText] = None


class CreateAgent(Body):
    agent_id: Optional[Id] = None
    role: Role
    name: ShortText
    rig_id: Optional[Id] = None


class Done(Body):
    branch: Annotated[str, Field(min_length=1, max_length=512)]
    pr_url: Optional[Annotated[str, Field(max_length=2048)]] = None
    summary: Optional[Annotated[str, Field(max_length=16000)]] = None


class NudgeDelivered(Body):
    nudge_id: Id


class EnqueueNudge(Body):
    message: Annotated[str, Field(min_length=1, max_length=16000)]
    mode: Literal["wait-idle", "immediate", "queue"] = "wait-idle"
    priority: Literal["normal", "urgent"] = "normal"
    source: ShortText = "system"
    ttl_s: Optional[Annotated[int, Field(ge=1, le=30 * 24 * 3600)]] = None


class ContainerEvent(Body):
    """Telemetry: ``event`` is required; every other field is kept as the payload."""

    model_config = ConfigDict(strict=True, extra="allow")
    event: ShortText
    agent_id: Optional[Id] = None


class ContainerReady(Body):
    nonce: Annotated[str, Field(min_length=1, max_length=200)]


class RegistryEntry(Body):
    agent_id: Id
    request: dict[str, Any]
    workdir: Annotated[str, Field(min_length=1, max_length=4096)]


class Registry(RootModel[Annotated[list[RegistryEntry], Field(max_length=MAX_REGISTRY_ENTRIES)]]):
    """The body of ``POST .../container-registry``: every agent the container runs."""


def parse_registry(data: Any) -> list[RegistryEntry]:
    """The registry body is a JSON array of :class:`RegistryEntry` (400 otherwise)."""
    if not isinstance(data, list):
        raise ApiError(400, "INVALID_REQUEST", "request body must be a JSON array")
    return parse_model(Registry, data).root
