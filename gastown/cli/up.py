"""``gastown up``: a whole local town in one command (what ``make run`` calls).

Starts, as child processes on loopback: the local scripted model (only when no real provider is
configured), SeaweedFS, the worker API and the town's container; creates (or, on a rerun in the same
state dir, reuses) the town and its mayor, gets the mayor's first reply and prints URLs, tokens and
example commands. The state file (``localtown``) lets a rerun and the operator commands find it all.

Stopping: SIGINT, SIGTERM or SIGHUP drains the container and stops every child in reverse order; a
second signal kills them at once. Each child carries a parent-death signal, so even a SIGKILL of
``gastown up`` leaves nothing running, and output to a closed pipe or terminal never aborts the
cleanup (``make run | tee log`` + Ctrl-C kills ``tee`` first).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from gastown.cli import upimage
from gastown.cli.localtown import STATE_FILE, TownState
from gastown.cli.upprocs import Children, Output
from gastown.contract.git import ALLOW_LOCAL_ENV
from gastown.core.ports import free_port, port_is_free

STEP_TIMEOUT_S = 90.0
PORT_WAIT_S = 10.0
GREETING = "Mayor ready. Greet the user in one short sentence."
WELCOME_BACK = "The town was restarted. Greet the user again in one short sentence."


class UpError(Exception):
    """A step failed: one line for the user, then the cleanup."""


class Town:
    def __init__(self, state_dir: Path, out: Output, image: str | None = None) -> None:
        self.dir = state_dir.resolve()
        self.out = out
        self.image = image  # run the container from this image (gastown.cli.upimage)
        self.children = Children(self.dir)
        self.http = aiohttp.ClientSession()
        self.state: TownState | None = None

    async def wait_http(self, url: str, timeout: float = STEP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            self.children.check_alive()
            await asyncio.sleep(0.25)
        raise UpError(f"{url} did not answer within {timeout:.0f}s")

    async def call(self, method: str, url: str, token: str, body: Any = None,
                   ok: tuple[int, ...] = (200, 201, 202)) -> tuple[int, Any]:
        async with self.http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S)) as r:
            data = await r.json(content_type=None)
            if r.status not in ok:
                raise UpError(f"{method} {url} -> {r.status}: {data}")
            return r.status, data

    async def close(self) -> None:
        if self.image and self.state is not None and self.state.town_id:
            await upimage.stop_town_container(self.state.town_id)  # drains while the worker still runs
        await self.children.stop_all()
        await self.http.close()


def _lock(directory: Path) -> int:
    """One ``gastown up`` per state dir: a second one would fight over ports and the worker DB."""
    fd = os.open(directory / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UpError(f"another gastown up is running with state dir {directory}") from None
    return fd


PREVIOUS_STATE = ("worker.db", "worker.db-wal", "worker.db-shm", "data", "s3", "forge", STATE_FILE)
DEMO_REPO = "demo"


async def _ports_free(state: TownState, wait_s: float = PORT_WAIT_S) -> bool:
    """The last run's ports, given a few seconds: after a SIGKILL of ``gastown up`` its children are
    still going away (their parent-death signal is a SIGTERM) when the lock is already free."""
    deadline = time.monotonic() + wait_s
    ports = [state.worker_port, state.container_port] + ([state.forge_port] if state.forge_port else [])
    while not all(port_is_free(p) for p in ports):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)
    return True


def _set_aside(directory: Path) -> Path | None:
    """Move the previous run's state under ``previous-<time>/`` (never delete a mayor's history)."""
    present = [n for n in PREVIOUS_STATE if (directory / n).exists()]
    if not present:
        return None
    aside = directory / time.strftime("previous-%Y%m%d-%H%M%S")
    aside.mkdir(mode=0o700)
    for name in present:
        os.replace(directory / name, aside / name)
    return aside


async def _load_or_new_state(town: Town) -> TownState:
    """Reuse the last run's ports and tokens when its state is whole and its ports are free again;
    otherwise start a clean town (and say why), with the old state moved aside."""
    old = TownState.load(town.dir)
    if old is not None and (town.dir / "worker.db").exists():
        if await _ports_free(old):
            town.out.say(f"reusing the town of the previous run in {town.dir}")
            return old
        why = f"ports {old.worker_port}/{old.container_port} of the previous run are taken"
    else:
        why = "no complete state of a previous run"
    aside = _set_aside(town.dir)
    town.out.say(f"{why}: starting a new town" + (f" (previous state moved to {aside})" if aside else ""))
    return TownState.new(free_port(), free_port())


async def _model_provider(town: Town, env: dict[str, str]) -> tuple[dict[str, str], str]:
    """A real provider when configured; otherwise the local scripted model (labelled as such)."""
    if os.environ.get("GASTOWN_KILO_PROVIDERS") or os.environ.get("KILOCODE_TOKEN"):
        model = os.environ.get("GASTOWN_MODEL", "anthropic/claude-sonnet-4")
        town.out.say(f"model: {model} (real provider from your environment)")
        passed = {k: os.environ[k] for k in ("GASTOWN_KILO_PROVIDERS", "KILOCODE_TOKEN") if os.environ.get(k)}
        return passed, model  # the base env drops GASTOWN_*: hand the provider to the container
    from gastown.local.scripted_model import provider_config_for

    proc = await town.children.spawn("scripted-model", [sys.executable, "-m", "gastown.local.scripted_model", "--port", "0"],
                                     env, stdout_pipe=True)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    base_url = json.loads(line)["fake_llm"]
    town.out.say(f"model: fake/m1 — LOCAL SCRIPTED MODEL at {base_url} (no real provider configured;"
                 " set GASTOWN_KILO_PROVIDERS or KILOCODE_TOKEN for a real one)")
    return {"GASTOWN_KILO_PROVIDERS": json.dumps(provider_config_for(base_url, ("m1", "m2")))}, "fake/m1"


async def _object_store(town: Town, state: TownState) -> tuple[dict[str, str], dict[str, str]]:
    """A local SeaweedFS (the real S3 server the tests use) when installed, else the file store.
    The worker's env and the container's: with SeaweedFS only the worker holds the store's keys and
    the container asks it for presigned requests (``worker:``)."""
    from gastown.local import s3servers

    if not (s3servers.BIN_DIR / "weed").exists():
        store = town.dir / "store"
        store.mkdir(exist_ok=True)
        town.out.say(f"snapshots: file store {store} (SeaweedFS not installed)")
        return {}, {"GASTOWN_SNAPSHOT_URL": f"file://{store}"}
    server = s3servers.start_seaweedfs(town.dir / "s3", base_port=state.s3_base_port, wait=False)
    town.children.adopt("seaweedfs", server.proc)
    state.s3_base_port = server.ports[0]
    await asyncio.to_thread(s3servers.wait_ready, server, 60)
    created = await asyncio.to_thread(s3servers.ensure_bucket, server, "gastown")
    town.out.say(f"snapshots: SeaweedFS S3 at {server.endpoint}, bucket gastown ({'created' if created else 'reused'}),"
                 " through the worker (the container holds no store key)")
    return ({**s3servers.s3_env(server, "gastown"), "GASTOWN_SNAPSHOT_URL": "s3://gastown/snapshots"},
            {"GASTOWN_SNAPSHOT_URL": "worker:"})


async def _forge(town: Town, state: TownState, env: dict[str, str]) -> tuple[str, str]:
    """The local git forge (git smart HTTP, token auth, the GitHub API subset) with a private
    ``demo`` repo; its clone URL and the API URL the worker's SCM adapter is pointed at."""
    port = state.forge_port or free_port()
    proc = await town.children.spawn("forge", [sys.executable, "-m", "gastown.local.forge", "--root",
                                               str(town.dir / "forge"), "--port", str(port), "--repo", DEMO_REPO],
                                     {**env, "GASTOWN_FORGE_TOKEN": state.forge_token}, stdout_pipe=True)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), STEP_TIMEOUT_S)
    info = json.loads(line)
    state.forge_port = port
    town.out.say(f"forge: git smart HTTP at {info['forge']}, private repo {info['repos'][DEMO_REPO]},"
                 f" GitHub API at {info['api']}")
    return info["repos"][DEMO_REPO], info["api"]


