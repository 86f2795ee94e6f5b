"""Per-agent git workspace. kilo wants a git repo: clone ``git_url`` when given, else ``git init``
with one empty commit. Runs in a thread (git is blocking) with a timeout on every command.

One mirror per rig (``$GASTOWN_DATA_DIR/rigs/<rig_id>/mirror.git``, a bare clone refreshed under a
per-rig lock) holds the rig's objects; each agent's workspace is its own clone that borrows them
(``git clone --reference``: alternates), so a second agent of the rig downloads nothing it does not
lack. Not ``git worktree``: a worktree cannot check out a branch another worktree holds, and the
refinery and rework polecats must check out the branch the first polecat still has checked out.
"""
from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

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


@dataclass(frozen=True)
class GitEnv:
    """The env git runs with, and as whom: ``run_as`` (``setpriv`` argv, ``supervisor.isolation``)
    for git in an agent's workspace, whose config and hooks are the agent's to write; the rig's
    mirror is the runtime's own (empty ``run_as``)."""

    vars: Mapping[str, str]
    run_as: Sequence[str] = ()

    def plus(self, extra: Mapping[str, str]) -> "GitEnv":
        return GitEnv({**self.vars, **extra}, self.run_as)


def git(args: list[str], cwd: Path, env: GitEnv, timeout: float = GIT_TIMEOUT_S) -> str:
    try:
        out = subprocess.run(
            [*env.run_as, "git", *args], cwd=str(cwd), env=dict(env.vars), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise WorkspaceError(f"git {args[0]} timed out after {timeout:.0f}s") from None
    if out.returncode != 0:
        raise WorkspaceError(f"git {args[0]} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return out.stdout


_MIRROR_LOCKS: dict[Path, threading.Lock] = {}
_MIRROR_LOCKS_GUARD = threading.Lock()


def refresh_mirror(mirror: Path, git_url: str, env: GitEnv) -> None:
    """Create or fetch the rig's bare mirror (one at a time per mirror: concurrent fetches into one
    repository race on its ref locks). Never gc'd with pruning: agents' clones borrow its objects."""
    with _MIRROR_LOCKS_GUARD:
        lock = _MIRROR_LOCKS.setdefault(mirror, threading.Lock())
    with lock:
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            git(["clone", "--quiet", "--bare", "--", git_url, str(mirror)], mirror.parent, env)
            git(["config", "gc.auto", "0"], mirror, env)
            return
        if git(["remote", "get-url", "origin"], mirror, env, timeout=10).strip() != git_url:
            git(["remote", "set-url", "origin", git_url], mirror, env, timeout=10)
        git(["fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/heads/*"], mirror, env)


def prepare_workspace(req: StartAgentRequest, workdir: Path, env: Mapping[str, str],
                      mirror: Path | None = None, run_as: Sequence[str] = (),
                      mirror_env: Mapping[str, str] | None = None) -> Path:
    """The agent's repo on the requested branch. A new workspace is cloned (borrowing the rig
    ``mirror``'s objects when given) or initialised when there is no ``git_url``; a reused one
    (restart, re-dispatch) is fetched first. Committed work on the branch is never thrown away
    (see :func:`switch_branch`). Every git in ``workdir`` runs as ``run_as`` (the agent); the mirror
    is the runtime's, fetched with ``mirror_env`` (hardened: nothing of the agent's config)."""
    workdir.mkdir(parents=True, exist_ok=True)
    remote = bool(req.git_url) and not req.lightweight
    if remote and mirror is not None:
        refresh_mirror(mirror, str(req.git_url), GitEnv(env if mirror_env is None else mirror_env))
    return _prepare(req, workdir, GitEnv(env, tuple(run_as)), mirror if remote else None)


def _prepare(req: StartAgentRequest, workdir: Path, env: GitEnv, mirror: Path | None) -> Path:
    remote = bool(req.git_url) and not req.lightweight
    if (workdir / ".git").exists():
        if remote and has_origin(workdir, env):
            git(["fetch", "--quiet", "--prune", "origin"], workdir, env)
            switch_branch(req, workdir, env)
        return workdir
    if remote:
        reference = ["--reference", str(mirror)] if mirror is not None else []
        git(["clone", "--quiet", *reference, "--", req.git_url, str(workdir)], workdir.parent, env)
        switch_branch(req, workdir, env)
        return workdir
    git(["init", "-q", "-b", req.default_branch or "main"], workdir, env)
    git(["commit", "-q", "--allow-empty", "-m", f"gastown: workspace of {req.agent_id}"], workdir, env.plus(_ROOT_COMMIT_ENV))
    return workdir


def _resolves(ref: str, workdir: Path, env: GitEnv) -> bool:
    try:
        git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], workdir, env, timeout=10)
        return True
    except WorkspaceError:
        return False


def _create_remote_branch(start_point: str, source: str, workdir: Path, env: GitEnv) -> None:
    """Create ``origin/<name>`` from ``source`` on the remote (a convoy's feature branch, made by
    the first agent that needs it). A push another agent won is fine: the fetch picks its branch up."""
    name = start_point.removeprefix("origin/")
    if name == start_point or not _resolves(source, workdir, env):
        return
    try:
        git(["push", "--quiet", "origin", f"{source}:refs/heads/{name}"], workdir, env)
    except WorkspaceError:
        pass
    git(["fetch", "--quiet", "origin"], workdir, env)


def switch_branch(req: StartAgentRequest, workdir: Path, env: GitEnv) -> None:
    """Put the workspace on ``req.branch`` (nothing to do without one).

    * The branch exists on origin: check it out tracking ``origin/<branch>`` (a local copy is kept
      and fast-forwarded when it is behind; one with commits origin lacks is left as it is).
    * It does not: a local branch of that name is kept (its work is unpushed); otherwise it is
      created from ``start_point``, else ``origin/<default_branch>``, which must resolve: a base
      that does not is an error, never a silent start from whatever HEAD is.
    """
    branch = req.branch
    if not branch:
        return
    local = _resolves(f"refs/heads/{branch}", workdir, env)
    if _resolves(f"refs/remotes/origin/{branch}", workdir, env):
        if local:
            git(["checkout", "-q", branch], workdir, env)
            try:
                git(["merge", "--ff-only", "-q", f"origin/{branch}"], workdir, env)
            except WorkspaceError:
                pass  # ahead of or diverged from origin: the local commits stay
        else:
            git(["checkout", "-q", "-b", branch, "--track", f"origin/{branch}"], workdir, env)
        return
    if local:
        git(["checkout", "-q", branch], workdir, env)
        return
    base = req.start_point or (f"origin/{req.default_branch}" if req.default_branch else None)
    if base is None:
        git(["checkout", "-q", "-b", branch], workdir, env)
        return
    if not _resolves(base, workdir, env) and req.create_start_point and req.start_point and req.default_branch:
        _create_remote_branch(req.start_point, f"origin/{req.default_branch}", workdir, env)
    if not _resolves(base, workdir, env):
        raise WorkspaceError(f"start point {base!r} of branch {branch!r} does not resolve in {req.git_url}")
    git(["checkout", "-q", "--no-track", "-b", branch, base], workdir, env)


def has_origin(workdir: Path, env: GitEnv) -> bool:
    try:
        return bool(git(["remote", "get-url", "origin"], workdir, env, timeout=10).strip())
    except WorkspaceError:
        return False
