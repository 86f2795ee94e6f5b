"""The git the runtime runs for an agent's workspace, with agents as users of their own
(``supervisor.isolation``; the runtime must be root, as in the image and CI)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from supervisor.config import RuntimeConfig
from supervisor.isolation import AgentUsers
from supervisor.models import StartAgentRequest
from supervisor.supervisor import Supervisor
from supervisor.worker_client import WorkerClient
from supervisor.workspace import WorkspaceError
from tests.conftest import start_body
from tests.gitrepos import bare_origin, push_branch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agents get uids of their own only when the runtime is root")


def _head(git_dir: Path, ref: str = "main") -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


async def test_an_agents_git_config_never_steers_the_rigs_mirror_fetched_as_root(tmp_path: Path) -> None:
    """The mirror was fetched as root with the agent's HOME: the agent's own git config (here a
    url.insteadOf) pointed every agent of the rig at another repository, and a config running a
    command would have run it as root."""
    origin = bare_origin(tmp_path / "o")
    evil = bare_origin(tmp_path / "evil", {"EVIL": "planted\n"})
    sup = Supervisor(RuntimeConfig(data_dir=tmp_path / "data"), WorkerClient(None, None, None))
    assert sup.users.enabled
    req = StartAgentRequest.model_validate(start_body(git_url=str(origin), branch="work", default_branch="main"))
    rec = sup.new_record(req)
    await sup.prepare_workspace(rec)
    assert (rec.paths.workdir / ".git").stat().st_uid == sup.users.uid("polecat-1")  # cloned as the agent
    config = rec.paths.home / ".config" / "git" / "config"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[url "{evil}"]\n\tinsteadOf = {origin}\n[core]\n\tfsmonitor = touch {tmp_path}/PWNED\n')
    push_branch(origin, tmp_path / "seed2", "main", {"NEW": "new\n"})
    with pytest.raises(WorkspaceError):  # a restart: the mirror is fetched again (as root, hardened),
        await sup.prepare_workspace(sup.new_record(req))  # then the agent's own fetch follows its config
    mirror = tmp_path / "data" / "rigs" / "rig-1" / "mirror.git"
    assert _head(mirror) == _head(origin) != _head(evil)
    assert not (tmp_path / "PWNED").exists()


async def test_a_tree_left_by_an_earlier_runtime_is_not_readable_by_whoever_gets_its_uid(tmp_path: Path) -> None:
    """uids are handed out in start order: on a kept volume, the agent that got another's old uid
    could read its workspace and token file."""
    old = tmp_path / "data" / "agents" / "polecat-old"
    (old / "home" / ".gastown").mkdir(parents=True)
    (old / "home" / ".gastown" / "token").write_text("old-agent-token")
    uid = AgentUsers.create("auto", None, "town-test").uid("polecat-1")  # what this runtime will hand out
    for path in (old, *old.rglob("*")):
        os.chown(path, uid, uid)
    os.chmod(old, 0o700)
    sup = Supervisor(RuntimeConfig(data_dir=tmp_path / "data", town_id="town-test"), WorkerClient(None, None, None))
    assert sup.users.uid("polecat-1") == uid
    req = StartAgentRequest.model_validate(start_body())
    await sup.prepare_workspace(sup.new_record(req))
    read = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                           "cat", str(old / "home" / ".gastown" / "token")], capture_output=True, text=True)
    assert read.returncode != 0 and "old-agent-token" not in read.stdout
    assert old.stat().st_uid == 0
