"""Request bodies of the worker API, one pydantic model each.

Strict types (no ``"5"`` → 5, no ``true`` → 1) and bounded lengths so garbage is a 400, never a 500
or a row of junk. Unknown fields are ignored: the container may send more than we read (the
original heartbeat also sent ``agentId``/``timestamp``), and that must not break it.
Times are normalised to epoch milliseconds (see :data:`EpochMs`).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gastown.contract.agents import AgentStateName, RoleName
from gastown.core.http import ApiError, parse_model
from gastown.core.ids import is_valid_id

MAX_REGISTRY_ENTRIES = 500


def check_id(v: str) -> str:
    if not is_valid_id(v):
        raise ValueError("must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    return v


MIN_EPOCH_MS = 100_000_000_000  # 1973-03-03 in ms; any smaller number is seconds from an old container
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: keeps every time inside SQLite INTEGER
MAX_COUNT = 2**53  # counters beyond JSON's exact integers are garbage, and 2**63 overflows SQLite


def _to_epoch_ms(v: int | float | str) -> int:
    """Numbers are epoch ms, the one unit on the wire (``gastown/contract/wire.py``); strings are
    ISO-8601 (``Z`` or an offset; naive means UTC). A number below 1e11 (before 1973 in ms) is what
    an older container sends in seconds: refused with a 400 rather than stored as 1970, which would
    make every agent look decades quiet (it used to be scaled by 1000: two units on one wire)."""
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError("must be epoch milliseconds or an ISO-8601 timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    if v < 0 or v != v or v in (float("inf"), float("-inf")):
        raise ValueError("must be a non-negative finite number")
    if v < MIN_EPOCH_MS:
        raise ValueError("must be epoch milliseconds (this looks like seconds)")
    ms = int(v)
    if ms > MAX_EPOCH_MS:
        raise ValueError("must be a time before year 10000")
    return ms


def check_http_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    if parts.password:
        raise ValueError("must not embed credentials")
    return v


def _empty_to_none(v: str) -> str | None:
    return v or None


Id = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(check_id)]
EpochMs = Annotated[int | float | str, AfterValidator(_to_epoch_ms)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
# Optional text where the container may send "" for "nothing yet": stored as NULL, not refused.
BlankableText = Annotated[str, Field(max_length=200), AfterValidator(_empty_to_none)]
HttpUrl = Annotated[str, Field(max_length=2048), AfterValidator(check_http_url)]
Role = RoleName
ContainerStatus = AgentStateName


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", str_strip_whitespace=False)


class CreateTown(Body):
    name: ShortText
    container_url: HttpUrl
    control_token: Annotated[str, Field(min_length=8, max_length=4096)]
    default_model: Optional[ShortText] = None
    small_model: Optional[ShortText] = None
    organization_id: Optional[ShortText] = None


class CreateAgent(Body):
    agent_id: Optional[Id] = None
    role: Role
    name: ShortText
    rig_id: Optional[Id] = None


class Heartbeat(Body):
    status: ContainerStatus
    last_event_type: Optional[BlankableText] = None
    last_event_at: Optional[EpochMs] = None
    active_tools: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=200)] = []
    message_count: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    container_instance_id: Optional[BlankableText] = None
    # Only for an agent the worker does not know yet (see routes_container.heartbeat).
    role: Optional[Role] = None
    name: Optional[ShortText] = None
    rig_id: Optional[Id] = None


class Completed(Body):
    status: Literal["completed", "failed"]
    reason: Optional[Annotated[str, Field(max_length=2000)]] = None


class Waiting(Body):
    fired_at: EpochMs


class Done(Body):
    branch: Annotated[str, Field(min_length=1, max_length=512)]
    pr_url: Optional[Annotated[str, Field(max_length=2048)]] = None
    summary: Optional[Annotated[str, Field(max_length=16000)]] = None


class EvictionContext(Body):
    branch: Annotated[str, Field(min_length=1, max_length=512)]
    agent_name: ShortText
    saved_at: EpochMs


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


def parse_registry(data: Any) -> list[RegistryEntry]:
    """The registry body is a JSON array of :class:`RegistryEntry` (400 otherwise)."""
    if not isinstance(data, list):
        raise ApiError(400, "INVALID_REQUEST", "request body must be a JSON array")
    if len(data) > MAX_REGISTRY_ENTRIES:
        raise ApiError(400, "INVALID_REQUEST", f"at most {MAX_REGISTRY_ENTRIES} registry entries")
    entries = []
    for i, item in enumerate(data):
        try:
            entries.append(parse_model(RegistryEntry, item))
        except ApiError as e:
            raise ApiError(e.status, e.code, f"entry [{i}]: {e.message}") from None
    return entries
