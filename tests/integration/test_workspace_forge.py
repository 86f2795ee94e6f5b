"""Workspaces against the local forge over HTTP (issue 11, item 3): the branch a start asks for is
the branch the agent works on, a reused workspace is fetched and switched without losing committed
work, and a start point that does not resolve is an error instead of a silent start from HEAD."""
from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from gastown.local.forge import Forge
from supervisor.models import StartAgentRequest
from supervisor.workspace import WorkspaceError, prepare_workspace
from tests.conftest import start_body

IDENTITY = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x"}


@pytest.fixture
async def forge(tmp_path: Path):  # noqa: ANN201
    async with Forge(tmp_path / "forge") as f:
        yield f


def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
            **IDENTITY}


def request(url: str, **kw: str) -> StartAgentRequest:
    return StartAgentRequest.model_validate(start_body(git_url=url, default_branch="main", **kw))


def rev(workdir: Path, ref: str = "HEAD") -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=workdir, capture_output=True, text=True, check=True).stdout.strip()


def commit(workdir: Path, name: str, tmp_path: Path) -> str:
    (workdir / name).write_text(name)
    for cmd in (["add", name], ["commit", "-qm", f"local {name}"]):
        subprocess.run(["git", *cmd], cwd=workdir, env=env(tmp_path), check=True, capture_output=True)
    return rev(workdir)


async def prepare(req: StartAgentRequest, workdir: Path, tmp_path: Path, token: str | None = None,
                  mirror: Path | None = None) -> None:
    """In a thread: the forge serves on this loop. ``token``: git's credential helper answers with it."""
    helper = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "credential.helper",
              "GIT_CONFIG_VALUE_0": f"!f() {{ echo username=a; echo password={token}; }}; f"} if token else {}
    await asyncio.to_thread(prepare_workspace, req, workdir, {**env(tmp_path), **helper}, mirror)


def own_objects(workdir: Path) -> int:
    """Objects a clone holds itself (loose and packed), not borrowed through alternates."""
    out = subprocess.run(["git", "count-objects", "-v"], cwd=workdir, capture_output=True, text=True, check=True).stdout
    counts = dict(line.split(": ") for line in out.splitlines())
    return int(counts["count"]) + int(counts["in-pack"])


async def test_two_agents_of_one_rig_share_the_rigs_mirror_instead_of_cloning_twice(forge: Forge, tmp_path: Path):
    """Each agent cloned the rig's whole repository from the network into its own workspace."""
    url = forge.create_repo("app", private=False, files={f"f{i}.txt": f"{i}\n" for i in range(20)})
    mirror = tmp_path / "rigs" / "rig-1" / "mirror.git"
    await prepare(request(url, branch="gt/a/1"), tmp_path / "a", tmp_path, mirror=mirror)
    await prepare(request(url, branch="gt/b/2"), tmp_path / "b", tmp_path, mirror=mirror)
    for ws in (tmp_path / "a", tmp_path / "b"):
        assert (ws / ".git/objects/info/alternates").read_text().strip() == str(mirror / "objects")
        assert own_objects(ws) == 0 and (ws / "f7.txt").read_text() == "7\n"
    # A branch pushed after the mirror was made reaches the next agent through the mirror's refresh.
    tip = forge.commit("app", "gt/a/1", {"a.txt": "a\n"}, message="pushed by a")
    await prepare(request(url, branch="gt/a/1"), tmp_path / "c", tmp_path, mirror=mirror)
    assert rev(tmp_path / "c") == tip and own_objects(tmp_path / "c") == 0


async def test_a_branch_that_exists_on_origin_is_checked_out_tracking_it(forge: Forge, tmp_path: Path):
    """`checkout -B <branch> origin/main` threw away an existing remote branch: rework started from main."""
    url = forge.create_repo("app", private=False)
    tip = forge.commit("app", "polecat/work", {"work.txt": "earlier work\n"}, message="earlier work")
    workdir = tmp_path / "ws"
    await prepare(request(url, branch="polecat/work"), workdir, tmp_path)
    assert rev(workdir) == tip == rev(workdir, "origin/polecat/work")
    upstream = subprocess.run(["git", "rev-parse", "--abbrev-ref", "@{upstream}"], cwd=workdir, capture_output=True,
                              text=True, check=True).stdout.strip()
    assert upstream == "origin/polecat/work"


async def test_a_reused_workspace_is_fetched_switched_and_keeps_committed_work(forge: Forge, tmp_path: Path):
    url = forge.create_repo("app", private=False)
    workdir = tmp_path / "ws"
    await prepare(request(url, branch="mr-1"), workdir, tmp_path)
    mine = commit(workdir, "unpushed.txt", tmp_path)
    new_main = forge.commit("app", "main", {"later.txt": "x\n"}, message="landed later")
    await prepare(request(url, branch="mr-2"), workdir, tmp_path)  # a re-dispatch for another MR
    assert rev(workdir) == new_main, "a reused workspace was never fetched: the new branch started from stale main"
    await prepare(request(url, branch="mr-1"), workdir, tmp_path)
    assert rev(workdir) == mine, "the unpushed commit of mr-1 was lost"


async def test_a_restart_behind_its_remote_branch_is_fast_forwarded(forge: Forge, tmp_path: Path):
    url = forge.create_repo("app", private=False)
    forge.commit("app", "feature", {"a.txt": "a\n"}, message="a")
    workdir = tmp_path / "ws"
    await prepare(request(url, branch="feature"), workdir, tmp_path)
    tip = forge.commit("app", "feature", {"b.txt": "b\n"}, message="pushed by someone else")
    await prepare(request(url, branch="feature"), workdir, tmp_path)
    assert rev(workdir) == tip


async def test_a_start_point_that_does_not_resolve_is_an_error(forge: Forge, tmp_path: Path):
    """It used to fall back to HEAD: the agent worked on main's tip without anyone knowing."""
    url = forge.create_repo("app", private=False)
    with pytest.raises(WorkspaceError, match="does not resolve"):
        await prepare(request(url, branch="fix", start_point="origin/no-such-branch"), tmp_path / "ws", tmp_path)
    tip = forge.commit("app", "convoy/feature", {"f.txt": "f\n"}, message="feature base")
    await prepare(request(url, branch="fix", start_point="origin/convoy/feature"), tmp_path / "ws2", tmp_path)
    assert rev(tmp_path / "ws2") == tip


async def test_the_first_polecat_of_a_convoy_creates_its_feature_branch_on_origin(forge: Forge, tmp_path: Path):
    """Convoy feature branches were never created, so review-then-land MRs targeted a branch that
    did not exist; with start points checked strictly, the convoy's polecats could not even start."""
    url = forge.create_repo("app", private=False)
    forge.tokens["push-token-0123456789"] = "agent"
    main = forge.head("app", "main")
    req = request(url, branch="convoy/x/bead-1", start_point="origin/convoy/x/head", create_start_point=True)
    await prepare(req, tmp_path / "ws", tmp_path, token="push-token-0123456789")
    assert forge.head("app", "convoy/x/head") == main == rev(tmp_path / "ws")
    second = request(url, branch="convoy/x/bead-2", start_point="origin/convoy/x/head", create_start_point=True)
    await prepare(second, tmp_path / "ws2", tmp_path, token="push-token-0123456789")  # exists now: used as is
    assert rev(tmp_path / "ws2") == main
