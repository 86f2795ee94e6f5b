"""Boot hydration order against the real worker registry, with kilo boots stood in by a start that
the test finishes at will (kilo-backed hydration: test_hydration_kilo.py): the mayor resumes first,
a requested start goes before resumes not yet begun, and the concurrency default follows the CPUs."""
from __future__ import annotations

import asyncio
from pathlib import Path

from supervisor.config import RuntimeConfig
from supervisor.cpus import _quota_cpus, available_cpus, default_hydration_concurrency
from supervisor.hydration import Hydrator
from supervisor.models import StartAgentRequest
from supervisor.runtime import ContainerRuntime
from supervisor.supervisor import Supervisor
from supervisor.worker_client import WorkerClient
from tests.conftest import start_body


class ControlledStarts:
    """``Supervisor.start`` whose boots end when the test says so; records the order they began."""

    def __init__(self) -> None:
        self.begun: list[str] = []
        self.finish: dict[str, asyncio.Event] = {}

    async def start(self, req: StartAgentRequest, **_: object) -> tuple[None, bool]:
        self.begun.append(req.agent_id)
        await self.finish.setdefault(req.agent_id, asyncio.Event()).wait()
        return None, True

    def done(self, agent_id: str) -> None:
        self.finish.setdefault(agent_id, asyncio.Event()).set()


async def _town_with_registry(worker, polecats: int, with_mayor: bool = False) -> tuple[str, str]:
    """A town whose registry lists ``polecat-0..n-1`` (and the mayor, listed last)."""
    town_id, token = await worker.create_town(default_model="fake/m1")
    entries = [{"agent_id": f"polecat-{i}", "workdir": f"/w/{i}",
                "request": start_body(agent_id=f"polecat-{i}", town_id=town_id)} for i in range(polecats)]
    if with_mayor:
        entries.append({"agent_id": "mayor", "workdir": "/w/m", "request": start_body(
            agent_id="mayor", town_id=town_id, role="mayor", name="Mayor", rig_id=f"mayor-{town_id}")})
    assert (await worker.request("POST", f"/api/towns/{town_id}/container-registry", json=entries))[0] == 200
    return town_id, token


