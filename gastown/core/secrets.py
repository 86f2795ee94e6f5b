"""The one secret policy: which keys and values are secrets, for every side.

The container filters what it reports (registry entries, start requests it compares), the worker
cleans what it stores, and the logger redacts what it prints, all with these two patterns. It sits
in ``core`` (not ``contract``) because the logger, below every contract, needs it too.

Cleaning never rejects a whole document: a secret-named key is dropped with its value, a secret
inside a string is cut out (credentials in a URL are removed, a token becomes ``[redacted]``), and
the *paths* of what was removed are returned so the caller can log them (never the values).
"""
from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

SECRET_KEY = re.compile(
    r"token|secret|passw(?:or)?d|api[_-]?key|credential|private[_-]?key|authorization|auth(?!or)|cookie"
    r"|(?:^|[_-])pat(?:$|[_-])",
    re.IGNORECASE,
)
# user:password@ only: a bare user (ssh://git@host) is an identity, not a secret, and cloning needs it.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]*@", re.IGNORECASE)
_TOKEN_VALUE = re.compile(
    r"\bgh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI/Anthropic-style API keys
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",  # JWT
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    return SECRET_KEY.search(key) is not None


def scrub_value(text: str) -> str:
    """``text`` without URL credentials (``https://user:pw@host`` → ``https://host``) and tokens."""
    text = _URL_CREDENTIALS.sub(lambda m: m.group("scheme"), text)
    return _TOKEN_VALUE.sub(REDACTED, text)


def has_secret_value(text: str) -> bool:
    return _URL_CREDENTIALS.search(text) is not None or _TOKEN_VALUE.search(text) is not None


def strip_secrets(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` with every secret-named key dropped and every secret in a string cut out, and the
    paths of what was removed (``env_vars.GH_PAT``, ``git_url``)."""
    removed: list[str] = []

    def walk(v: Any, at: str) -> Any:
        if isinstance(v, dict):
            out = {}
            for k, item in v.items():
                sub = f"{at}.{k}" if at else str(k)
                if is_secret_key(str(k)):
                    removed.append(sub)
                    continue
                out[k] = walk(item, sub)
            return out
        if isinstance(v, list):
            return [walk(item, f"{at}[{i}]") for i, item in enumerate(v)]
        if isinstance(v, str) and has_secret_value(v):
            removed.append(at)
            return scrub_value(v)
        return v

    return walk(value, path), removed
