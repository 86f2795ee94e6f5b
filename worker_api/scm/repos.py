"""Whether a URL an agent reports belongs to its rig's repository (pure; no network).

The worker only polls and merges PRs of the rig's own repository: a ``pr_url`` an agent reports for
any other repository (a typo, a fork, a prompt-injected link) is refused and logged, never merged.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

_PR_PATH = re.compile(r"^/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/pull/[0-9]{1,9}(?:/.*)?$")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9_.-]+@([A-Za-z0-9_.-]+):(.+)$")  # git@github.com:owner/repo.git


def host_and_repo(git_url: str) -> tuple[str, str] | None:
    """(host, ``owner/repo``) of a git remote, lower case, without ``.git`` or a trailing ``/``."""
    m = _SCP_LIKE.match(git_url)
    try:
        host, path = (m.group(1), m.group(2)) if m else (urlsplit(git_url).hostname, urlsplit(git_url).path)
    except ValueError:
        return None
    if not host or not path:
        return None
    path = path.strip("/")
    path = path[:-4] if path.endswith(".git") else path
    return host.lower(), path.lower()


def pr_of_repo(pr_url: str, git_url: str) -> bool:
    """True when ``pr_url`` is a pull request (``https://<host>/<owner>/<repo>/pull/<n>``) of the
    repository ``git_url`` names."""
    try:
        parts = urlsplit(pr_url)
    except ValueError:
        return False
    m = _PR_PATH.match(parts.path)
    repo = host_and_repo(git_url)
    if parts.scheme != "https" or not parts.hostname or m is None or repo is None:
        return False
    return (parts.hostname.lower(), f"{m.group(1)}/{m.group(2)}".lower()) == repo
