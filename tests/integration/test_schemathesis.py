"""Schemathesis against both running apps: no undocumented 5xx, every response matches the OpenAPI
document (status code, content type, body schema).

Each app serves on a real port from its own event-loop thread (schemathesis calls are blocking
``requests``); one test per documented operation, with positive and negative examples, bounded by
``GASTOWN_FUZZ_EXAMPLES`` (default 25) per operation and derandomized so CI runs are reproducible
(set ``GASTOWN_FUZZ_SEED`` to explore other examples).

Path ids are usually replaced by ids seeded beforehand (a town, agents, beads, a convoy), otherwise
nearly every case would stop at a 404 before reaching the handler.

Control server: ``kilo_bin`` points at a missing file, so a start that passes validation fails fast
with the documented 502 AGENT_START_FAILED instead of spawning kilo (0.5 GB, ~5 s each); generated
``git_url`` values are dropped so a start never clones anything. The module checks at the end that
no kilo process was left.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import psutil
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from control_server.app import build_openapi as control_openapi
from control_server.app import create_app as create_control_app
from supervisor.config import RuntimeConfig
from supervisor.runtime import ContainerRuntime
from gastown.local.s3servers import new_bucket, s3_env
from tests.conftest import ADMIN_TOKEN, CONTROL_TOKEN, JWT_SECRET
from tests.s3servers import seaweedfs  # noqa: F401 - fixture
from worker_api.app import create_app as create_worker_app
from worker_api.routes import build_openapi as worker_openapi
from worker_api.snapshot_access import SnapshotBroker

MAX_EXAMPLES = int(os.environ.get("GASTOWN_FUZZ_EXAMPLES", "25"))
MIN_EXAMPLES = min(MAX_EXAMPLES, 5)
BUDGET_S = float(os.environ.get("GASTOWN_FUZZ_BUDGET_S", "75"))
SEED = os.environ.get("GASTOWN_FUZZ_SEED")
TOWN = "town-fuzz"


class LoopThread:
    """An asyncio loop in a daemon thread: the servers live there, the blocking fuzz runs here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Budget:
    """Keeps the whole fuzz run near ``BUDGET_S``: each operation gets ``MAX_EXAMPLES`` unless the
    time per example measured so far says that would overrun (slow or loaded machine); then the
    remaining operations share what is left, never fewer than ``MIN_EXAMPLES`` each."""

    def __init__(self, seconds: float, operations: int) -> None:
        self.seconds, self.remaining = seconds, max(operations, 1)
        self.spent, self.examples = 0.0, 0

    def next_examples(self) -> int:
        if self.examples == 0:
            return MAX_EXAMPLES
        per_example = self.spent / self.examples
        share = (self.seconds - self.spent) / self.remaining
        return max(MIN_EXAMPLES, min(MAX_EXAMPLES, int(share / per_example)))

    def record(self, seconds: float, examples: int) -> None:
        self.spent += seconds
        self.examples += examples
        self.remaining = max(self.remaining - 1, 1)


@pytest.fixture(scope="session")
def budget(request: pytest.FixtureRequest) -> Budget:
    fuzz_tests = [i for i in request.session.items if i.module is not None and i.module.__name__ == __name__
                  and i.name.startswith(("test_control_server_conforms", "test_worker_api_conforms"))]
    return Budget(BUDGET_S, len(fuzz_tests))


REPORT: dict[str, dict[str, Any]] = {}  # per server: cases, statuses (``make fuzz`` writes it out)


@pytest.fixture(scope="session", autouse=True)
def fuzz_report() -> Iterator[None]:
    """With ``GASTOWN_FUZZ_REPORT`` set, the run's figures go there as JSON (the README quotes them)."""
    t0 = time.monotonic()
    yield
    path = os.environ.get("GASTOWN_FUZZ_REPORT")
    if path and REPORT:
        import json

        # Any 5xx an operation does not document fails the run; the documented ones (the control
        # server's 502 AGENT_START_FAILED: this harness gives it no kilo binary) are counted apart.
        out = {"examples_per_operation": MAX_EXAMPLES, "seconds": round(time.monotonic() - t0, 1), "servers": {
            name: {**r, "http_500": r["statuses"].get("500", 0),
                   "documented_5xx": sum(n for code, n in r["statuses"].items() if int(code) > 500)}
            for name, r in REPORT.items()}}
        Path(path).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


