"""Shared helpers for the kilo-backed benchmarks: an offline model, an in-process container and
worker served like production (``AppRunner``, no access log), a bare ``kilo serve`` started by hand,
percentiles, and a leak check for every kilo this process started.

Runtime logs go to a file (formatting cost included, stdout kept for the JSON result lines);
progress goes to stderr.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import statistics
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import aiohttp
import psutil
from aiohttp import web

from control_server.app import create_app
from gastown.core import jsonlog
from supervisor.config import RuntimeConfig, default_kilo_bin
from supervisor.kilo_client import KiloClient
from supervisor.kilo_env import (
    AgentPaths, build_child_env, build_kilo_config, config_content, git_identity, split_model,
)
from supervisor.kilo_process import KiloProcess, allocate_port
from supervisor.models import StartAgentRequest
from supervisor.runtime import ContainerRuntime
from supervisor.workspace import prepare_workspace
from gastown.local.scripted_model import FakeLLM

KILO_BIN = default_kilo_bin()
CONTROL_TOKEN = "ctl-bench-token-0123456789"
ADMIN_TOKEN = "admin-bench-token-0123456789"
JWT_SECRET = "jwt-bench-secret-0123456789abcdef"
TOWN = "town-bench"


# -- output ---------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def machine() -> dict[str, Any]:
    """Context for reading a figure on a shared box: cores, load, free memory."""
    la = os.getloadavg()
    return {"cpus": os.cpu_count(), "load1": round(la[0], 2),
            "mem_available_gb": round(psutil.virtual_memory().available / 2**30, 1)}


def configure_runtime_log(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonlog.configure("INFO", stream=open(path, "a", buffering=1))  # noqa: SIM115 (lives with the process)


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# -- statistics -----------------------------------------------------------------------------------
def pct(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): an observed value, never an interpolation."""
    v = sorted(values)
    if not v:
        return math.nan
    k = max(1, math.ceil(p / 100 * len(v)))
    return v[k - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def ms_list(values: Iterable[float]) -> list[float]:
    return [ms(v) for v in values]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def abba(n_pairs: int, first: str = "A") -> list[str]:
    """Interleaving A B B A A B ... (or B A A B ... with ``first="B"``): drift on a shared machine
    hits both sides alike."""
    x, y = ("A", "B") if first == "A" else ("B", "A")
    out: list[str] = []
    for i in range(n_pairs):
        out += [x, y] if i % 2 == 0 else [y, x]
    return out


# -- processes ------------------------------------------------------------------------------------
def my_kilos() -> list[psutil.Process]:
    """Every ``kilo serve`` descending from this process (other sessions' kilos are not ours)."""
    out = []
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return out
    for p in children:
        try:
            cmd = p.cmdline()
            if cmd and cmd[0] == KILO_BIN and "serve" in cmd and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


async def assert_no_kilo_left(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = my_kilos()
        if not left:
            return
        if time.monotonic() > deadline:
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            raise RuntimeError(f"kilo processes left behind (killed now): {[p.pid for p in left]}")
        await asyncio.sleep(0.1)


def tree_cpu_percent(pids: list[int], window: float) -> float:
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    time.sleep(window)
    total = 0.0
    for p in procs:
        try:
            total += p.cpu_percent(None)
        except psutil.Error:
            pass
    return total


async def settle(pids: list[int], *, below: float = 10.0, window: float = 0.25, max_s: float = 8.0) -> float:
    """Wait until a kilo tree is quiet (CPU% over ``window`` below ``below``); returns seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        if await asyncio.to_thread(tree_cpu_percent, pids, window) < below:
            break
    return round(time.monotonic() - t0, 2)


# -- the offline model ----------------------------------------------------------------------------
@asynccontextmanager
async def fake_llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(slow_interval=0.5) as llm:
        yield llm


def runtime_config(data_dir: Path, llm: FakeLLM, **overrides: Any) -> RuntimeConfig:
    # No idle stops during a run: on a loaded box hydration can outlast the 120 s idle timeout.
    cfg = RuntimeConfig(data_dir=data_dir, control_token=CONTROL_TOKEN, kilo_providers=llm.provider_config(),
                        heartbeat_interval_s=30.0, memory_log_interval_s=30.0, idle_timeout_s=3600.0)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def start_body(**overrides: Any) -> dict[str, Any]:
    body = {"agent_id": "polecat-1", "town_id": TOWN, "rig_id": "rig-1", "role": "polecat", "name": "Toast",
            "prompt": "Please say hello", "model": "fake/m1"}
    body.update(overrides)
    return body


# -- HTTP servers like production -----------------------------------------------------------------
async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


class _Http:
    url: str
    http: aiohttp.ClientSession
    token: str

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", **(kw.pop("headers", None) or {})}
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


@dataclass
class Container(_Http):
    runtime: ContainerRuntime
    runner: web.AppRunner
    url: str
    http: aiohttp.ClientSession
    token: str = CONTROL_TOKEN
    closed: bool = field(default=False)

    async def start_agent(self, **overrides: Any) -> tuple[int, Any]:
        return await self.request("POST", "/agents/start", json=start_body(**overrides))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.runtime.shutdown("bench done")
        finally:
            await self.http.close()
            await self.runner.cleanup()


async def start_container(cfg: RuntimeConfig) -> Container:
    """Serve the control API first, then start the runtime (boot hydration runs in the background),
    as ``gastown container`` does."""
    runtime = ContainerRuntime(cfg)
    runner, url = await _serve(create_app(runtime))
    await runtime.start()
    return Container(runtime, runner, url, aiohttp.ClientSession())


@dataclass
class Worker(_Http):
    runner: web.AppRunner
    url: str
    http: aiohttp.ClientSession
    token: str = ADMIN_TOKEN

    async def create_town(self, **extra: Any) -> tuple[str, str]:
        body = {"name": "bench town", "container_url": "http://127.0.0.1:9", "control_token": CONTROL_TOKEN, **extra}
        status, data = await self.request("POST", "/api/towns", json=body)
        assert status == 201, data
        return data["town_id"], data["container_token"]

    async def close(self) -> None:
        await self.http.close()
        await self.runner.cleanup()


async def start_worker(db_path: Path) -> Worker:
    """The worker API without reconciler loops: the benchmarks drive the container directly."""
    from worker_api.app import create_app as create_worker_app

    app = create_worker_app(db_path, admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, run_reconciler=False)
    runner, url = await _serve(app)
    return Worker(runner, url, aiohttp.ClientSession())


# -- a bare kilo, by hand -------------------------------------------------------------------------
@dataclass
class BareKilo:
    proc: KiloProcess
    client: KiloClient
    session_id: str
    phases: dict[str, float]

    async def close(self) -> None:
        await self.client.close()
        await self.proc.stop(timeout=5.0)


def prepare_bare(cfg: RuntimeConfig, req: StartAgentRequest) -> AgentPaths:
    """Same on-disk layout and git workspace the runtime gives an agent (kilo wants a repo); untimed."""
    paths = AgentPaths.for_agent(cfg.data_dir, req.agent_id)
    paths.make_dirs()
    git_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(paths.home), "GIT_TERMINAL_PROMPT": "0",
               **git_identity(req)}
    prepare_workspace(req, paths.workdir, git_env)
    return paths


async def bare_start(cfg: RuntimeConfig, req: StartAgentRequest, paths: AgentPaths) -> BareKilo:
    """What a start must do at minimum: spawn ``kilo serve`` with the env the runtime would build,
    wait for its listening line, create a session and send the prompt. Timed from the first call."""
    t0 = time.perf_counter()
    password = secrets.token_urlsafe(24)
    config = build_kilo_config(req, providers=cfg.kilo_providers, kilocode_token=None,
                               plugin_command=cfg.plugin_command, api_url=None)
    env = build_child_env(req, paths=paths, kilo_bin=cfg.kilo_bin, config_json=config_content(config),
                          password=password, parent_pid=os.getpid(), api_url=None,
                          kilocode_token=None)
    proc = await KiloProcess.spawn(cfg.kilo_bin, env=env, cwd=str(paths.workdir), port=allocate_port())
    try:
        url = await proc.wait_listening(60.0)
        t_listen = time.perf_counter()
        client = KiloClient(url, password, timeout_s=cfg.kilo_request_timeout_s)
        session = await client.create_session(f"{req.role.value} {req.name}")
        t_session = time.perf_counter()
        await client.prompt_async(session["id"], req.prompt, model=split_model(req.model, cfg.kilo_providers))
        t_prompt = time.perf_counter()
    except BaseException:
        await proc.stop(timeout=3.0)
        raise
    return BareKilo(proc, client, session["id"], {
        "listening_s": t_listen - t0, "session_s": t_session - t_listen, "prompt_s": t_prompt - t_session,
        "total_s": t_prompt - t0})


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
