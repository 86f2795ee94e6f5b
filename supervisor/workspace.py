"""Per-agent git workspace. kilo wants a git repo: clone ``git_url`` when given, else ``git init``
with one empty commit. Runs in a thread (git is blocking) with a timeout on every command."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Mapping

from supervisor.models import StartAgentRequest

GIT_TIMEOUT_S = 120.0

# kilo keys sessions by project, and a repo's project id is its root-commit sha: a fixed identity
# and date make an agent's empty workspace the same project in every container, so a restored
# kilo.db's sessions are found again.
_ROOT_COMMIT_ENV = {
    "GIT_AUTHOR_NAME": "gastown", "GIT_AUTHOR_EMAIL": "gastown@gastown.local", "GIT_AUTHOR_DATE": "2025-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "gastown", "GIT_COMMITTER_EMAIL": "gastown@gastown.local", "GIT_COMMITTER_DATE": "2025-01-01T00:00:00+0000",
}


class WorkspaceError(RuntimeError):
    pass


def git(args: list[str], cwd: Path, env: Mapping[str, str], timeout: float = GIT_TIMEOUT_S) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=str(cwd), env=dict(env), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise WorkspaceError(f"git {args[0]} timed out after {timeout:.0f}s") from None
    if out.returncode != 0:
        raise WorkspaceError(f"git {args[0]} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return out.stdout


def prepare_workspace(req: StartAgentRequest, workdir: Path, env: Mapping[str, str]) -> Path:
    """Idempotent: an existing repo (restart, resume) is left as it is."""
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / ".git").exists():
        return workdir
    if req.git_url and not req.lightweight:
        git(["clone", "--quiet", "--", req.git_url, str(workdir)], workdir.parent, env)
        if req.branch:
            base = req.start_point or (f"origin/{req.default_branch}" if req.default_branch else None)
            checkout = ["checkout", "-q", "-B", req.branch] + ([base] if base else [])
            try:
                git(checkout, workdir, env)
            except WorkspaceError:
                git(["checkout", "-q", "-B", req.branch], workdir, env)
        return workdir
    git(["init", "-q", "-b", req.default_branch or "main"], workdir, env)
    git(["commit", "-q", "--allow-empty", "-m", f"gastown: workspace of {req.agent_id}"], workdir, {**env, **_ROOT_COMMIT_ENV})
    return workdir


def has_origin(workdir: Path, env: Mapping[str, str]) -> bool:
    try:
        return bool(git(["remote", "get-url", "origin"], workdir, env, timeout=10).strip())
    except WorkspaceError:
        return False
