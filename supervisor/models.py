"""Request models of the container API (docs/contract.md §4): one pydantic model per request body."""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gastown.contract.start import ModelName, StartAgentRequest
from gastown.core.secrets import strip_secrets

__all__ = ["StartAgentRequest", "public_request", "MessageRequest", "ModelPatchRequest", "RefreshTokenRequest"]


def public_request(req: StartAgentRequest) -> dict:
    """The request cleaned by the one secret policy (``gastown.core.secrets``): what the registry
    may store, and what decides whether two starts ask for the same work. The worker URL is a
    runtime credential, not the agent's: it comes from the container's config on resume."""
    out, _ = strip_secrets(req.model_dump(mode="json"))
    out["env_vars"].pop("GASTOWN_API_URL", None)
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
    # Epoch seconds, finite: an ``Infinity`` held as the newest issue time made every later refresh "stale".
    issued_at: Optional[Annotated[float, Field(ge=0, le=4_102_444_800, allow_inf_nan=False)]] = None
