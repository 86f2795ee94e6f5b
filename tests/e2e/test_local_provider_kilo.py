"""The worker starts and stops a town's container itself (``--containers local``: ``gastown container``
processes), with real kilo on the scripted model: a user's message to a town with no container starts
one and is answered; the town idle for the (shortened) window gets its container drained and stopped;
the next message starts a new one, which resumes the mayor's session from the snapshots."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from gastown.local.scripted_model import DEFAULT_PREFIX
from tests.s3servers import seaweedfs  # noqa: F401 - fixture
from tests.townproc import ADMIN, TownProcs, until

pytestmark = pytest.mark.kilo

IDLE_STOP_S = 12


def _containers_of(worker_pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(worker_pid).children()
    except psutil.NoSuchProcess:
        return []
    return [p for p in kids if "container" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE]


async def test_a_message_starts_the_towns_container_idle_stops_it_and_the_next_message_brings_it_back(
        fake_llm, seaweedfs, tmp_path: Path):
    env_file = tmp_path / "container-env.json"
    env_file.write_text(json.dumps({"GASTOWN_KILO_PROVIDERS": json.dumps(fake_llm.provider_config()),
                                    "GASTOWN_ALLOW_LOCAL_GIT": "1"}))
    town = TownProcs(tmp_path, fake_llm, seaweedfs)
    try:
        await town.start_servers_only(worker_args=("--containers", "local"),
                                      worker_env_extra={"GASTOWN_CONTAINER_ENV_FILE": str(env_file),
                                                        "GASTOWN_IDLE_STOP_S": str(IDLE_STOP_S),
                                                        "GASTOWN_IDLE_STOP_THROTTLE_S": "2"})
        worker_pid = town.procs[-1].pid
        code, created = await town.api("POST", "/api/towns", {"name": "local", "default_model": "fake/m1"}, token=ADMIN)
        assert code == 201, created
        t = f"/api/towns/{created['town_id']}"
        assert _containers_of(worker_pid) == [], "no container before there is anything to do"

        async def answered(text: str) -> Any:
            async def check() -> bool:
                _, convo = await town.api("GET", f"{t}/mayor/messages")
                return any(m["role"] == "assistant" and m["text"] == f"{DEFAULT_PREFIX}{text}" for m in convo["messages"])
            return check

        assert (await town.api("POST", f"{t}/mayor/messages", {"text": "first question"}))[0] == 202
        await until(await answered("first question"), 180, "the first answer")
        [first] = _containers_of(worker_pid)

        started = time.monotonic()

        async def first_gone() -> bool:
            try:
                return first.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True
        await until(first_gone, IDLE_STOP_S + 120, "the idle stop")
        assert time.monotonic() - started >= IDLE_STOP_S - 8, "stopped before the idle window"
        stops = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()
                 if '"container.stopped"' in line]
        assert [s["returncode"] for s in stops] == [0], "a drain exits 0"

        assert (await town.api("POST", f"{t}/mayor/messages", {"text": "second question"}))[0] == 202
        req = await fake_llm.wait_for(lambda r: r.last_user_text == "second question", timeout=180)
        assert "first question" in json.dumps(req.messages), "the old session, restored from the snapshot"
        await until(await answered("second question"), 60, "the second answer")
        [second] = _containers_of(worker_pid)
        assert second.pid != first.pid
    except AssertionError as e:
        raise AssertionError(f"{e}\n{town.logs()}") from None
    finally:
        await town.close()
