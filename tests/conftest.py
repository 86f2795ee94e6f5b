"""Shared fixtures: the scripted model, an in-process container runtime serving on a real port, an
in-process worker, and helpers to inspect real kilo processes.

Layers: ``tests/unit`` (in-process only: no kilo, no S3 server, no child servers but the session's
PostgreSQL server, which the worker's store tests run on beside SQLite; loopback sockets of in-process
aiohttp apps are fine), ``tests/integration`` (real S3 servers, git, the plugin and
worker as processes, the image layout), ``tests/e2e`` (real ``kilo serve``, marked ``kilo``)."""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import psutil
import pytest
from aiohttp.test_utils import TestServer

from control_server.app import create_app
from supervisor.config import RuntimeConfig, default_kilo_bin
from supervisor.runtime import ContainerRuntime
from gastown.local.scripted_model import FakeLLM
from tests.pgserver import PgServer, start_pg

CONTROL_TOKEN = "ctl-test-token-0123456789"
KILO_BIN = default_kilo_bin()


def _trust_agent_repositories() -> None:
    """Agents run as users of their own (``supervisor.isolation``), so a test's own ``git`` reading
    an agent's workspace meets a repository another user owns; git 2.39 trusts one only through
    global config. The runtime's git never reads this (it builds its env from nothing)."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gastown-tests-{os.getuid()}.gitconfig"
    if not path.exists():
        path.write_text("[safe]\n\tdirectory = *\n")
    os.environ["GIT_CONFIG_GLOBAL"] = str(path)


_trust_agent_repositories()
# The suite's rigs are local repositories and a forge on loopback: the development opt-in of
# gastown.contract.git, inherited by every worker and container process the tests start.
os.environ["GASTOWN_ALLOW_LOCAL_GIT"] = "1"


def pytest_configure(config):
    """A temp root of this run's own instead of the shared ``/tmp/pytest-of-<user>``: agents run as
    users of their own and reach their dirs through the search bit the runtime adds on the way, and
    every new pytest session resets ``pytest-of-<user>`` to 0700 — a second session on the machine
    would cut the first one's agents off their files. (xdist gives each worker a subdir of it.)"""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="gastown-tests-")
        config._gastown_basetemp = config.option.basetemp