async def _ensure_rig(town: Town, state: TownState, git_url: str) -> None:
    """Rig ``demo`` on the forge's repo, its credential set (agents get it through git's helper)."""
    base = f"{state.worker_url}/api/towns/{state.town_id}/rigs"
    status, _ = await town.call("POST", base, state.admin_token, {"rig_id": DEMO_REPO, "name": DEMO_REPO,
                                                                   "git_url": git_url}, ok=(201, 409))
    await town.call("PUT", f"{base}/{DEMO_REPO}/scm", state.admin_token, {"github_token": state.forge_token})
    town.out.say(f"rig {DEMO_REPO}: {'created' if status == 201 else 'reused'} ({git_url})")


async def _ensure_town(town: Town, state: TownState, model: str) -> tuple[str, str]:
    """The town id and a fresh container token; the town is created when the worker has none."""
    worker, admin = state.worker_url, state.admin_token
    if state.town_id:
        status, _ = await town.call("GET", f"{worker}/api/towns/{state.town_id}", admin, ok=(200, 404))
        if status == 200:
            _, tok = await town.call("POST", f"{worker}/api/towns/{state.town_id}/refresh-container-token", admin)
            town.out.say(f"town {state.town_id}: reused")
            return state.town_id, tok["token"]
    # With --image the worker's provider picks the container's URL; the control token stays ours (operator commands).
    where = {"control_token": state.control_token} if town.image else {"container_url": state.container_url,
                                                                          "control_token": state.control_token}
    _, created = await town.call("POST", f"{worker}/api/towns", state.user_token, {
        "name": "local town", **where, "default_model": model})
    town.out.say(f"town {created['town_id']}: created")
    return created["town_id"], created["container_token"]


