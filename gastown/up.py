"""``gastown up``: a whole local town in one command (what ``make run`` calls).

Starts, as child processes on free loopback ports: the local scripted model (only when no real
provider is configured), the worker API, and the town's container; creates the town and its mayor,
starts the mayor and prints its first reply, URLs, tokens and example ``curl`` commands. Ctrl-C
(SIGINT) or SIGTERM drains the container and stops every child; nothing is left running.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from supervisor.config import REPO_ROOT

STEP_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(msg: str) -> None:
    print(msg, flush=True)


class Town:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir.resolve()
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []
        self.http: aiohttp.ClientSession | None = None
        self.stoppers: list = []  # async callables run after the child processes stop
        self.admin_token = secrets.token_urlsafe(24)
        self.control_token = secrets.token_urlsafe(24)

    async def spawn(self, name: str, args: list[str], env: dict[str, str], *, stdout_pipe: bool = False) -> asyncio.subprocess.Process:
        log = open(self.dir / f"{name}.log", "ab")
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, cwd=str(REPO_ROOT), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else log, stderr=log, start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    async def wait_http(self, url: str, *, headers: dict | None = None, timeout: float = STEP_TIMEOUT_S) -> None:
        assert self.http is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with self.http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            for name, p in self.procs:
                if p.returncode is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}; see {self.dir / (name + '.log')}")
            await asyncio.sleep(0.25)
        raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")

    async def call(self, method: str, url: str, token: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        assert self.http is not None
        async with self.http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S)) as r:
            data = await r.json(content_type=None)
            if r.status not in ok:
                raise RuntimeError(f"{method} {url} -> {r.status}: {data}")
            return data

    async def stop_all(self) -> None:
        for name, p in reversed(self.procs):
            if p.returncode is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    await asyncio.wait_for(p.wait(), 60 if name == "container" else 10)
                except asyncio.TimeoutError:
                    os.killpg(p.pid, signal.SIGKILL)
                    await p.wait()
        for stop in self.stoppers:
            await stop()
        if self.http is not None:
            await self.http.close()


async def _model_provider(town: Town, env: dict[str, str]) -> tuple[dict[str, str], str]:
    """A real provider when configured; otherwise the local scripted model (labelled as such)."""
    if os.environ.get("GASTOWN_KILO_PROVIDERS") or os.environ.get("KILOCODE_TOKEN"):
        model = os.environ.get("GASTOWN_MODEL", "anthropic/claude-sonnet-4")
        say(f"model: {model} (real provider from your environment)")
        return {}, model
    proc = await town.spawn("fake-llm", [sys.executable, "-m", "tests.fakes.fake_llm", "--port", "0"], env, stdout_pipe=True)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    base_url = json.loads(line)["fake_llm"]
    if str(REPO_ROOT) not in sys.path:  # the scripted model lives in tests/fakes of the checkout
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fakes.fake_llm import provider_config_for

    say(f"model: fake/m1 — LOCAL SCRIPTED MODEL at {base_url} (no real provider configured;"
        " set GASTOWN_KILO_PROVIDERS or KILOCODE_TOKEN for a real one)")
    return {"GASTOWN_KILO_PROVIDERS": json.dumps(provider_config_for(base_url, ("m1", "m2")))}, "fake/m1"


async def _object_store(town: Town) -> dict[str, str]:
    """A local SeaweedFS (the real S3 server tests use) when installed, else the file store."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        from tests.s3servers import new_bucket, s3_env, start_seaweedfs
    except ImportError:
        store = town.dir / "store"
        store.mkdir(exist_ok=True)
        say(f"snapshots: file store {store} (SeaweedFS not installed)")
        return {"GASTOWN_SNAPSHOT_URL": f"file://{store}"}
    server = await asyncio.to_thread(start_seaweedfs, town.dir / "s3")
    town.stoppers.append(lambda: asyncio.to_thread(server.stop))
    await asyncio.to_thread(new_bucket, server, "gastown")
    say(f"snapshots: SeaweedFS S3 at {server.endpoint}, bucket gastown")
    return {**s3_env(server, "gastown"), "GASTOWN_SNAPSHOT_URL": "s3://gastown/snapshots"}