def _record(server: str, statuses: dict[int, int]) -> None:
    r = REPORT.setdefault(server, {"operations": 0, "cases": 0, "statuses": {}})
    r["operations"] += 1
    r["cases"] += sum(statuses.values())
    for code, n in statuses.items():
        r["statuses"][str(code)] = r["statuses"].get(str(code), 0) + n


def no_undocumented_server_error(ctx: Any, response: Any, case: Any) -> None:
    """Any 5xx fails unless the operation documents that exact status (502/503 on a few routes)."""
    if response.status_code >= 500 and str(response.status_code) not in case.operation.definition.raw["responses"]:
        raise AssertionError(f"undocumented server error {response.status_code}: {response.text[:500]}")


CHECKS = [no_undocumented_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def operation_ids(doc: dict[str, Any]) -> list[str]:
    return [f"{method.upper()} {path}" for path, item in doc["paths"].items() for method in item]


def _operation(schema: Any, label: str) -> Any:
    method, path = label.split(" ", 1)
    return schema[path][method]


def fuzz(
    operation: Any,
    *,
    base_url: str,
    session: requests.Session,
    headers: Callable[[Any], dict[str, str]],
    path_ids: dict[str, list[str]],
    adjust: Callable[[Any, Any], None] | None = None,
    budget: Budget | None = None,
) -> dict[int, int]:
    """Run bounded positive + negative examples of one operation; return the status histogram."""
    modes = [GenerationMode.POSITIVE]
    definition = operation.definition.raw
    if definition.get("parameters") or definition.get("requestBody"):
        modes.append(GenerationMode.NEGATIVE)
    strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))
    statuses: dict[int, int] = {}

    examples = budget.next_examples() if budget is not None else MAX_EXAMPLES

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=True,
    )
    @given(case=strategy, data=st.data())
    def run(case: Any, data: Any) -> None:
        for name, known in path_ids.items():
            if case.path_parameters and name in case.path_parameters and known:
                if data.draw(st.integers(0, 9), label=f"keep generated {name}") < 8:
                    case.path_parameters[name] = data.draw(st.sampled_from(known), label=name)
        if adjust is not None:
            adjust(case, data)
        sent = headers(data)
        response = case.call(base_url=base_url, session=session, headers=sent, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=sent)

    if SEED is not None:
        from hypothesis import seed

        run = seed(int(SEED))(run)
    t0 = time.monotonic()
    run()
    if budget is not None:
        budget.record(time.monotonic() - t0, sum(statuses.values()))
    if os.environ.get("GASTOWN_FUZZ_VERBOSE"):
        print(f"\n{operation.label} ({examples} examples, {time.monotonic() - t0:.1f}s): {dict(sorted(statuses.items()))}")
    return statuses


def kilo_children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "kilo" in p.name() or any("kilo" in part for part in p.cmdline()[:2]):
                out.append(p)
        except psutil.Error:
            continue
    return out


# ---------------------------------------------------------------- control server


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("fuzz-control")
    cfg = RuntimeConfig(
        data_dir=root / "data",
        control_token=CONTROL_TOKEN,
        town_id=TOWN,
        kilo_bin=str(root / "no-such-kilo"),  # every start that passes validation fails fast: 502
        heartbeat_interval_s=30.0,
        memory_log_interval_s=30.0,
        kilo_start_timeout_s=5.0,
    )
    lt = LoopThread()

    async def up() -> tuple[ContainerRuntime, TestServer]:
        runtime = ContainerRuntime(cfg)
        server = TestServer(create_control_app(runtime), host="127.0.0.1")
        await server.start_server()
        await runtime.start()
        return runtime, server

    runtime, server = lt.run(up())
    url = str(server.make_url("")).rstrip("/")
    session = requests.Session()
    auth = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
    # Seed records: failed starts leave agents in state "failed" to aim path ids at.
    seeded = []
    for agent_id, role in (("fuzz-polecat", "polecat"), ("fuzz-mayor", "mayor")):
        body = {"agent_id": agent_id, "town_id": TOWN, "rig_id": "rig-1", "role": role, "name": agent_id,
                "prompt": "hi", "model": "fake/m1", "lightweight": True}
        r = session.post(f"{url}/agents/start", json=body, headers=auth, timeout=30)
        assert r.status_code == 502 and r.json()["error"]["code"] == "AGENT_START_FAILED", r.text
        seeded.append(agent_id)
    try:
        yield {"url": url, "session": session, "runtime": runtime, "agents": seeded, "started": time.monotonic()}
    finally:
        session.close()

        async def down() -> None:
            await runtime.shutdown()
            await server.close()

        lt.run(down())
        lt.close()
    assert kilo_children() == []


