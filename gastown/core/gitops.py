"""git run by the runtime itself (merges, the forge), never by an agent: blocking, so call it in a thread.

Why a hardened env: the repositories it touches hold branches agents pushed, so nothing in them may
run code here. System and global config are ignored, hooks point at ``/dev/null``, fsmonitor is
off, no prompt, and the protocols git may speak are listed. Merges are computed with
``git merge-tree --write-tree`` (git >= 2.38): no worktree, no checkout, a conflict is a list of paths.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

GIT_TIMEOUT_S = 120.0
BOT_IDENTITY = {"GIT_AUTHOR_NAME": "gastown", "GIT_AUTHOR_EMAIL": "gastown@gastown.local",
                "GIT_COMMITTER_NAME": "gastown", "GIT_COMMITTER_EMAIL": "gastown@gastown.local"}
_HARDENING = (("core.hooksPath", "/dev/null"), ("core.fsmonitor", "false"), ("protocol.ext.allow", "never"),
              ("credential.helper", ""), ("core.askPass", ""))


class GitError(RuntimeError):
    """A git command that failed; the message carries git's stderr tail, never the env."""


def _global_config(home: Path) -> str:
    """The only global config: ``safe.directory = *``. Agents run as users of their own, so the
    repositories the runtime reads (a workspace at drain) belong to another user, and git (2.39)
    honours ``safe.directory`` only from global or system config. Safe here: nothing in a
    repository's config runs (the hardening above wins over it)."""
    path = Path(home) / ".gastown-runtime.gitconfig"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[safe]\n\tdirectory = *\n")
    return str(path)


def safe_env(home: Path, *, protocols: str = "http:https", extra_config: Sequence[tuple[str, str]] = (),
             extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child env built from nothing: PATH, a private HOME, no system config, a global config of one
    line (:func:`_global_config`, written in ``home``), the hardening
    config and ``extra_config`` as ``GIT_CONFIG_*`` entries (never argv, so a secret in them is not
    in ``/proc/<pid>/cmdline``)."""
    config = [*_HARDENING, *extra_config]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": _global_config(home), "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": protocols,
           "LC_ALL": "C", "GIT_CONFIG_COUNT": str(len(config)), **BOT_IDENTITY}
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    env.update(extra or {})
    return env


def run(args: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None, timeout: float = GIT_TIMEOUT_S,
        ok: Sequence[int] = (0,), stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, env=dict(env), capture_output=True, text=True,
                             timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {timeout:.0f}s") from None
    if out.returncode not in ok:
        raise GitError(f"git {args[0]} failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    return out


@dataclass(frozen=True)
class MergeTree:
    """The result of merging two commits: a tree when clean, else the conflicting paths."""

    tree: str | None
    conflicts: tuple[str, ...] = ()


def merge_tree(git_dir: Path, ours: str, theirs: str, env: Mapping[str, str]) -> MergeTree:
    out = run(["--git-dir", str(git_dir), "merge-tree", "--write-tree", "--name-only", "--no-messages",
               ours, theirs], env=env, ok=(0, 1))
    lines = out.stdout.splitlines()
    if out.returncode == 0:
        return MergeTree(lines[0].strip())
    return MergeTree(None, tuple(sorted({ln for ln in lines[1:] if ln.strip()}))[:50])


def commit_tree(git_dir: Path, tree: str, parents: Sequence[str], message: str, env: Mapping[str, str]) -> str:
    args = ["--git-dir", str(git_dir), "commit-tree", tree]
    for p in parents:
        args += ["-p", p]
    return run([*args, "-F", "-"], env=env, stdin=message).stdout.strip()


def rev(git_dir: Path, ref: str, env: Mapping[str, str]) -> str | None:
    out = run(["--git-dir", str(git_dir), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], env=env,
              ok=(0, 1))
    return out.stdout.strip() or None


def is_ancestor(git_dir: Path, ancestor: str, of: str, env: Mapping[str, str]) -> bool:
    out = run(["--git-dir", str(git_dir), "merge-base", "--is-ancestor", ancestor, of], env=env, ok=(0, 1))
    return out.returncode == 0


def commits_between(git_dir: Path, base: str, head: str, env: Mapping[str, str]) -> list[str]:
    """Commits on ``head`` not on ``base``, oldest first (what a PR or a rebase carries)."""
    out = run(["--git-dir", str(git_dir), "rev-list", "--reverse", "--no-merges", f"{base}..{head}"], env=env)
    return out.stdout.split()
