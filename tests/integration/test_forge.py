"""The local forge with the real git client over HTTP: token auth on clone and push, a credential
helper answering git's 401, and the scripting side tests use (issue 11, item 1)."""
from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from gastown.local.forge import Forge

TOKEN = "forge-token-0123456789abcdef"
IDENTITY = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x"}


async def git(*args: str, cwd: Path | None = None, helper_token: str | None = None, check: bool = True):  # noqa: ANN201
    """The git CLI with no credentials of its own (no prompt, no global config); with
    ``helper_token``, a credential helper that answers git's 401 with that token. In a thread:
    the forge serves on this test's event loop."""
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd or Path.cwd()), "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_NOSYSTEM": "1", **IDENTITY}
    pre = []
    if helper_token is not None:
        pre = ["-c", f"credential.helper=!f() {{ echo username=agent; echo password={helper_token}; }}; f"]
    return await asyncio.to_thread(subprocess.run, ["git", *pre, *args], cwd=cwd, env=env, capture_output=True,
                                   text=True, timeout=60, check=check)


@pytest.fixture
async def forge(tmp_path: Path):  # noqa: ANN201
    async with Forge(tmp_path / "forge", tokens={TOKEN: "agent"}) as f:
        yield f


async def test_a_private_repo_needs_the_token_to_clone_and_a_helper_supplies_it(forge: Forge, tmp_path: Path):
    url = forge.create_repo("app", files={"README.md": "hello\n"})
    denied = await git("clone", url, str(tmp_path / "anon"), cwd=tmp_path, check=False)
    assert denied.returncode != 0 and "could not read Username" in denied.stderr  # git's answer to a 401
    wrong = await git("clone", url, str(tmp_path / "wrong"), cwd=tmp_path, helper_token="not-the-token", check=False)
    assert wrong.returncode != 0
    await git("clone", url, str(tmp_path / "ok"), cwd=tmp_path, helper_token=TOKEN)
    assert (tmp_path / "ok" / "README.md").read_text() == "hello\n"


async def test_push_needs_the_token_even_on_a_public_repo(forge: Forge, tmp_path: Path):
    url = forge.create_repo("pub", private=False)
    work = tmp_path / "w"
    await git("clone", url, str(work), cwd=tmp_path)  # anonymous read of a public repo
    (work / "a.txt").write_text("a\n")
    await git("add", "a.txt", cwd=work)
    await git("commit", "-qm", "add a", cwd=work)
    refused = await git("push", "origin", "HEAD:refs/heads/feature", cwd=work, check=False)
    assert refused.returncode != 0 and forge.head("pub", "feature") is None
    await git("push", "origin", "HEAD:refs/heads/feature", cwd=work, helper_token=TOKEN)
    assert forge.head("pub", "feature") == (await git("rev-parse", "HEAD", cwd=work)).stdout.strip()
    assert forge.log("pub", "feature") == ["add a", "initial commit"]


async def test_scripted_commit_on_main_is_seen_by_a_fetch(forge: Forge, tmp_path: Path):
    url = forge.create_repo("app")
    work = tmp_path / "w"
    await git("clone", url, str(work), cwd=tmp_path, helper_token=TOKEN)
    sha = forge.commit("app", "main", {"README.md": "changed on the forge\n"}, message="conflicting change")
    await git("fetch", "-q", "origin", cwd=work, helper_token=TOKEN)
    assert (await git("rev-parse", "origin/main", cwd=work)).stdout.strip() == sha


async def test_unknown_repos_and_routes_are_404_and_a_bearer_token_works(forge: Forge):
    import aiohttp

    forge.create_repo("app")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{forge.url}/town/nope.git/info/refs?service=git-upload-pack") as r:
            assert r.status == 404
        async with http.get(f"{forge.url}/town/app.git/objects/info/packs") as r:
            assert r.status == 404  # dumb HTTP is not served: smart routes only
        async with http.get(f"{forge.url}/town/app.git/info/refs?service=git-upload-pack") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        async with http.get(f"{forge.url}/town/app.git/info/refs?service=git-upload-pack",
                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