CONTROL_DOC = control_openapi()
CONTROL_SCHEMA = schemathesis.openapi.from_dict(CONTROL_DOC)


def _adjust_control(case: Any, data: Any) -> None:
    body = case.body
    if case.operation.path == "/agents/start" and isinstance(body, dict):
        body.pop("git_url", None)  # never clone whatever URL was generated
        if data.draw(st.booleans(), label="own town"):
            body["town_id"] = TOWN  # reach the start path instead of 409 TOWN_MISMATCH


@pytest.mark.parametrize("label", operation_ids(CONTROL_DOC))
def test_control_server_conforms(control: dict[str, Any], budget: Budget, label: str) -> None:
    statuses = fuzz(
        _operation(CONTROL_SCHEMA, label),
        base_url=control["url"],
        session=control["session"],
        headers=lambda data: {"Authorization": f"Bearer {CONTROL_TOKEN}"},
        path_ids={"agent_id": control["agents"]},
        adjust=_finite(label, _adjust_control),
        budget=budget,
    )
    _record("control", statuses)
    assert statuses, "no request was made"
    assert kilo_children() == []


# ---------------------------------------------------------------- worker API


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, seaweedfs: Any) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("fuzz-worker")
    lt = LoopThread()
    bucket = new_bucket(seaweedfs)  # the snapshot broker's routes reach their handlers
    broker = SnapshotBroker.from_env({"GASTOWN_SNAPSHOT_URL": f"s3://{bucket}/fuzz", **s3_env(seaweedfs, bucket)})

    async def up() -> TestServer:
        app = create_worker_app(root / "worker.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, run_reconciler=False,
                                snapshot_broker=broker)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        return server

    server = lt.run(up())
    url = str(server.make_url("")).rstrip("/")
    session = requests.Session()
    try:
        yield {"url": url, "session": session, **seed_worker(url, session)}
    finally:
        session.close()
        lt.run(server.close())
        lt.close()


