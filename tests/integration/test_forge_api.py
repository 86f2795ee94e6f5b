"""The local forge's GitHub API subset driven by the real ``GitHubProvider`` over HTTP, and the
worker's direct merge through git against it (issue 11, items 1 and 4): every merge is checked in
a fresh clone of the forge, not in the forge's own bookkeeping."""
from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from gastown.core.gitops import GitError
from gastown.local.forge import Forge
from worker_api.scm.base import ScmError
from worker_api.scm.github import GitHubProvider
from worker_api.scm.gitmerge import merge_branch

TOKEN = "forge-api-token-0123456789abcdef"


@pytest.fixture
async def forge(tmp_path: Path):  # noqa: ANN201
    async with Forge(tmp_path / "forge", tokens={TOKEN: "reviewer"}) as f:
        yield f


@pytest.fixture
async def gh(forge: Forge):  # noqa: ANN201
    provider = GitHubProvider(forge.api_url)
    yield provider
    await provider.aclose()


def _clone_log(url: str, tmp: Path, branch: str = "main") -> list[str]:
    dest = tmp / f"clone-{len(list(tmp.iterdir()))}"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
           "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {TOKEN}"}
    subprocess.run(["git", "clone", "-q", "-b", branch, url, str(dest)], env=env, check=True, capture_output=True,
                   timeout=60)
    return subprocess.run(["git", "log", "--format=%s"], cwd=dest, env=env, capture_output=True, text=True,
                          check=True).stdout.splitlines()


async def clone_log(url: str, tmp: Path, branch: str = "main") -> list[str]:
    """Subjects on ``branch`` of a fresh clone; in a thread, as the forge serves on this loop."""
    return await asyncio.to_thread(_clone_log, url, tmp, branch)


async def api(forge: Forge, method: str, path: str, body: dict | None = None, token: str | None = TOKEN):  # noqa: ANN201
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{forge.api_url}{path}", json=body, headers=headers) as r:
            return r.status, (await r.json() if r.content_length else None)


async def test_a_pr_opened_by_the_adapter_is_gated_by_checks_and_review_then_merged_on_the_forge(forge, gh, tmp_path):
    url = forge.create_repo("acme/app", require_review=True, merge_methods=("squash",))
    head = await asyncio.to_thread(forge.commit, "acme/app", "feature", {"f.txt": "f\n"}, message="add f")
    pr_url = await gh.open_pr(url, TOKEN, head="feature", base="main", title="Add f", body="adds f")
    assert pr_url == f"{forge.url}/acme/app/pull/1"
    assert await gh.open_pr(url, TOKEN, head="feature", base="main", title="Add f", body="") == pr_url  # a retry
    s = await gh.pr_status(pr_url, TOKEN)
    assert (s.state, s.review_decision, s.merge_state_status, s.mergeable, s.head_sha, s.checks) == \
        ("open", "REVIEW_REQUIRED", "BLOCKED", "MERGEABLE", head, "none")
    assert (await api(forge, "POST", f"/repos/acme/app/statuses/{head}", {"state": "failure", "context": "ci"}))[0] == 201
    s = await gh.pr_status(pr_url, TOKEN)
    assert (s.checks, s.failing_checks) == ("failure", ("ci",))
    await api(forge, "POST", f"/repos/acme/app/statuses/{head}", {"state": "success", "context": "ci"})
    code, review = await api(forge, "POST", "/repos/acme/app/pulls/1/reviews", {"event": "APPROVE"})
    assert code == 200 and review["state"] == "APPROVED"
    s = await gh.pr_status(pr_url, TOKEN)
    assert (s.review_decision, s.merge_state_status, s.checks) == ("APPROVED", "CLEAN", "success")
    result = await gh.merge(pr_url, TOKEN, head_sha=s.head_sha)
    assert result.merged and result.method == "squash" and result.tried == ("squash",)
    assert (await clone_log(url, tmp_path))[:2] == ["Add f (#1)", "initial commit"]
    assert (await gh.pr_status(pr_url, TOKEN)).state == "merged"


async def test_a_disallowed_method_is_405_and_the_adapter_falls_back_to_a_real_merge_commit(forge, gh, tmp_path):
    url = forge.create_repo("acme/app", merge_methods=("merge",))
    await asyncio.to_thread(forge.commit, "acme/app", "feature", {"f.txt": "f\n"}, message="add f")
    pr_url = await gh.open_pr(url, TOKEN, head="feature", base="main", title="Add f", body="")
    code, _ = await api(forge, "PUT", "/repos/acme/app/pulls/1/merge", {"merge_method": "rebase"})
    assert code == 405
    result = await gh.merge(pr_url, TOKEN)
    assert result.merged and result.tried == ("squash", "merge")
    log = await clone_log(url, tmp_path)
    assert log[0] == "Merge pull request #1 from feature" and sorted(log[1:]) == ["add f", "initial commit"]