async def _settle(rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def _until(cond, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_requested_start_goes_before_resumes_not_yet_begun_and_mayor_resumes_first(worker, tmp_path: Path):
    town_id, token = await _town_with_registry(worker, 4, with_mayor=True)

    client = WorkerClient(worker.url, token, town_id)
    sup = Supervisor(RuntimeConfig(data_dir=tmp_path / "d", hydration_concurrency=2), client)
    starts = ControlledStarts()
    sup.start = starts.start  # type: ignore[method-assign]
    hydrator = Hydrator(sup)
    run = asyncio.create_task(hydrator.run())
    try:
        await _until(lambda: len(starts.begun) == 2)
        assert starts.begun == ["mayor", "polecat-0"], "the mayor (listed last) resumes first"

        async with hydrator.foreground("fresh-1", 10):  # the worker asks for a new agent now
            starts.done("mayor")
            await _settle()
            assert starts.begun == ["mayor", "polecat-0"], "a resume began while a requested start booted"
        await _until(lambda: len(starts.begun) == 3)
        assert starts.begun[2] == "polecat-1"

        for agent_id in ("polecat-0", "polecat-1", "polecat-2", "polecat-3"):
            starts.done(agent_id)
        await asyncio.wait_for(run, 10)
        assert hydrator.results == {a: "resumed" for a in ("mayor", "polecat-0", "polecat-1", "polecat-2", "polecat-3")}
        assert all(event.is_set() for event in hydrator.pending.values())
    finally:
        run.cancel()
        await client.close()


async def test_start_requested_while_the_registry_loads_goes_first(worker, tmp_path: Path):
    """At boot the worker's start arrives before the registry is read: it must still go first (it
    used to wake after two resumes had begun, and booted beside them at half speed)."""
    town_id, token = await _town_with_registry(worker, 3)
    rt = ContainerRuntime(RuntimeConfig(data_dir=tmp_path / "d", hydration_concurrency=2, town_id=town_id,
                                        api_url=worker.url, container_token=token))
    starts = ControlledStarts()
    rt.supervisor.start = starts.start  # type: ignore[method-assign]
    fresh = asyncio.create_task(rt.start_agent(StartAgentRequest.model_validate(
        start_body(agent_id="fresh-1", town_id=town_id)), 10))
    await asyncio.sleep(0)  # the request is in before the hydrator even asks the worker
    await rt.start()
    try:
        await asyncio.wait_for(rt.hydrator.registry_loaded.wait(), 10)
        await _until(lambda: starts.begun == ["fresh-1"])
        await _settle()
        assert starts.begun == ["fresh-1"], "resumes began beside the requested start"
        starts.done("fresh-1")
        await asyncio.wait_for(fresh, 10)
        await _until(lambda: len(starts.begun) == 3)
        for i in range(3):
            starts.done(f"polecat-{i}")
        await rt.wait_hydrated(10)
    finally:
        fresh.cancel()
        await rt.shutdown()


async def test_start_of_an_agent_being_resumed_waits_for_that_resume_without_deadlock(worker, tmp_path: Path):
    town_id, token = await _town_with_registry(worker, 3)
    client = WorkerClient(worker.url, token, town_id)
    sup = Supervisor(RuntimeConfig(data_dir=tmp_path / "d", hydration_concurrency=1), client)
    starts = ControlledStarts()
    sup.start = starts.start  # type: ignore[method-assign]
    hydrator = Hydrator(sup)
    inside = asyncio.Event()

    async def start_of_polecat_2() -> None:  # resumed last, behind polecat-0 and polecat-1
        async with hydrator.foreground("polecat-2", 10):
            inside.set()

    request = asyncio.create_task(start_of_polecat_2())
    run = asyncio.create_task(hydrator.run())
    try:
        await _until(lambda: starts.begun == ["polecat-0"])
        starts.done("polecat-0")
        await _until(lambda: starts.begun == ["polecat-0", "polecat-1"])
        assert not inside.is_set()
        starts.done("polecat-1")
        await _until(lambda: len(starts.begun) == 3)
        assert not inside.is_set(), "the start went ahead of its own agent's resume"
        starts.done("polecat-2")
        await asyncio.wait_for(request, 10)
        await asyncio.wait_for(run, 10)
    finally:
        run.cancel()
        request.cancel()
        await client.close()


async def test_start_waiting_too_long_for_its_resume_times_out_and_releases(tmp_path: Path):
    sup = Supervisor(RuntimeConfig(data_dir=tmp_path / "d"), WorkerClient(None, None, "town-test"))
    hydrator = Hydrator(sup)  # the registry never loads
    try:
        async with hydrator.foreground("polecat-1", 0.05):
            raise AssertionError("entered without the registry")
    except TimeoutError:
        pass
    assert hydrator._no_foreground.is_set(), "a timed-out start still held resumes back"


def test_concurrency_default_follows_the_cpus_a_container_may_use(tmp_path: Path):
    """Twenty kilo boots at once on 2 CPUs missed the 60 s start timeout: the default is the CPUs
    the container may use (its CFS quota, not the host's count), between 2 and 8."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert _quota_cpus(v2) == 1.5
    assert available_cpus(v2) == min(2, available_cpus(tmp_path / "none"))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert _quota_cpus(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _quota_cpus(v1) == 4.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _quota_cpus(v1) is None
    assert [default_hydration_concurrency(n) for n in (1, 2, 4, 16)] == [2, 2, 4, 8]
    assert RuntimeConfig.from_env({"GASTOWN_HYDRATION_CONCURRENCY": "3"}).hydration_concurrency == 3
    assert RuntimeConfig.from_env({}).hydration_concurrency == default_hydration_concurrency()


def test_only_the_newest_exited_agent_records_are_kept(tmp_path):
    """Every exited agent's record and its 2 000-event buffer stayed in memory for the container's life."""
    from supervisor.states import AgentState
    from tests.conftest import start_body

    sup = Supervisor(RuntimeConfig(data_dir=tmp_path / "d"), WorkerClient(None, None, "town-test"))
    for i in range(5):
        rec = sup.new_record(StartAgentRequest.model_validate(start_body(agent_id=f"polecat-{i}")))
        rec.state = AgentState.exited if i != 2 else AgentState.running
        sup.agents[rec.agent_id] = rec
    sup.forget_exited(keep=2)
    assert list(sup.agents) == ["polecat-2", "polecat-3", "polecat-4"]


async def test_a_forged_registry_row_is_never_resumed_at_boot(worker, tmp_path: Path):
    """A registry entry switched the next container's worker URL to an attacker's (issue 13): a row
    written into the worker's store by anything but the worker's own checks is not served, so the
    booting container resumes only the sealed entries and never sees the forged one."""
    from worker_api.appkeys import DB
    from worker_api import store

    town_id, token = await _town_with_registry(worker, 1)
    db = worker.server.app[DB]
    stored = await db.run(store.get_registry, town_id, write=False)
    forged = {"agent_id": "polecat-9", "workdir": "/w/9", "seal": "0" * 64, "request": start_body(
        agent_id="polecat-9", town_id=town_id, env_vars={"GASTOWN_API_URL": "http://attacker.example"})}
    await db.run(store.put_registry, town_id, [*stored, forged], 0)
    client = WorkerClient(worker.url, token, town_id)
    sup = Supervisor(RuntimeConfig(data_dir=tmp_path / "d", hydration_concurrency=2), client)
    starts = ControlledStarts()
    sup.start = starts.start  # type: ignore[method-assign]
    starts.done("polecat-0")
    try:
        await asyncio.wait_for(Hydrator(sup).run(), 10)
        assert starts.begun == ["polecat-0"]
    finally:
        await client.close()