async def _ensure_user(town: Town, state: TownState) -> None:
    """The local user ("local") who owns the town and talks to its mayor; made once, kept in the state."""
    if state.user_token:
        status, _ = await town.call("GET", f"{state.worker_url}/api/towns", state.user_token, ok=(200, 401))
        if status == 200:
            return
    _, user = await town.call("POST", f"{state.worker_url}/api/users", state.admin_token, {"name": "local"})
    state.user_token = user["token"]
    state.save(town.dir)


async def _greet(town: Town, state: TownState, first: bool) -> str:
    """A message to the mayor through the worker's front door (the worker starts it, or finds it
    resumed by boot hydration), and its reply, read back from the conversation."""
    base, tok = f"{state.worker_url}/api/towns/{state.town_id}/mayor/messages", state.user_token
    status, convo = await town.call("GET", base, tok, ok=(200, 403))
    if status == 403:  # a town made before the local user existed: the admin speaks for it
        tok = state.admin_token
        _, convo = await town.call("GET", base, tok)
    seen = len(convo["messages"])
    text = GREETING if first else WELCOME_BACK
    await town.call("POST", base, tok, {"text": text})
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        _, convo = await town.call("GET", f"{base}?after={seen}", tok)
        msgs = convo["messages"]
        asked = next((i for i, m in enumerate(msgs) if m["role"] == "user" and m["text"] == text), None)
        reply = next((m["text"] for m in msgs[asked + 1:] if m["role"] == "assistant"), None) if asked is not None else None
        if reply:
            return str(reply)
        await asyncio.sleep(0.5)
    raise UpError("the mayor did not answer in time")


def _banner(town: Town, state: TownState) -> None:
    say, w = town.out.say, state.worker_url
    say(json.dumps({"worker_url": w, "container_url": state.container_url, "town_id": state.town_id,
                    "user_token": state.user_token, "admin_token": state.admin_token,
                    "control_token": state.control_token}))
    say(f"state: {town.dir / STATE_FILE} (gastown chat / agents / logs / town status read it)")
    say("talk to the mayor:")
    say("  gastown chat")
    say(f"  gastown chat --url {w} --town {state.town_id} --token {state.user_token}")
    say("or look around:")
    say("  gastown agents")
    say("  gastown town status")
    say(f"  curl -s -X POST -H 'Authorization: Bearer {state.user_token}' -H 'Content-Type: application/json' "
        f"-d '{{\"text\": \"What can you do?\"}}' {w}/api/towns/{state.town_id}/mayor/messages")
    say(f"  curl -sN -H 'Authorization: Bearer {state.user_token}' {w}/api/towns/{state.town_id}/events/stream")
    say("town is up — Ctrl-C to stop")


