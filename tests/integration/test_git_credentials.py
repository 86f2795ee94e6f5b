"""Agents' git credentials (issue 11, item 2), all real: the forge over HTTP with a private repo,
the worker API, git, and ``gastown git-credential`` run by git as its credential helper."""
from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gastown.core import jsonlog
from gastown.local.forge import Forge
from supervisor.config import RuntimeConfig
from supervisor.kilo_env import credential_helper_env
from supervisor.models import StartAgentRequest
from supervisor.agent_tokens import AgentTokens
from supervisor.supervisor import Supervisor
from supervisor.worker_client import WorkerClient
from tests.conftest import start_body

RIG_TOKEN = "forge-rig-token-0123456789abcdef"
HELPER = [sys.executable, "-m", "gastown.cli", "git-credential"]
IDENTITY = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x"}


@pytest.fixture
async def forge(tmp_path: Path):  # noqa: ANN201
    async with Forge(tmp_path / "forge", tokens={RIG_TOKEN: "rig-1"}) as f:
        yield f


@pytest.fixture
async def rig(worker, forge: Forge):  # noqa: ANN001, ANN201
    """A town whose rig-1 is the forge's private repo ``app``, its token set, and agent polecat-1."""
    url = forge.create_repo("app", files={"README.md": "private\n"})
    forge.create_repo("other")
    town_id, token = await worker.create_town()
    assert (await worker.request("POST", f"/api/towns/{town_id}/rigs", json={"rig_id": "rig-1", "name": "app",
                                                                           "git_url": url}))[0] == 201
    assert (await worker.request("PUT", f"/api/towns/{town_id}/rigs/rig-1/scm", json={"github_token": RIG_TOKEN}))[0] == 200
    assert (await worker.request("POST", f"/api/towns/{town_id}/agents", json={
        "agent_id": "polecat-1", "role": "polecat", "name": "Toast", "rig_id": "rig-1"}))[0] == 201
    return town_id, token, url


def agent_env(tmp_path: Path, worker_url: str, town_id: str, token: str, helper: bool = True) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
           "GASTOWN_API_URL": worker_url, "GASTOWN_TOWN_ID": town_id, "GASTOWN_AGENT_ID": "polecat-1",
           "GASTOWN_AGENT_ROLE": "polecat", "GASTOWN_RIG_ID": "rig-1", "GASTOWN_CONTAINER_TOKEN": token, **IDENTITY}
    return {**env, **credential_helper_env(HELPER)} if helper else env


async def git(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, ["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                                   timeout=60)


async def test_an_agent_clones_and_pushes_its_rigs_private_repo_through_the_helper(worker, forge, rig, tmp_path):
    town_id, token, url = rig
    buf = io.StringIO()
    jsonlog.configure(stream=buf)
    try:
        env = agent_env(tmp_path, worker.url, town_id, token)
        clone = await git(env, "clone", url, str(tmp_path / "ws"))
        assert clone.returncode == 0, clone.stderr
        (tmp_path / "ws" / "work.txt").write_text("done\n")
        for args in (["add", "work.txt"], ["commit", "-qm", "the work"]):
            assert (await git(env, *args, cwd=tmp_path / "ws")).returncode == 0
        push = await git(env, "push", "origin", "HEAD:refs/heads/polecat/work", cwd=tmp_path / "ws")
        assert push.returncode == 0, push.stderr
        assert forge.log("app", "polecat/work")[0] == "the work"
        without = await git(agent_env(tmp_path, worker.url, town_id, token, helper=False), "clone", url,
                            str(tmp_path / "no-helper"))
        assert without.returncode != 0 and "could not read Username" in without.stderr
    finally:
        jsonlog.configure()
    remote = await git(env, "remote", "-v", cwd=tmp_path / "ws")
    config = (tmp_path / "ws" / ".git" / "config").read_text()
    for text in (buf.getvalue(), remote.stdout, config, clone.stderr, push.stderr):
        assert RIG_TOKEN not in text
    issued = [json.loads(line) for line in buf.getvalue().splitlines() if "git_credential.issued" in line]
    assert issued and all(line["agent_id"] == "polecat-1" for line in issued)


async def test_the_credential_is_for_the_rigs_repository_only(worker, forge, rig, tmp_path):
    town_id, token, _ = rig
    other = await git(agent_env(tmp_path, worker.url, town_id, token), "clone", forge.repo_url("other"),
                      str(tmp_path / "other"))
    assert other.returncode != 0  # the worker refused: CREDENTIAL_NOT_FOR_REPO
    status, body = await worker.request("GET", f"/api/towns/{town_id}/agents/polecat-1/git-credential",
                                        token=token, params={"url": forge.repo_url("other")})
    assert status == 403 and body["error"]["code"] == "CREDENTIAL_NOT_FOR_REPO"


async def test_the_supervisor_clones_a_private_rig_repo_for_its_agent(worker, forge, rig, tmp_path):
    """Agents had no git credentials at all: a private repo could not even be cloned for them. The
    clone asks with the agent's own token (the runtime's never reaches an agent's git)."""
    town_id, token, url = rig
    cfg = RuntimeConfig(data_dir=tmp_path / "data", credential_helper=HELPER)
    sup = Supervisor(cfg, WorkerClient(worker.url, token, town_id))
    AgentTokens(sup)
    req = StartAgentRequest.model_validate(start_body(town_id=town_id, git_url=url, branch="polecat/b1",
                                                      default_branch="main"))
    rec = sup.new_record(req)
    try:
        await sup.prepare_workspace(rec)
    finally:
        await sup.worker.close()
    assert (rec.paths.workdir / "README.md").read_text() == "private\n"
    env = sup.build_launch(rec, "pw")
    assert env["GIT_CONFIG_KEY_0"] == "credential.helper" and RIG_TOKEN not in json.dumps(env)
    assert token not in json.dumps(env) and env["GASTOWN_AGENT_TOKEN_FILE"] == str(rec.paths.token_file)


async def test_a_rig_token_rotated_mid_task_is_used_by_the_agents_next_git_call(worker, forge, rig, tmp_path):
    """The helper caches nothing: after the operator rotates the rig's token (the old one revoked on
    the forge), the agent's next push asks the worker again and gets the new one."""
    town_id, token, url = rig
    env = agent_env(tmp_path, worker.url, town_id, token)
    assert (await git(env, "clone", url, str(tmp_path / "ws"))).returncode == 0
    new = "forge-rig-token-rotated-0123456789"
    forge.tokens.pop(RIG_TOKEN)
    forge.tokens[new] = "rig-1"
    (tmp_path / "ws" / "later.txt").write_text("later\n")
    for args in (["add", "later.txt"], ["commit", "-qm", "later"]):
        assert (await git(env, *args, cwd=tmp_path / "ws")).returncode == 0
    stale = await git(env, "push", "origin", "HEAD:refs/heads/polecat/later", cwd=tmp_path / "ws")
    assert stale.returncode != 0  # the revoked token, still configured on the worker
    assert (await worker.request("PUT", f"/api/towns/{town_id}/rigs/rig-1/scm", json={"github_token": new}))[0] == 200
    push = await git(env, "push", "origin", "HEAD:refs/heads/polecat/later", cwd=tmp_path / "ws")
    assert push.returncode == 0, push.stderr
    assert forge.log("app", "polecat/later")[0] == "later"
