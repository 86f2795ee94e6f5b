"""Local bare git repositories standing in for a rig's remote (no network: the origin is a path)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}


def bare_origin(tmp: Path, files: dict[str, str] | None = None) -> Path:
    """A bare repo with one commit on ``main`` holding ``files`` (default: a README). Shared with
    every user: agents run as users of their own (``supervisor.isolation``) and push here."""
    origin, seed = tmp / "origin.git", tmp / "seed"
    subprocess.run(["git", "init", "-q", "--bare", "--shared=0777", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(seed)], check=True, capture_output=True)
    for name, text in (files or {"README.md": "seed\n"}).items():
        (seed / name).write_text(text)
    for cmd in (["add", "."], ["commit", "-qm", "seed"], ["push", "-q", "origin", "main"]):
        subprocess.run(["git", "-C", str(seed), *cmd], check=True, env=GIT_ENV, capture_output=True)
    return origin


def push_branch(origin: Path, work: Path, branch: str, files: dict[str, str]) -> str:
    """Commit ``files`` on ``branch`` (from ``main``, or the branch when it exists) and push it; its sha."""
    if not work.exists():
        subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True, capture_output=True)
    run = lambda *a: subprocess.run(["git", "-C", str(work), *a], check=True, env=GIT_ENV, capture_output=True,  # noqa: E731
                                    text=True).stdout
    run("fetch", "-q", "origin")
    exists = run("ls-remote", "--heads", "origin", branch).strip()
    run("checkout", "-q", "-B", branch, f"origin/{branch}" if exists else "origin/main")
    for name, text in files.items():
        (work / name).write_text(text)
    run("add", ".")
    run("commit", "-qm", f"{branch}: {', '.join(files)}")
    run("push", "-q", "origin", f"HEAD:refs/heads/{branch}")
    return run("rev-parse", "HEAD").strip()


def show(origin: Path, spec: str) -> str:
    """``git show <spec>`` in a bare repo (e.g. ``main:README.md``)."""
    return subprocess.run(["git", "--git-dir", str(origin), "show", spec], check=True, capture_output=True,
                          text=True).stdout