async def _bring_up(town: Town) -> None:
    """Bring the town up, then serve until cancelled (the signal handler cancels this task)."""
    # A local town on this machine: its forge listens on loopback (gastown.contract.git).
    base_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GASTOWN_", "AWS_"))},
                ALLOW_LOCAL_ENV: "1"}
    gastown = [sys.executable, "-m", "gastown.cli"]
    town.out.say(f"gastown up: state in {town.dir}")
    state = town.state = await _load_or_new_state(town)
    provider_env, model = await _model_provider(town, base_env)
    worker_store_env, store_env = await _object_store(town, state)
    repo_url, forge_api = await _forge(town, state, base_env)
    state.save(town.dir)
    town.out.say("starting worker API …")
    worker_env = {**base_env, **worker_store_env, "GASTOWN_ADMIN_TOKEN": state.admin_token,
                  "GASTOWN_JWT_SECRET": state.jwt_secret, "GASTOWN_GITHUB_API_URL": forge_api}
    worker_args: list[str] = []
    if town.image:  # the worker starts the container from the image when the greeting arrives
        shared = {**provider_env, ALLOW_LOCAL_ENV: "1"}
        worker_env.update({"DOCKER_HOST": await upimage.start_engine(town.children, town.dir, base_env),
                           "GASTOWN_CONTAINER_ENV_FILE": str(upimage.container_env_file(town.dir, shared))})
        worker_args = ["--containers", "docker", "--image", town.image]
        town.out.say(f"container: image {town.image} through podman (started by the worker on the first message)")
    await town.children.spawn("worker", [*gastown, "worker", "--port", str(state.worker_port),
                                         "--db", str(town.dir / "worker.db"), *worker_args], worker_env)
    await town.wait_http(f"{state.worker_url}/alive")
    await _ensure_user(town, state)
    first = not state.town_id
    state.town_id, container_token = await _ensure_town(town, state, model)
    state.save(town.dir)
    await _ensure_rig(town, state, repo_url)
    if not town.image:
        await _start_container_process(town, state, {**base_env, **provider_env, **store_env}, container_token)
    town.out.say("starting the mayor (kilo takes a few seconds) …")
    t0 = time.monotonic()
    reply = await _greet(town, state, first)
    town.out.say(f"mayor replied after {time.monotonic() - t0:.1f}s: {reply}")
    if town.image:  # where the provider put it (an idle stop and a restart may move it: rerun to refresh)
        _, info = await town.call("GET", f"{state.worker_url}/api/towns/{state.town_id}", state.admin_token)
        state.container_port = int(str(info["container_url"]).rsplit(":", 1)[1])
        state.save(town.dir)
    _banner(town, state)
    await asyncio.get_running_loop().create_future()


async def _start_container_process(town: Town, state: TownState, env: dict[str, str], container_token: str) -> None:
    gastown = [sys.executable, "-m", "gastown.cli"]
    container_env = {
        **env,
        "GASTOWN_TOWN_ID": state.town_id, "GASTOWN_API_URL": state.worker_url, "GASTOWN_CONTAINER_TOKEN": container_token,
        "GASTOWN_CONTROL_TOKEN": state.control_token, "GASTOWN_DATA_DIR": str(town.dir / "data"),
    }
    town.out.say("starting container runtime …")
    # SIGKILL on parent death: a drain needs the worker, which dies with us too.
    await town.children.spawn("container", [*gastown, "container", "--host", "127.0.0.1", "--port", str(state.container_port)],
                              container_env, death_signal=signal.SIGKILL)
    await town.wait_http(f"{state.container_url}/ready", timeout=600)


async def up(state_dir: Path, image: str | None = None) -> int:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = Output(state_dir / "up.log")
    try:
        lock = _lock(state_dir)
    except UpError as e:
        out.say(f"gastown up: {e}")
        return 2
    town = Town(state_dir, out, image)
    task = asyncio.ensure_future(_bring_up(town))
    stopping = False

    def on_signal(signum: int) -> None:
        nonlocal stopping
        if stopping:
            town.children.kill_all()
            return
        stopping = True
        out.say(f"{signal.Signals(signum).name}: stopping the town (again to kill at once) …")
        task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)
    code = 0
    try:
        await task
    except asyncio.CancelledError:
        if not stopping:
            raise
    except Exception as e:  # noqa: BLE001 - one line for the user, then the same cleanup
        out.say(f"gastown up failed: {e}")
        code = 1
    finally:
        out.say("stopping town …")
        await town.close()
        out.say("stopped")
        os.close(lock)
    return code


def run_up(state_dir: str, image: str | None = None) -> int:
    return asyncio.run(up(Path(state_dir), image))
