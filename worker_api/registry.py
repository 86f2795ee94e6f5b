"""Guard for the container registry: it must never hold a secret.

The reference serialised each agent's full env, tokens included, into durable storage (§4.1,
bug 32). Here the container sends the StartAgentRequest *without* secrets (fresh tokens reach a new
container through ``/refresh-token`` and start requests), and the worker refuses anything that
looks like one rather than silently storing it:
* a key (at any depth, ``request.env_vars`` included) that names a secret: token, secret,
  password, api key, credential, private key, auth (not "author"), cookie, or a ``PAT`` segment;
* a string value that carries one: credentials in a URL, well-known token prefixes, a JWT.
Only the offending *path* is reported, never the value.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from gastown.core.http import ApiError
from worker_api.models import RegistryEntry

_SECRET_KEY = re.compile(
    r"token|secret|passw(?:or)?d|api[_-]?key|credential|private[_-]?key|authorization|auth(?!or)|cookie"
    r"|(?:^|[_-])pat(?:$|[_-])",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"  # scheme://user:password@host
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI/Anthropic-style API keys
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.",  # JWT
    re.IGNORECASE,
)


def _walk(value: Any, path: str) -> Iterator[tuple[str, str | None, Any]]:
    """Yield ``(path, key, value)`` for every node below ``value``."""
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}"
            yield sub, str(k), v
            yield from _walk(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            sub = f"{path}[{i}]"
            yield sub, None, v
            yield from _walk(v, sub)


def find_secret(request: dict[str, Any]) -> str | None:
    """The path of the first secret-looking key or value in ``request``, else None."""
    for path, key, value in _walk(request, "request"):
        if key is not None and _SECRET_KEY.search(key):
            return path
        if isinstance(value, str) and _SECRET_VALUE.search(value):
            return path
    return None


def check_entries(entries: list[RegistryEntry]) -> list[dict[str, Any]]:
    """Validate the entries and return them as plain dicts ready to store.

    400 ``INVALID_REQUEST`` when ``request.env_vars`` is not a string map; 400
    ``SECRET_IN_REGISTRY`` when anything looks like a secret.
    """
    out = []
    for i, entry in enumerate(entries):
        env = entry.request.get("env_vars")
        if env is not None and not (
            isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise ApiError(400, "INVALID_REQUEST", f"entry [{i}]: request.env_vars must map strings to strings")
        where = find_secret(entry.request)
        if where is not None:
            raise ApiError(
                400,
                "SECRET_IN_REGISTRY",
                f"entry [{i}]: {where} looks like a secret; the registry must not store secrets",
                entry=i,
                path=where,
            )
        out.append({"agent_id": entry.agent_id, "request": entry.request, "workdir": entry.workdir})
    return out
