"""Guard for the container registry: it must never hold a secret, and one secret never costs the rest.

The original serialised each agent's full env, tokens included, into durable storage (docs/original-system.md §4.1,
bug 32). Here the container sends the StartAgentRequest already cleaned, and the worker cleans it
again with the same policy (``gastown.core.secrets``) rather than trusting it: a secret-named key
(``GH_PAT``, ``SESSION_COOKIE``) is dropped with its value, a secret inside a value (credentials in
a ``git_url``, a token in a prompt) is cut out, and every other field is kept. Only the *paths* of
what was removed are reported and logged, never the values.
"""
from __future__ import annotations

import json
from typing import Any

from gastown.contract.env import is_reserved_env_key
from gastown.contract.start import StartAgentRequest
from gastown.core.http import ApiError, parse_model
from gastown.core.jsonlog import get_logger
from gastown.core.secrets import strip_secrets
from worker_api.models import RegistryEntry
from worker_api.tokens import ContainerTokens

log = get_logger("worker_api.registry")
MAX_ENTRY_BYTES = 512 * 1024  # a start request's prompt and system prompt are at most 200 000 characters each
PURPOSE = "registry"


def _check_shape(i: int, entry: RegistryEntry) -> None:
    """Bounded in size, env a string map (before the secret policy walks it)."""
    env = entry.request.get("env_vars")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise ApiError(400, "INVALID_REQUEST", f"entry [{i}]: request.env_vars must map strings to strings")
    if len(json.dumps(entry.request)) > MAX_ENTRY_BYTES:
        raise ApiError(400, "INVALID_REQUEST", f"entry [{i}]: request larger than {MAX_ENTRY_BYTES} bytes")


def _check_contract(i: int, agent_id: str, request: dict[str, Any], town_id: str) -> None:
    """A start request of this town's agent by the contract's model (what boot hydration resumes)."""
    try:
        req = parse_model(StartAgentRequest, request)
    except ApiError as e:
        raise ApiError(e.status, e.code, f"entry [{i}]: request: {e.message}") from None
    if req.town_id != town_id or req.agent_id != agent_id:
        raise ApiError(400, "INVALID_REQUEST", f"entry [{i}]: request names another town or agent")


def check_entries(entries: list[RegistryEntry], town_id: str,
                  tokens: ContainerTokens) -> tuple[list[dict[str, Any]], list[str]]:
    """The entries as plain dicts ready to store, cleaned of secrets and sealed, and the removed
    paths (``[0].request.env_vars.GH_PAT``). 400 ``INVALID_REQUEST`` when an entry is not a start
    request of this town's agent (the contract's model) or is too large."""
    out, removed = [], []
    for i, entry in enumerate(entries):
        _check_shape(i, entry)
        request, paths = strip_secrets(entry.request, f"[{i}].request")
        _check_contract(i, entry.agent_id, request, town_id)
        env = request.get("env_vars") or {}
        for key in [k for k in env if is_reserved_env_key(k)]:  # runtime-owned: never resumed from an entry
            del env[key]
            paths.append(f"[{i}].request.env_vars.{key}")
        removed += paths
        stored = {"agent_id": entry.agent_id, "request": request, "workdir": entry.workdir}
        out.append({**stored, "seal": tokens.seal(PURPOSE, town_id, stored)})
    return out, removed


def sealed_entries(stored: list[Any], town_id: str, tokens: ContainerTokens) -> list[dict[str, Any]]:
    """What a booting container may resume: only entries the worker sealed itself. An entry written
    to the store some other way (a forged row, an old unsealed one) is dropped and logged."""
    out = []
    for entry in stored:
        if not isinstance(entry, dict):
            continue
        body = {k: entry.get(k) for k in ("agent_id", "request", "workdir")}
        if not tokens.seal_matches(PURPOSE, town_id, body, entry.get("seal")):
            log.warning("registry.forged_entry", town=town_id, agent_id=str(body["agent_id"])[:64])
            continue
        out.append(body)
    return out
