"""Guard for the container registry: it must never hold a secret, and one secret never costs the rest.

The original serialised each agent's full env, tokens included, into durable storage (docs/original-system.md §4.1,
bug 32). Here the container sends the StartAgentRequest already cleaned, and the worker cleans it
again with the same policy (``gastown.core.secrets``) rather than trusting it: a secret-named key
(``GH_PAT``, ``SESSION_COOKIE``) is dropped with its value, a secret inside a value (credentials in
a ``git_url``, a token in a prompt) is cut out, and every other field is kept. Only the *paths* of
what was removed are reported and logged, never the values.
"""
from __future__ import annotations

from typing import Any

from gastown.core.http import ApiError
from gastown.core.secrets import strip_secrets
from worker_api.models import RegistryEntry


def check_entries(entries: list[RegistryEntry]) -> tuple[list[dict[str, Any]], list[str]]:
    """The entries as plain dicts ready to store, cleaned of secrets, and the removed paths
    (``[0].request.env_vars.GH_PAT``). 400 ``INVALID_REQUEST`` when ``request.env_vars`` is not a
    string map."""
    out, removed = [], []
    for i, entry in enumerate(entries):
        env = entry.request.get("env_vars")
        if env is not None and not (
            isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise ApiError(400, "INVALID_REQUEST", f"entry [{i}]: request.env_vars must map strings to strings")
        request, paths = strip_secrets(entry.request, f"[{i}].request")
        removed += paths
        out.append({"agent_id": entry.agent_id, "request": request, "workdir": entry.workdir})
    return out, removed