def seed_worker(url: str, session: requests.Session) -> dict[str, Any]:
    """One town with a mayor, a polecat and a refinery, a rig, beads, a convoy, a nudge and mail."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def post(path: str, body: Any, expect: int = 201) -> Any:
        r = session.post(url + path, json=body, headers=admin, timeout=30)
        assert r.status_code == expect, (path, r.status_code, r.text)
        return r.json()

    town = post("/api/towns", {"name": "fuzz town", "container_url": "http://127.0.0.1:9", "control_token": "x" * 16})
    t = town["town_id"]
    agents = [post(f"/api/towns/{t}/agents", {"agent_id": a, "role": r, "name": a, "rig_id": "rig-fuzz"})["agent_id"]
              for a, r in (("mayor-1", "mayor"), ("polecat-1", "polecat"), ("refinery-1", "refinery"))]
    post(f"/api/towns/{t}/rigs", {"rig_id": "rig-fuzz", "name": "rig", "git_url": "https://example.invalid/r.git"})
    beads = [post(f"/api/towns/{t}/beads", {"rig_id": "rig-fuzz", "title": f"bead {i}"})["bead_id"] for i in range(3)]
    beads.append(post(f"/api/towns/{t}/beads", {"type": "message", "title": "note"})["bead_id"])
    convoy = post(f"/api/towns/{t}/convoys", {"rig_id": "rig-fuzz", "title": "convoy", "staged": True,
                                              "beads": [{"title": "c1"}, {"title": "c2", "depends_on": [0]}]})
    nudge = post(f"/api/towns/{t}/agents/polecat-1/nudges", {"message": "hello"})
    post(f"/api/towns/{t}/mail", {"from_agent_id": "mayor-1", "to_agent_id": "polecat-1", "subject": "s", "body": "b"})
    return {
        "town_id": t,
        "container_token": town["container_token"],
        "agent_tokens": agent_tokens(url, session, t, town["container_token"]),
        "path_ids": {"t": [t], "a": agents, "b": beads + convoy["bead_ids"], "c": [convoy["convoy_id"]],
                     "r": ["rig-fuzz"]},
        "body_ids": {"rig_id": ["rig-fuzz"], "agent_id": agents, "from_agent_id": agents, "to_agent_id": agents,
                     "nudge_id": [nudge["nudge_id"]]},
    }


def agent_tokens(url: str, session: requests.Session, town_id: str, runtime_token: str) -> list[str]:
    """A polecat's and the mayor's own tokens (scope ``agent``): the scope checks get fuzzed too."""
    out = []
    for agent_id in ("polecat-1", "mayor-1"):
        r = session.post(f"{url}/api/towns/{town_id}/agents/{agent_id}/token", json={},
                         headers={"Authorization": f"Bearer {runtime_token}"}, timeout=30)
        assert r.status_code == 200, r.text
        out.append(r.json()["token"])
    return out


def _renew_tokens(worker: dict[str, Any]) -> None:
    """After a fuzzed rotation every town token is revoked: new ones, so later operations reach
    their handlers instead of stopping at 401."""
    r = worker["session"].post(f"{worker['url']}/api/towns/{worker['town_id']}/refresh-container-token", json={},
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    assert r.status_code == 200, r.text
    worker["container_token"] = r.json()["token"]
    worker["agent_tokens"] = agent_tokens(worker["url"], worker["session"], worker["town_id"], worker["container_token"])


def _aim_body_ids(known: dict[str, list[str]]) -> Callable[[Any, Any], None]:
    """Mostly replace generated ids in a JSON body by seeded ones, so bodies reach the handler's
    logic instead of stopping at RIG_NOT_FOUND / AGENT_NOT_FOUND."""

    def adjust(case: Any, data: Any) -> None:
        body = case.body
        if not isinstance(body, dict):
            return
        for key, values in known.items():
            if key in body and data.draw(st.integers(0, 9), label=f"keep generated {key}") < 7:
                body[key] = data.draw(st.sampled_from(values), label=key)

    return adjust


WORKER_DOC = worker_openapi()
WORKER_SCHEMA = schemathesis.openapi.from_dict(WORKER_DOC)


@pytest.mark.parametrize("label", operation_ids(WORKER_DOC))
def test_worker_api_conforms(worker: dict[str, Any], budget: Budget, label: str) -> None:
    tokens = [ADMIN_TOKEN, worker["container_token"], *worker["agent_tokens"]]
    statuses = fuzz(
        _operation(WORKER_SCHEMA, label),
        base_url=worker["url"],
        session=worker["session"],
        headers=lambda data: {"Authorization": f"Bearer {data.draw(st.sampled_from(tokens), label='token')}"},
        path_ids=worker["path_ids"],
        adjust=_finite(label, _aim_body_ids(worker["body_ids"])),
        budget=budget,
    )
    _record("worker", statuses)
    if label.endswith("/rotate-tokens"):
        _renew_tokens(worker)
    assert statuses, "no request was made"


def _finite(label: str, adjust: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """A live event stream (the worker's per town, the container's per agent) never ends by itself:
    fuzz it with ``follow=false`` (what is archived or buffered)."""
    if not label.endswith("/stream"):
        return adjust

    def with_end(case: Any, data: Any) -> None:
        adjust(case, data)
        case.query = {**(case.query or {}), "follow": "false"}
    return with_end


# ---------------------------------------------------------------- found by fuzzing with more examples


@pytest.mark.parametrize("field, value", [("message_count", 2**63), ("last_event_at", 1e30)])
def test_heartbeat_with_out_of_range_integer_is_a_4xx(worker: dict[str, Any], field: str, value: Any) -> None:
    t = worker["town_id"]
    r = worker["session"].post(f"{worker['url']}/api/towns/{t}/agents/polecat-1/heartbeat",
                               json={"status": "running", field: value},
                               headers={"Authorization": f"Bearer {worker['container_token']}"}, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