def pytest_unconfigure(config):
    own = getattr(config, "_gastown_basetemp", None)
    if own and getattr(config, "_gastown_passed", False):
        shutil.rmtree(own, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    session.config._gastown_passed = exitstatus == 0


def pytest_collection_modifyitems(config, items):
    """A missing kilo is a broken install, not a reason to skip: fail loudly, but only when a test
    that needs it was collected (``tests/unit`` runs on a checkout without ``npm install``)."""
    if not Path(KILO_BIN).exists() and any(item.get_closest_marker("kilo") for item in items):
        raise pytest.UsageError(f"kilo binary missing at {KILO_BIN}: run `make test` (it installs it)")


@pytest.fixture(scope="session")
def pg_server() -> Any:
    """One real PostgreSQL server per test process (initdb + pg_ctl: ~2 s), a database per test."""
    server: PgServer = start_pg()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a worker's store lives: a SQLite file, or a fresh database on the real PostgreSQL
    server. Every test that builds a worker on it runs on both engines."""
    if request.param == "sqlite":
        return str(tmp_path / "worker.db")
    return request.getfixturevalue("pg_server").new_database()


class PatientFakeLLM(FakeLLM):
    """The fake model with a longer default wait: under load a kilo turn can take a minute."""

    async def wait_for(self, predicate=lambda r: True, timeout: float = 120.0):
        return await super().wait_for(predicate, timeout)


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    async with PatientFakeLLM(slow_interval=0.5) as llm:
        yield llm


@dataclass
class Container:
    runtime: ContainerRuntime
    server: TestServer
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def request(self, method: str, path: str, *, token: str | None = CONTROL_TOKEN, **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = await resp.text()
            return resp.status, body

    async def start_agent(self, **overrides: Any) -> tuple[int, Any]:
        return await self.request("POST", "/agents/start", json=start_body(**overrides))

    async def wait_status(self, agent_id: str, pred: Callable[[dict], bool], timeout: float = 120.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status, body = await self.request("GET", f"/agents/{agent_id}/status")
            if status == 200 and pred(body):
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"status of {agent_id} never matched: {body}")
            await asyncio.sleep(0.1)


def start_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "agent_id": "polecat-1",
        "town_id": "town-test",
        "rig_id": "rig-1",
        "role": "polecat",
        "name": "Toast",
        "prompt": "Please say hello",
        "model": "fake/m1",
    }
    body.update(overrides)
    return body


@pytest.fixture
def runtime_config(tmp_path: Path, fake_llm: FakeLLM) -> RuntimeConfig:
    return RuntimeConfig(
        data_dir=tmp_path / "data",
        control_token=CONTROL_TOKEN,
        kilo_providers=fake_llm.provider_config(),
        heartbeat_interval_s=30.0,
        memory_log_interval_s=30.0,
        # Generous budgets: a busy CI box runs several kilo starts at once on 2 cores.
        kilo_start_timeout_s=120.0,
        hot_swap_timeout_s=90.0,
        health_timeout_s=10.0,
        health_failures=6,
    )


@pytest.fixture
async def make_container() -> AsyncIterator[Callable[..., Any]]:
    made: list[Container] = []

    async def factory(cfg: RuntimeConfig) -> Container:
        runtime = ContainerRuntime(cfg)
        server = TestServer(create_app(runtime), host="127.0.0.1")
        await server.start_server()
        await runtime.start()
        c = Container(runtime, server, aiohttp.ClientSession())
        made.append(c)
        return c

    yield factory
    for c in made:
        await c.runtime.shutdown()
        await c.server.close()
        await c.http.close()


@pytest.fixture
async def container(make_container, runtime_config: RuntimeConfig) -> Container:
    return await make_container(runtime_config)


ADMIN_TOKEN = "admin-test-token-0123456789"
JWT_SECRET = "jwt-test-secret-0123456789abcdef"


@dataclass
class Worker:
    server: TestServer
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def request(self, method: str, path: str, *, token: str | None = ADMIN_TOKEN, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    async def create_town(self, control_token: str = CONTROL_TOKEN, **extra: Any) -> tuple[str, str]:
        body = {"name": "test town", "container_url": "http://127.0.0.1:9", "control_token": control_token, **extra}
        status, data = await self.request("POST", "/api/towns", json=body)
        assert status == 201, data
        return data["town_id"], data["container_token"]

    async def events(self, town_id: str) -> list[dict[str, Any]]:
        from worker_api.appkeys import DB

        db = self.server.app[DB]
        rows = await db.run(lambda conn: [dict(r) for r in conn.execute(
            "SELECT * FROM town_events WHERE town_id = ? ORDER BY id", (town_id,))])
        return rows


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    from worker_api.app import create_app as create_worker_app

    app = create_worker_app(tmp_path / "worker.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    w = Worker(server, aiohttp.ClientSession())
    yield w
    await w.http.close()
    await server.close()


@pytest.fixture
async def town(worker: Worker, runtime_config: RuntimeConfig, make_container) -> tuple[Worker, Container, str]:
    """A worker with one town and a container wired to it (api url, container token, town id)."""
    town_id, container_token = await worker.create_town()
    runtime_config.town_id = town_id
    runtime_config.api_url = worker.url
    runtime_config.container_token = container_token
    container = await make_container(runtime_config)
    return worker, container, town_id


def kilo_processes() -> list[psutil.Process]:
    """Every kilo serve process started from this checkout's binary by this test process."""
    me = os.getpid()
    out = []
    for p in psutil.process_iter(["exe", "cmdline", "ppid"]):
        try:
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0] == KILO_BIN and "serve" in cmd and p.info["ppid"] == me:
                out.append(p)
        except psutil.Error:
            continue
    return out
