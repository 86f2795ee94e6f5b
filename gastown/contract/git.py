"""Git names both sides accept: they end up in ``git`` argv, so an option-like or odd one is refused.

A rig's ``git_url`` is fetched by the worker (merges) and the container (workspaces), so it is a
request they make on a tenant's behalf: only ``https://`` and ``http://``, never to a link-local
address (cloud metadata at 169.254.169.254), never with credentials in it. A path, ``file://`` or a
loopback host is a development setup (the local forge, test repositories): allowed only where
``GASTOWN_ALLOW_LOCAL_GIT=1`` is set (``gastown up`` and the test suite set it). Host names are not
resolved here; the address literal is what is checked.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

ALLOW_LOCAL_ENV = "GASTOWN_ALLOW_LOCAL_GIT"
_URL_PREFIXES = ("https://", "http://")
_LOCAL_PREFIXES = ("file://", "/")
_REF_FORBIDDEN = " ~^:?*[\\"


def local_git_allowed() -> bool:
    return os.environ.get(ALLOW_LOCAL_ENV) == "1"


def _host_kind(host: str) -> str:
    """``link-local``, ``loopback`` or ``ok`` for the URL's host (an address literal or a name)."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return "loopback"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "ok"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return "link-local"
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"
    return "ok"


def check_git_url(v: str) -> str:
    local = local_git_allowed()
    if v.startswith("-"):
        raise ValueError("git_url must not start with '-'")
    if v.startswith(_LOCAL_PREFIXES):
        if not local:
            raise ValueError(f"git_url must be an https:// or http:// URL (a path or file:// only with {ALLOW_LOCAL_ENV}=1)")
        return v
    if not v.startswith(_URL_PREFIXES):
        raise ValueError("git_url must be an https:// or http:// URL")
    try:
        parts = urlsplit(v)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise ValueError("git_url is not a valid URL") from None
    if parts.password is not None or parts.username is not None:
        raise ValueError("git_url must not embed credentials: git gets the rig's credential from the "
                         "credential helper (PUT /api/towns/{t}/rigs/{r}/scm)")
    kind = _host_kind(host) if host else "missing"
    if kind == "missing":
        raise ValueError("git_url has no host")
    if kind == "link-local":
        raise ValueError("git_url may not point at a link-local address")
    if kind == "loopback" and not local:
        raise ValueError(f"git_url may point at this machine only with {ALLOW_LOCAL_ENV}=1 (development)")
    return v


def check_git_ref(v: str) -> str:
    if v.startswith("-") or ".." in v or any(c in v for c in _REF_FORBIDDEN):
        raise ValueError("not a valid git ref name")
    return v


# The same rules as pydantic types; the ``pattern`` only documents (the check function decides).
GitUrl = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra={"pattern": "^(https?://|file://|/)"}),
                   AfterValidator(check_git_url)]
GitRef = Annotated[str, Field(min_length=1, max_length=200, json_schema_extra={"pattern": r"^[^-\s~^:?*\[\\][^\s~^:?*\[\\]*$"}),
                   AfterValidator(check_git_ref)]


# A commit identity: git strips or refuses angle brackets and line breaks in names and emails.
GitAuthorName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^<>\x00-\x1f\x7f]+$")]
GitAuthorEmail = Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[^<>\s@]+@[^<>\s@]+$")]
