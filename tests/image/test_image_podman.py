"""The per-town image for real: built by `make image` (podman, from the repository's Dockerfile), run by
the worker's Docker-API provider against ``podman system service``, real kilo inside on the scripted
model, snapshots through the worker to SeaweedFS, everything on the host's loopback network.

One town's life: a user's message starts its container from the image, the mayor answers; tini is
PID 1 and the runtime is root only inside a user namespace of its own; the engine's health check
passes; a SIGKILLed kilo reaches the worker with its signal; the idle stop drains the container to
exit 0 with the registry emptied, no kilo left and the mayor's kilo.db in S3; the next message starts
a new container on a fresh volume that resumes the mayor's session; ``podman stop -t 330`` drains it
to exit 0. No container ever sits on a bridge or a private-range address.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from gastown.local.s3servers import s3_client
from gastown.local.scripted_model import DEFAULT_PREFIX
from tests.podman import IMAGE, docker_api, inspect, networks, podman, private_addresses  # noqa: F401 - fixture
from tests.s3servers import seaweedfs  # noqa: F401 - fixture
from tests.townproc import ADMIN, TownProcs, until

pytestmark = [pytest.mark.kilo, pytest.mark.xdist_group("image")]

IDLE_STOP_S = 45


def _db(town: TownProcs, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{town.tmp / 'worker.db'}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


def _registry(town: TownProcs, town_id: str) -> list[Any]:
    rows = _db(town, "SELECT entries FROM container_registry WHERE town_id = ?", town_id)
    return json.loads(rows[0][0]) if rows else []


def _kilos_of(host_pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(host_pid).children(recursive=True) if "kilo" in p.name()]
    except psutil.NoSuchProcess:
        return []


def _image_kilos() -> list[str]:
    """kilo processes from any image container on this host (their binary lives under /opt/kilo)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "/opt/kilo/node_modules" in cmd and p.status() != psutil.STATUS_ZOMBIE:
            out.append(f"{p.info['pid']} {cmd[:100]}")
    return out


async def test_the_worker_runs_a_town_from_the_image_resumes_it_and_stops_it_when_idle(fake_llm, seaweedfs,
                                                                                      docker_api, tmp_path: Path):
    nets_before = networks()
    env_file = tmp_path / "container-env.json"
    env_file.write_text(json.dumps({"GASTOWN_KILO_PROVIDERS": json.dumps(fake_llm.provider_config()),
                                    "GASTOWN_ALLOW_LOCAL_GIT": "1"}))
    town = TownProcs(tmp_path, fake_llm, seaweedfs)
    name = ""
    try:
        await town.start_servers_only(
            worker_args=("--containers", "docker", "--image", IMAGE),
            worker_env_extra={"DOCKER_HOST": docker_api, "GASTOWN_CONTAINER_ENV_FILE": str(env_file),
                              "GASTOWN_IDLE_STOP_S": str(IDLE_STOP_S), "GASTOWN_IDLE_STOP_THROTTLE_S": "5"})
        code, user = await town.api("POST", "/api/users", {"name": "ada"}, token=ADMIN)
        assert code == 201
        token = user["token"]
        code, created = await town.api("POST", "/api/towns", {"name": "img", "default_model": "fake/m1"}, token=token)
        assert code == 201, created
        town_id = created["town_id"]
        t = f"/api/towns/{town_id}"
        name = f"gastown-town-{town_id}"

        # A user's message starts the town's container from the image; the mayor answers through real kilo.
        assert (await town.api("POST", f"{t}/mayor/messages", {"text": "first question"}, token=token))[0] == 202
        await fake_llm.wait_for(lambda r: r.last_user_text == "first question", timeout=300)

        async def answered(text: str) -> Any:
            async def check() -> bool:
                _, convo = await town.api("GET", f"{t}/mayor/messages", token=token)
                return any(m["role"] == "assistant" and m["text"] == f"{DEFAULT_PREFIX}{text}" for m in convo["messages"])
            return check
        await until(await answered("first question"), 90, "the first answer")
        first = inspect(name)
        assert first["Config"]["Image"].endswith(IMAGE.split("/")[-1]) and private_addresses(first) == []
        assert not any("token" in k.lower() or "secret" in k.lower() for k in first["Config"]["Labels"] or {})

        # tini is PID 1; the runtime is root only in its own user namespace; the agent is another uid.
        top = [line.split() for line in podman("top", name, "pid", "huser", "user", "comm").stdout.splitlines()[1:]]
        by_comm = {row[3]: row for row in top}
        assert by_comm["tini"][0] == "1", top
        runtime_host_uid = psutil.Process(first["State"]["Pid"]).uids().real
        assert runtime_host_uid != 0, "container root must not be host root"
        [kilo] = _kilos_of(first["State"]["Pid"])
        assert kilo.uids().real not in (0, runtime_host_uid), "the mayor's kilo runs as a uid of its own"
        assert podman("healthcheck", "run", name, check=False).returncode == 0

        # kill -9 of the kilo inside reaches the worker with its signal (and the runtime restarts the mayor).
        os.kill(kilo.pid, signal.SIGKILL)

        async def crash_reported() -> bool:
            rows = _db(town, "SELECT payload FROM town_events WHERE town_id = ? AND event_type = 'agent_completed'",
                       town_id)
            return any("signal 9" in r[0] for r in rows)
        await until(crash_reported, 60, "the crash at the worker")

        # Idle: no user or work activity for the window -> the worker stops the container, which drains.
        async def stopped() -> bool:
            return inspect(name)["State"]["Status"] in ("exited", "stopped")
        started = time.monotonic()
        await until(stopped, IDLE_STOP_S + 240, "the idle stop")
        gone = inspect(name)
        assert gone["State"]["ExitCode"] == 0, gone["State"]
        assert time.monotonic() - started >= 5
        assert _registry(town, town_id) == []
        assert _image_kilos() == []
        keys = [o["Key"] for o in s3_client(seaweedfs).list_objects_v2(Bucket=town.bucket).get("Contents", [])]
        assert any(town_id in k and "mayor" in k for k in keys), keys

        # The next message brings the town back: a new container on a fresh volume resumes the mayor's session.
        assert (await town.api("POST", f"{t}/mayor/messages", {"text": "second question"}, token=token))[0] == 202
        req = await fake_llm.wait_for(lambda r: r.last_user_text == "second question", timeout=300)
        assert "first question" in json.dumps(req.messages), "the old session, restored from S3"
        second = inspect(name)
        assert second["Id"] != first["Id"] and private_addresses(second) == []
        await until(await answered("second question"), 90, "the second answer")

        # podman stop with the drain grace: exit 0, registry emptied, no kilo left.
        podman("stop", "-t", "330", name, timeout=400)
        assert inspect(name)["State"]["ExitCode"] == 0
        assert _registry(town, town_id) == []
        assert _image_kilos() == []
        assert networks() == nets_before, "no network was created"
    except AssertionError as e:
        logs = podman("logs", "--tail", "60", name, check=False).stdout[-6000:] if name else ""
        raise AssertionError(f"{e}\n--- container\n{logs}\n{town.logs()}") from None
    finally:
        await town.close()
        if name:
            podman("rm", "-f", "-v", name, check=False)
