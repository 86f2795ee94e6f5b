"""The drain's WIP save: the runtime commits and pushes a workspace an agent controlled, so nothing in
that workspace may run here (issue 13, item 6).

Why not ``git add && git commit && git push`` in the workspace: its ``.git/config`` is the agent's.
``core.fsmonitor`` there ran a command on ``git add``, hooks ran on commit and push, a ``filter``
driver (with ``* filter=…`` in ``.gitattributes``) runs on ``add``, and ``remote``/``url``/``http``
settings steer the push. So the save runs in a scratch bare repository the runtime creates: it
borrows the workspace's objects (``objects/info/alternates``), takes the workspace's files as its
work tree with its own index, and only its own config applies (a filter named by the workspace's
``.gitattributes`` has no driver there). The commit is pushed, unforced, to the rig's URL from the
start request, never to whatever ``origin`` says, with the hardened env of ``gastown.core.gitops``
plus the agent's credential helper.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

from gastown.contract.git import check_git_ref
from gastown.core import gitops
from supervisor.kilo_env import credential_wiring

WIP_MESSAGE = "WIP: container eviction save"
PUSH_TIMEOUT_S = 60.0
def _head(agent_git: Path, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The workspace's HEAD commit and branch (read only: neither runs anything of its config)."""
    commit = gitops.run(["--git-dir", str(agent_git), "rev-parse", "--verify", "-q", "HEAD^{commit}"], env=env,
                        ok=(0, 1)).stdout.strip() or None
    branch = gitops.run(["--git-dir", str(agent_git), "symbolic-ref", "-q", "--short", "HEAD"], env=env,
                        ok=(0, 1)).stdout.strip() or None
    return commit, branch


def save_workspace(workdir: Path, *, git_url: str | None, branch: str | None, child_env: Mapping[str, str],
                   scratch_parent: Path | None = None) -> str | None:
    """Commit every file of ``workdir`` on top of its HEAD and push it to ``branch`` of ``git_url``
    (the workspace's own branch when ``branch`` is None); the branch pushed, or None when there is
    nowhere to push. Raises ``gitops.GitError``."""
    agent_git = workdir / ".git"
    if not git_url or not (agent_git / "objects").is_dir():
        return None
    with tempfile.TemporaryDirectory(prefix="gastown-wip-", dir=scratch_parent) as tmp:
        home = Path(tmp)
        pairs, extra = credential_wiring(child_env)
        env = gitops.safe_env(home, protocols="http:https:file", extra_config=pairs, extra=extra)
        head, head_branch = _head(agent_git, env)
        target = check_git_ref(branch or head_branch or "")
        repo = home / "wip.git"
        gitops.run(["init", "-q", "--bare", str(repo)], env=env)
        (repo / "objects" / "info" / "alternates").write_text(f"{(agent_git / 'objects').resolve()}\n")
        work = {**env, "GIT_DIR": str(repo), "GIT_WORK_TREE": str(workdir), "GIT_INDEX_FILE": str(home / "index")}
        if head:
            gitops.run(["read-tree", head], env=work)
        gitops.run(["add", "-A", "--", "."], env=work, cwd=workdir)
        tree = gitops.run(["write-tree"], env=work).stdout.strip()
        if head and tree == gitops.run(["rev-parse", f"{head}^{{tree}}"], env=work).stdout.strip():
            commit = head  # nothing new on disk: push what is committed (a refinery's branch stays as reviewed)
        else:
            commit = gitops.run(["commit-tree", tree, *(["-p", head] if head else []), "-m", WIP_MESSAGE],
                                env=work).stdout.strip()
        gitops.run(["push", "-q", git_url, f"{commit}:refs/heads/{target}"], env={**env, "GIT_DIR": str(repo)},
                   timeout=PUSH_TIMEOUT_S)
    return target