async def _last_reply(town: Town, container_url: str, agent_id: str) -> str:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    texts: dict[str, str] = {}
    after = 0
    while time.monotonic() < deadline:
        data = await town.call("GET", f"{container_url}/agents/{agent_id}/events?after={after}", town.control_token)
        for e in data["events"]:
            after = e["id"]
            part = (e.get("data") or {}).get("part") or {}
            if e["type"] == "message.part.updated" and part.get("type") == "text" and part.get("text"):
                texts[part["messageID"]] = part["text"]
            if e["type"] == "session.idle" and texts:
                return list(texts.values())[-1]
        await asyncio.sleep(0.3)
    raise RuntimeError("the mayor did not answer in time")


async def up(state_dir: Path) -> int:
    town = Town(state_dir)
    town.dir.mkdir(parents=True, exist_ok=True)
    town.http = aiohttp.ClientSession()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GASTOWN_", "AWS_"))}
    gastown = [sys.executable, "-m", "gastown.cli"]
    try:
        say(f"gastown up: state in {town.dir}")
        provider_env, model = await _model_provider(town, base_env)
        worker_port, container_port = _free_port(), _free_port()
        worker_url, container_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{container_port}"
        worker_env = {**base_env, "GASTOWN_ADMIN_TOKEN": town.admin_token, "GASTOWN_JWT_SECRET": secrets.token_urlsafe(32)}
        say("starting worker API …")
        await town.spawn("worker", [*gastown, "worker", "--port", str(worker_port), "--db", str(town.dir / "worker.db")], worker_env)
        await town.wait_http(f"{worker_url}/alive")
        created = await town.call("POST", f"{worker_url}/api/towns", town.admin_token, {
            "name": "local town", "container_url": container_url, "control_token": town.control_token, "default_model": model})
        town_id, container_token = created["town_id"], created["container_token"]
        mayor = await town.call("POST", f"{worker_url}/api/towns/{town_id}/agents", town.admin_token,
                                {"agent_id": "mayor", "role": "mayor", "name": "Mayor"})
        store_env = await _object_store(town)
        container_env = {
            **base_env, **provider_env, **store_env,
            "GASTOWN_TOWN_ID": town_id, "GASTOWN_API_URL": worker_url, "GASTOWN_CONTAINER_TOKEN": container_token,
            "GASTOWN_CONTROL_TOKEN": town.control_token, "GASTOWN_DATA_DIR": str(town.dir / "data"),
        }
        say("starting container runtime …")
        await town.spawn("container", [*gastown, "container", "--host", "127.0.0.1", "--port", str(container_port)], container_env)
        await town.wait_http(f"{container_url}/ready")
        say("starting the mayor (kilo takes a few seconds) …")
        t0 = time.monotonic()
        await town.call("POST", f"{container_url}/agents/start", town.control_token, {
            "agent_id": mayor["agent_id"], "town_id": town_id, "rig_id": f"mayor-{town_id}", "role": "mayor", "name": "Mayor",
            "model": model, "prompt": "Mayor ready. Greet the user in one short sentence."})
        reply = await _last_reply(town, container_url, mayor["agent_id"])
        say(f"mayor replied after {time.monotonic() - t0:.1f}s: {reply}")
        say(json.dumps({"worker_url": worker_url, "container_url": container_url, "town_id": town_id,
                        "admin_token": town.admin_token, "control_token": town.control_token}))
        say("try:")
        say(f"  curl -s -H 'Authorization: Bearer {town.control_token}' {container_url}/agents")
        say(f"  curl -s -X POST -H 'Authorization: Bearer {town.control_token}' -H 'Content-Type: application/json' "
            f"-d '{{\"prompt\": \"What can you do?\"}}' {container_url}/agents/mayor/message")
        say(f"  curl -s -H 'Authorization: Bearer {town.control_token}' '{container_url}/agents/mayor/events?after=0'")
        say(f"  curl -s -H 'Authorization: Bearer {town.admin_token}' {worker_url}/api/towns/{town_id}/agents")
        say("town is up — Ctrl-C to stop")
        await stop.wait()
        return 0
    except Exception as e:
        say(f"gastown up failed: {e}")
        return 1
    finally:
        say("stopping town …")
        await town.stop_all()
        say("stopped")


def run_up(state_dir: str) -> int:
    return asyncio.run(up(Path(state_dir)))
