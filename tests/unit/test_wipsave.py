"""The drain's WIP save on a workspace an agent has booby-trapped (issue 13, item 6): an fsmonitor
command, hooks, a filter driver named by ``.gitattributes`` and an ``origin`` pointing elsewhere.
Before, ``git add``/``commit``/``push`` in the workspace ran every one of them."""
from __future__ import annotations

import subprocess
from pathlib import Path

from supervisor.wipsave import WIP_MESSAGE, save_workspace
from tests.gitrepos import bare_origin, show

GIT_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "a",
           "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


def test_the_wip_save_runs_nothing_of_the_workspace_and_pushes_to_the_rig(tmp_path: Path) -> None:
    origin = bare_origin(tmp_path)
    elsewhere = tmp_path / "elsewhere.git"
    subprocess.run(["git", "init", "-q", "--bare", str(elsewhere)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True, env=GIT_ENV)
    git(work, "checkout", "-q", "-b", "gt/toast/abc12345")
    base = git(work, "rev-parse", "HEAD").strip()
    ran = tmp_path / "ran"
    ran.mkdir()
    trap = lambda name: f"touch {ran / name}"  # noqa: E731
    git(work, "config", "core.fsmonitor", trap("fsmonitor"))
    git(work, "config", "filter.evil.clean", f"{trap('filter')}; cat")
    git(work, "config", "filter.evil.required", "true")
    git(work, "config", "remote.origin.url", str(elsewhere))
    git(work, "config", "url." + str(elsewhere) + ".insteadOf", str(origin))
    for hook in ("pre-commit", "post-commit", "pre-push", "commit-msg", "post-index-change"):
        path = work / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\n{trap(hook)}\n")
        path.chmod(0o755)
    (work / ".gitattributes").write_text("* filter=evil\n")
    (work / "half-done.txt").write_text("work in progress\n")
    child_env = {"GIT_AUTHOR_NAME": "Toast (gastown)", "GIT_AUTHOR_EMAIL": "polecat-1@gastown.local",
                 "GIT_COMMITTER_NAME": "Toast (gastown)", "GIT_COMMITTER_EMAIL": "polecat-1@gastown.local",
                 "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.sshCommand", "GIT_CONFIG_VALUE_0": trap("ssh")}

    pushed = save_workspace(work, git_url=str(origin), branch="gt/toast/abc12345", child_env=child_env)

    assert pushed == "gt/toast/abc12345"
    assert sorted(p.name for p in ran.iterdir()) == []
    assert show(origin, "gt/toast/abc12345:half-done.txt") == "work in progress\n"
    log = subprocess.run(["git", "--git-dir", str(origin), "log", "--format=%s%n%an%n%P", "-1", "gt/toast/abc12345"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert log == [WIP_MESSAGE, "Toast (gastown)", base]
    assert subprocess.run(["git", "--git-dir", str(elsewhere), "rev-parse", "-q", "--verify", "gt/toast/abc12345"],
                          capture_output=True).returncode != 0  # not where the workspace's origin pointed


def test_nothing_is_pushed_without_a_rig_url(tmp_path: Path) -> None:
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    assert save_workspace(work, git_url=None, branch="b", child_env={}) is None


def test_a_clean_workspace_pushes_its_commits_without_an_empty_wip_commit(tmp_path: Path) -> None:
    """An empty WIP commit moved the head of a branch under review although nothing had changed."""
    origin = bare_origin(tmp_path)
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True, env=GIT_ENV)
    (work / "done.txt").write_text("done\n")
    git(work, "add", "done.txt")
    git(work, "commit", "-qm", "the work")
    head = git(work, "rev-parse", "HEAD").strip()
    assert save_workspace(work, git_url=str(origin), branch="gt/x/1", child_env={}) == "gt/x/1"
    pushed = subprocess.run(["git", "--git-dir", str(origin), "rev-parse", "gt/x/1"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert pushed == head
