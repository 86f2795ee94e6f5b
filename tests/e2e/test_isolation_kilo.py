"""Tenant isolation with real processes: an agent's ``bash`` (real kilo, scripted model) probes the
runtime and its neighbour the way hostile code would, inside a town of real processes (``gastown
worker``, ``gastown container`` with SeaweedFS, the forge)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from gastown.local.s3servers import SECRET
from tests.conftest import CONTROL_TOKEN
from tests.s3servers import seaweedfs  # noqa: F401 - fixture
from tests.townproc import TownProcs, script, tool, until

pytestmark = pytest.mark.kilo

PROBE = r"""
echo "== runtime environ"; cat /proc/$KILO_PARENT_PID/environ
echo "== pid 1"; cat /proc/1/environ; ls -la /proc/1/
echo "== env"; env
echo "== every environ"; for p in /proc/[0-9]*; do cat $p/environ 2>/dev/null; echo; done
echo "== neighbour"; cat "$NEIGHBOUR/home/.gastown/token"; ls -la "$NEIGHBOUR"
echo "== registry"; curl -s -o /dev/null -w 'registry=%{http_code}\n' -X POST \
  -H "Authorization: Bearer $(cat $GASTOWN_AGENT_TOKEN_FILE)" -H 'Content-Type: application/json' \
  "$GASTOWN_API_URL/api/towns/$GASTOWN_TOWN_ID/container-registry" --data '[]'
echo "== own token"; curl -s -o /dev/null -w 'prime=%{http_code}\n' \
  -H "Authorization: Bearer $(cat $GASTOWN_AGENT_TOKEN_FILE)" \
  "$GASTOWN_API_URL/api/towns/$GASTOWN_TOWN_ID/agents/$GASTOWN_AGENT_ID/prime"
echo "== done"
"""


def _kilo(agent_id: str) -> tuple[psutil.Process, dict[str, str]]:
    """The agent's kilo process and its environment (read as root, as no agent can)."""
    for p in psutil.process_iter(["name"]):
        try:
            env = p.environ()
        except psutil.Error:
            continue
        if env.get("GASTOWN_AGENT_ID") == agent_id and "KILO_SERVER_PASSWORD" in env:
            return p, env
    raise AssertionError(f"no kilo of {agent_id}")


def _kilo_env(agent_id: str) -> dict[str, str]:
    return _kilo(agent_id)[1]


async def test_an_agents_bash_reads_no_secret_of_the_runtime_or_of_another_agent(fake_llm, seaweedfs, tmp_path: Path):
    town = TownProcs(tmp_path, fake_llm, seaweedfs)
    try:
        await town.start(container_env_extra={"GASTOWN_IDLE_TIMEOUT_S": "600"})  # the neighbour stays up
        assert town.container is not None
        data = tmp_path / "container" / "data" / "agents"
        t = f"/api/towns/{town.town_id}"
        ids = []
        for name in ("Prober", "Neighbour"):
            code, agent = await town.api("POST", f"{t}/agents", {"role": "polecat", "name": name, "rig_id": town.rig_id})
            assert code == 201, agent
            ids.append(agent["agent_id"])
        prober, neighbour = ids
        base = {"town_id": town.town_id, "rig_id": town.rig_id, "role": "polecat", "model": "fake/m1",
                "git_url": town.repo_url, "default_branch": "main"}
        code, body = await town.container.call("POST", "/agents/start", {**base, "agent_id": neighbour,
                                                                          "name": "Neighbour", "prompt": "wait here"})
        assert code == 201, body
        neighbour_env = _kilo_env(neighbour)
        probe = f"export NEIGHBOUR={data / neighbour}\n{PROBE}"
        command = f"( {probe} ) > probe.txt 2>&1"
        code, body = await town.container.call("POST", "/agents/start", {
            **base, "agent_id": prober, "name": "Prober",
            "prompt": script(tool("bash", command=command, description="probe"))})
        assert code == 201, body
        out_file = data / prober / "workspace" / "probe.txt"
        await until(lambda: _has_done(out_file), 180, "the probe's output")
        out = out_file.read_text(errors="replace")

        neighbour_token = (data / neighbour / "home" / ".gastown" / "token").read_text()
        own_token = (data / prober / "home" / ".gastown" / "token").read_text()
        secrets = {"control token": CONTROL_TOKEN, "runtime's worker token": town.container_token,
                   "object-store secret key": SECRET, "neighbour's kilo password": neighbour_env["KILO_SERVER_PASSWORD"],
                   "neighbour's token": neighbour_token}
        leaked = [what for what, value in secrets.items() if value and value in out]
        assert not leaked, f"leaked {leaked}:\n{out[:3000]}"
        # The probe ran for real: it saw its own env, was refused the rest, and its own token works.
        assert f"GASTOWN_AGENT_ID={prober}" in out and "Permission denied" in out, out[:3000]
        assert "registry=403" in out and "prime=200" in out, out[-2000:]
        assert own_token not in json.dumps(secrets)
        uids = {psutil.Process(int(_kilo_env(a)["KILO_PARENT_PID"])).uids().real for a in ids}
        assert uids == {os.getuid()}, "the runtime keeps its own user"
        assert len({_proc_uid(a) for a in ids} | {os.getuid()}) == 3, "each agent runs as a user of its own"
    except AssertionError as e:
        raise AssertionError(f"{e}\n{town.logs()}") from None
    finally:
        await town.close()


async def _has_done(path: Path) -> bool:
    return path.exists() and "== done" in path.read_text(errors="replace")


def _proc_uid(agent_id: str) -> int:
    return _kilo(agent_id)[0].uids().real
