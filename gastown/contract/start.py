"""The start request: what the worker (dispatch, registry) and the container agree an agent's
start is. One definition; the container API's body and the registry's entries are this model."""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from gastown.contract.agents import Role
from gastown.contract.env import ENV_KEY_PATTERN
from gastown.contract.git import GitAuthorEmail, GitAuthorName, check_git_ref, check_git_url
from gastown.core.ids import ID_PATTERN

AgentId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=512)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s]+$")]

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
    # The start point is a branch on origin (``origin/<name>``: a convoy's feature branch) to create
    # from ``origin/<default_branch>`` when it does not exist yet.
    create_start_point: bool = False
    lightweight: bool = False
    git_author_name: Optional[GitAuthorName] = None     # the town's (or rig's) commit identity, else the agent's
    git_author_email: Optional[GitAuthorEmail] = None
    disable_ai_coauthor: bool = False
    organization_id: Optional[Annotated[str, StringConstraints(max_length=128)]] = None
    # Reserved keys (``gastown.contract.env``) are dropped when the env is built, not refused here: the
    # worker refuses them in settings, and a container must still start an agent an old request names.
    env_vars: dict[Annotated[str, StringConstraints(pattern=ENV_KEY_PATTERN)],
                   Annotated[str, StringConstraints(max_length=65_536)]] = Field(default_factory=dict)

    @field_validator("git_url")
    @classmethod
    def _git_url_scheme(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else check_git_url(v)

    @field_validator("branch", "default_branch", "start_point")
    @classmethod
    def _git_ref(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else check_git_ref(v)
