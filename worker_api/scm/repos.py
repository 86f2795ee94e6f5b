"""Whether a URL an agent reports belongs to its rig's repository (pure; no network).

The worker only polls and merges PRs of the rig's own repository: a ``pr_url`` an agent reports for
any other repository (a typo, a fork, a prompt-injected link) is refused and logged, never merged.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

_PR_PATH = re.compile(r"^/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/pull/[0-9]{1,9}(?:/.*)?$")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9_.-]+@([A-Za-z0-9_.-]+):(.+)$")  # git@github.com:owner/repo.git


def parse_remote(url: str) -> tuple[str, str, str] | None:
    """(scheme, host[:port], path) of a git remote, the host lower case, the path without a leading
    or trailing ``/`` or a trailing ``.git``; an scp-like ``git@host:owner/repo`` is scheme ``ssh``."""
    m = _SCP_LIKE.match(url)
    if m:
        scheme, host, path = "ssh", m.group(1).lower(), m.group(2)
    else:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a port that is not a number
        except ValueError:  # e.g. an unbalanced "[" in the host
            return None
        if not parts.scheme or not parts.hostname:
            return None
        scheme, host, path = parts.scheme, parts.hostname.lower() + (f":{port}" if port else ""), parts.path
    path = path.strip("/")
    path = path[:-4] if path.endswith(".git") else path
    return (scheme, host, path) if path else None


def host_and_repo(git_url: str) -> tuple[str, str] | None:
    """(host, ``owner/repo``) of a git remote, lower case: what a PR URL of it names."""
    remote = parse_remote(git_url)
    return (remote[1].split(":")[0], remote[2].lower()) if remote else None


def pr_of_repo(pr_url: str, git_url: str) -> bool:
    """True when ``pr_url`` is a pull request (``https://<host>/<owner>/<repo>/pull/<n>``) of the
    repository ``git_url`` names; ``http://`` only when the repository itself is served over plain
    HTTP (a local forge)."""
    try:
        parts = urlsplit(pr_url)
    except ValueError:
        return False
    m = _PR_PATH.match(parts.path)
    repo = host_and_repo(git_url)
    remote = parse_remote(git_url)
    schemes = ("https", "http") if remote is not None and remote[0] == "http" else ("https",)
    if parts.scheme not in schemes or not parts.hostname or m is None or repo is None:
        return False
    return (parts.hostname.lower(), f"{m.group(1)}/{m.group(2)}".lower()) == repo
