"""The direct strategy's merge, done by the worker through git: never on an agent's word.

After the refinery approves a merge request, the worker fetches the MR's branch and its target into
a throwaway bare repository, merges them with ``git merge-tree`` (no checkout: nothing an agent
pushed is ever run here) and pushes the merge commit to the target without force, so a push that
landed meanwhile makes ours fail and we merge again on top of it. A conflict is reported with its
paths and becomes a rework bead. The rig's token goes in an ``http.extraHeader`` through the child's
env (never argv, never a URL); a ``file://`` remote is allowed only for rigs configured with one
(development). Blocking: call :func:`merge_branch` in a thread.
"""
from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from gastown.core import gitops

PUSH_RETRIES = 3


@dataclass(frozen=True)
class BranchMerge:
    outcome: str                   # merged | already_merged | conflict | missing_branch
    sha: str | None = None         # the target's new head (merged) or the branch head (already merged)
    conflicts: tuple[str, ...] = ()
    detail: str = ""


def _env(git_url: str, token: str | None, home: Path) -> dict[str, str]:
    scheme = urlsplit(git_url).scheme.lower()
    protocols = "file" if scheme == "file" or git_url.startswith("/") else "http:https"
    config = []
    if token and scheme in ("http", "https"):
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    return gitops.safe_env(home, protocols=protocols, extra_config=config)


def _fetch(bare: Path, git_url: str, branch: str, env: dict[str, str]) -> str | None:
    """The remote branch's head after fetching it, or None when the remote has no such branch."""
    out = gitops.run(["--git-dir", str(bare), "fetch", "--quiet", "--no-tags", git_url,
                      f"+refs/heads/{branch}:refs/remotes/origin/{branch}"], env=env, ok=(0, 128))
    if out.returncode:
        if "couldn't find remote ref" in out.stderr:
            return None
        raise gitops.GitError(f"git fetch failed: {out.stderr.strip()[-300:]}")
    return gitops.rev(bare, f"refs/remotes/origin/{branch}", env)


Merger = Callable[..., BranchMerge]  # merge_branch's signature; injected where no remote exists (simulations)


def merge_branch(git_url: str, token: str | None, *, branch: str, target: str, message: str) -> BranchMerge:
    """Merge ``branch`` into ``target`` on the remote. Raises ``GitError`` for what a retry may fix
    (network, auth, a target that keeps moving)."""
    with tempfile.TemporaryDirectory(prefix="gastown-merge-") as td:
        home = Path(td)
        bare = home / "repo.git"
        env = _env(git_url, token, home)
        gitops.run(["init", "--quiet", "--bare", str(bare)], env=env)
        head = _fetch(bare, git_url, branch, env)
        if head is None:
            return BranchMerge("missing_branch", detail=f"branch {branch!r} is not on the remote")
        for _ in range(PUSH_RETRIES):
            base = _fetch(bare, git_url, target, env)
            if base is None:
                return BranchMerge("missing_branch", detail=f"target {target!r} is not on the remote")
            if gitops.is_ancestor(bare, head, base, env):
                return BranchMerge("already_merged", sha=base)
            tree = gitops.merge_tree(bare, base, head, env)
            if tree.tree is None:
                return BranchMerge("conflict", conflicts=tree.conflicts,
                                   detail=f"{branch} conflicts with {target}: {', '.join(tree.conflicts) or '?'}")
            new = gitops.commit_tree(bare, tree.tree, [base, head], message, env)
            pushed = gitops.run(["--git-dir", str(bare), "push", "--quiet", "--porcelain", git_url,
                                 f"{new}:refs/heads/{target}"], env=env, ok=(0, 1))
            if pushed.returncode == 0:
                return BranchMerge("merged", sha=new)
            if "rejected" not in pushed.stdout + pushed.stderr:
                raise gitops.GitError(f"git push failed: {pushed.stderr.strip()[-300:]}")
        raise gitops.GitError(f"{target} kept moving: gave up after {PUSH_RETRIES} tries")