async def test_rebase_replays_the_commits_onto_a_moved_base(forge, gh, tmp_path):
    url = forge.create_repo("acme/app", merge_methods=("rebase",))
    await asyncio.to_thread(forge.commit, "acme/app", "feature", {"f.txt": "f\n"}, message="add f")
    await asyncio.to_thread(forge.commit, "acme/app", "main", {"m.txt": "m\n"}, message="main moved")
    pr_url = await gh.open_pr(url, TOKEN, head="feature", base="main", title="Add f", body="")
    assert (await gh.merge(pr_url, TOKEN)).merged
    assert (await clone_log(url, tmp_path))[:3] == ["add f", "main moved", "initial commit"]


async def test_a_conflicting_commit_on_main_makes_the_pr_dirty(forge, gh):
    url = forge.create_repo("acme/app")
    await asyncio.to_thread(forge.commit, "acme/app", "feature", {"README.md": "mine\n"}, message="edit")
    pr_url = await gh.open_pr(url, TOKEN, head="feature", base="main", title="Edit", body="")
    await asyncio.to_thread(forge.commit, "acme/app", "main", {"README.md": "theirs\n"}, message="conflict")
    s = await gh.pr_status(pr_url, TOKEN)
    assert (s.mergeable, s.merge_state_status) == ("CONFLICTING", "DIRTY")
    assert not (await gh.merge(pr_url, TOKEN)).merged


async def test_the_api_refuses_strangers_and_bad_input(forge, gh):
    url = forge.create_repo("acme/app")
    assert (await api(forge, "GET", "/repos/acme/app", token=None))[0] == 404  # private: hidden
    assert (await api(forge, "GET", "/repos/acme/app", token="wrong-token"))[0] == 401
    assert (await api(forge, "GET", "/repos/acme/app"))[1]["default_branch"] == "main"
    assert (await api(forge, "POST", "/repos/acme/app/pulls", {"title": "x", "head": "nope", "base": "main"}))[0] == 422
    assert (await api(forge, "POST", "/repos/acme/app/pulls", {"title": "x", "head": "main", "base": "main"}))[0] == 422
    assert (await api(forge, "GET", "/repos/acme/app/pulls/99"))[0] == 404
    with pytest.raises(ScmError) as err:
        await gh.open_pr(url.replace("127.0.0.1", "localhost"), TOKEN, head="a", base="main", title="t", body="")
    assert err.value.kind == "host_mismatch"


async def test_the_workers_direct_merge_lands_branches_through_git_and_reports_conflicts(forge, tmp_path):
    url = forge.create_repo("acme/app")
    await asyncio.to_thread(forge.commit, "acme/app", "one", {"one.txt": "1\n"}, message="one")
    await asyncio.to_thread(forge.commit, "acme/app", "two", {"two.txt": "2\n"}, message="two")
    await asyncio.to_thread(forge.commit, "acme/app", "clash", {"README.md": "clash\n"}, message="clash")
    first = await asyncio.to_thread(merge_branch, url, TOKEN, branch="one", target="main", message="Merge one")
    second = await asyncio.to_thread(merge_branch, url, TOKEN, branch="two", target="main", message="Merge two")
    assert (first.outcome, second.outcome) == ("merged", "merged")
    assert forge.head("acme/app", "main") == second.sha
    log = await clone_log(url, tmp_path)
    assert log[0] == "Merge two" and {"one", "two", "Merge one"} <= set(log)
    again = await asyncio.to_thread(merge_branch, url, TOKEN, branch="one", target="main", message="again")
    assert again.outcome == "already_merged"
    await asyncio.to_thread(forge.commit, "acme/app", "main", {"README.md": "main's\n"}, message="main edit")
    clash = await asyncio.to_thread(merge_branch, url, TOKEN, branch="clash", target="main", message="m")
    assert clash.outcome == "conflict" and clash.conflicts == ("README.md",)
    missing = await asyncio.to_thread(merge_branch, url, TOKEN, branch="nope", target="main", message="m")
    assert missing.outcome == "missing_branch"
    with pytest.raises(GitError):  # the forge's 401: no token, no merge
        await asyncio.to_thread(merge_branch, url, None, branch="two", target="main", message="m")
