"""Request models of the container API (SPEC §4): one pydantic model per request body."""
from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from gastown.core.ids import ID_PATTERN

AgentId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=512)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s]+$")]

# Keys of env_vars the runtime owns: a request may not override them in the child env.
RESERVED_ENV_KEYS = frozenset(
    {
        "HOME", "PATH", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME",
        "KILO_CONFIG_CONTENT", "KILO_SERVER_PASSWORD", "KILO_PARENT_PID", "KILO_DB",
        "GASTOWN_AGENT_ID", "GASTOWN_AGENT_ROLE", "GASTOWN_TOWN_ID", "GASTOWN_RIG_ID",
        "GASTOWN_API_URL", "GASTOWN_CONTAINER_TOKEN", "GASTOWN_CONTROL_TOKEN",
    }
)


class Role(str, Enum):
    mayor = "mayor"
    polecat = "polecat"
    refinery = "refinery"
    triage = "triage"


class StartAgentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    agent_id: AgentId
    town_id: AgentId
    rig_id: AgentId
    role: Role
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    prompt: Annotated[str, StringConstraints(max_length=200_000)]
    model: ModelName
    small_model: Optional[ModelName] = None
    system_prompt: Optional[Annotated[str, StringConstraints(max_length=200_000)]] = None
    identity: Optional[Annotated[str, StringConstraints(max_length=256)]] = None
    git_url: Optional[Annotated[str, StringConstraints(min_length=1, max_length=2048)]] = None
    branch: Optional[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = None
    default_branch: Optional[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = None
    start_point: Optional[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = None
    lightweight: bool = False
    organization_id: Optional[Annotated[str, StringConstraints(max_length=128)]] = None
    env_vars: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], Annotated[str, StringConstraints(max_length=65_536)]] = Field(default_factory=dict)

    @field_validator("git_url")
    @classmethod
    def _git_url_scheme(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        if v.startswith("-") or not (
            v.startswith(("https://", "http://", "ssh://", "git@", "file://")) or v.startswith("/")
        ):
            raise ValueError("git_url must be an https/ssh/file URL or an absolute path")
        return v

    @field_validator("branch", "default_branch", "start_point")
    @classmethod
    def _git_ref(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (v.startswith("-") or ".." in v or any(c in v for c in " ~^:?*[\\")):
            raise ValueError("not a valid git ref name")
        return v


_SECRET_KEY = re.compile(r"(token|secret|password|passwd|credential|api_?key|private)", re.I)
_CREDENTIAL_KEYS = frozenset({"GASTOWN_API_URL"})


def public_request(req: StartAgentRequest) -> dict:
    """The request minus every secret-looking env var (and the worker credentials): what the
    registry may store, and what decides whether two starts ask for the same work."""
    out = req.model_dump(mode="json")
    out["env_vars"] = {k: v for k, v in req.env_vars.items() if not _SECRET_KEY.search(k) and k not in _CREDENTIAL_KEYS}
    return out


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=200_000)]


class ModelPatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: ModelName
    small_model: Optional[ModelName] = None
    organization_id: Optional[Annotated[str, StringConstraints(max_length=128)]] = None


class RefreshTokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    issued_at: Optional[float] = None
