"""Crash policy with an injected clock: backoff grows, a loop goes FATAL, FATAL decays or clears."""
from __future__ import annotations

from supervisor.crashloop import CrashPolicy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_backoff_doubles_up_to_cap_then_fatal():
    clock = Clock()
    p = CrashPolicy(max_crashes=5, window_s=600, base_delay_s=1, max_delay_s=4, decay_s=900, clock=clock)
    delays = [p.record_crash("mayor") for _ in range(4)]
    assert delays == [1, 2, 4, 4]
    assert p.record_crash("mayor") is None
    assert p.is_fatal("mayor")


def test_crashes_outside_window_do_not_count():
    clock = Clock()
    p = CrashPolicy(max_crashes=3, window_s=60, clock=clock)
    p.record_crash("m")
    p.record_crash("m")
    clock.t += 61
    assert p.record_crash("m") == 1  # the two old crashes expired
    assert not p.is_fatal("m")


def test_crashloop_state_decays_after_quiet_period():
    clock = Clock()
    p = CrashPolicy(max_crashes=2, decay_s=900, clock=clock)
    p.record_crash("m")
    assert p.record_crash("m") is None and p.is_fatal("m")
    clock.t += 899
    assert p.is_fatal("m")
    clock.t += 2
    assert not p.is_fatal("m") and p.crash_count("m") == 0


def test_new_start_clears_fatal():
    p = CrashPolicy(max_crashes=1, clock=Clock())
    assert p.record_crash("m") is None
    p.clear("m")
    assert not p.is_fatal("m") and p.record_crash("x") is None and not p.is_fatal("m")


async def test_mayor_restart_that_fails_to_start_counts_toward_the_crash_loop(tmp_path):
    """A mayor killed again while its restart was still starting failed that start, and nothing
    restarted it any more: dead, neither running nor FATAL. Each failed restart is a crash too.
    Real processes: the "kilo" here exits at once, so every restart fails its spawn."""
    import asyncio

    from supervisor.agent import AgentRecord
    from supervisor.config import RuntimeConfig
    from supervisor.kilo_env import AgentPaths
    from supervisor.models import StartAgentRequest
    from supervisor.runtime import ContainerRuntime
    from supervisor.states import AgentState
    from tests.conftest import start_body

    cfg = RuntimeConfig(data_dir=tmp_path / "d", kilo_bin="/bin/false", crash_loop_max=3, crash_backoff_s=0.01)
    rt = ContainerRuntime(cfg)
    req = StartAgentRequest.model_validate(start_body(agent_id="mayor", role="mayor", rig_id="mayor-town-test"))
    crashed = AgentRecord(request=req, paths=AgentPaths.for_agent(cfg.data_dir, "mayor"))
    crashed.transition(AgentState.failed, "kilo exited unexpectedly (signal 9)")
    rt.supervisor.agents["mayor"] = crashed
    try:
        await rt.supervisor.notify(crashed, "crashed")
        async with asyncio.timeout(60):
            while rt.supervisor.agents["mayor"].state != AgentState.fatal:
                await asyncio.sleep(0.05)
        final = rt.supervisor.agents["mayor"]
        assert final.restarts == 2 and final.status()["fatal"]  # crash, 2 failed restarts → FATAL at 3
        assert rt.health_monitor.policy.crash_count("mayor") == 3
    finally:
        await rt.shutdown()


class Unanswering:
    """Stands in for a wedged kilo: its process runs, its server never answers a health probe."""
    running = True
    pid = 0
    stopped = closed = False

    async def health(self, timeout: float) -> bool:
        return False

    async def stop(self, timeout: float):  # noqa: ANN201
        from supervisor.kilo_process import ExitInfo

        self.stopped, self.running = True, False
        return ExitInfo(code=None, signal=15, at=0.0, stderr_tail="", requested=True)

    async def close(self) -> None:
        self.closed = True


def wedged_agent(tmp_path, clock: Clock, failures: int):  # noqa: ANN001, ANN201
    """A runtime whose running polecat-1 is wedged, its monitor on ``clock``, recycles recorded."""
    from supervisor.agent import AgentRecord
    from supervisor.config import RuntimeConfig
    from supervisor.kilo_env import AgentPaths
    from supervisor.models import StartAgentRequest
    from supervisor.runtime import ContainerRuntime
    from supervisor.states import AgentState
    from tests.conftest import start_body

    rt = ContainerRuntime(RuntimeConfig(data_dir=tmp_path / "d"))
    monitor = rt.health_monitor
    monitor.clock, monitor.failures = clock, failures
    rec = AgentRecord(request=StartAgentRequest.model_validate(start_body()), paths=AgentPaths.for_agent(tmp_path, "polecat-1"))
    rec.transition(AgentState.running)
    stand_in = Unanswering()
    rec.process = rec.client = stand_in  # type: ignore[assignment]
    rt.supervisor.agents["polecat-1"] = rec
    recycle_times: list[float] = []

    async def recycle(r, reason):  # noqa: ANN001
        recycle_times.append(clock.t)
        r.liveness.recycled_at = clock()

    monitor.recycle = recycle
    return rt, monitor, rec, stand_in, recycle_times


async def test_recycled_kilo_gets_a_grace_period_instead_of_a_recycle_loop(tmp_path):
    """Under load a kilo just recycled is slow to answer while it boots: tight probes recycled it
    again and again, each time killing the turn it had just been given."""
    clock = Clock()
    rt, monitor, rec, _, recycles = wedged_agent(tmp_path, clock, failures=2)
    monitor.recycle_grace_s = 30.0
    await monitor.probe_all()
    await monitor.probe_all()
    assert len(recycles) == 1
    for _ in range(5):  # inside the grace: not even counted
        clock.t += 5
        await monitor.probe_all()
    assert len(recycles) == 1 and rec.liveness.misses == 0
    clock.t += 10  # past it: probed again
    await monitor.probe_all()
    await monitor.probe_all()
    assert len(recycles) == 2
    rt.supervisor.agents.clear()  # the stand-in holds no real process to stop
    await rt.shutdown()


async def test_kilo_that_keeps_wedging_is_failed_not_recycled_forever(tmp_path):
    """A kilo that wedged again after every recycle was recycled forever, each time killing its
    turn. Each recycle now doubles the grace before the next probe, and a wedge loop fails the
    agent with a reason the worker is told."""
    from supervisor.agent import AgentRecord
    from supervisor.states import AgentState

    clock = Clock()
    rt, monitor, rec, stand_in, recycle_times = wedged_agent(tmp_path, clock, failures=1)
    for _ in range(2000):
        await monitor.probe_all()
        if rec.state != AgentState.running:
            break
        clock.t += 1
    gaps = [b - a for a, b in zip(recycle_times, recycle_times[1:])]
    assert len(recycle_times) == 4 and gaps == [30, 60, 120]  # grace doubles: 30 s, 60 s, 120 s
    assert rec.state == AgentState.failed and "wedge loop: 5 wedges" in rec.exit_reason
    assert stand_in.stopped and stand_in.closed
    rec2 = AgentRecord(request=rec.request, paths=rec.paths)
    await rt.supervisor.notify(rec2, "started")  # a fresh start from the API clears the count
    assert monitor.wedge_policy.crash_count("polecat-1") == 0
    rt.supervisor.agents.clear()
    await rt.shutdown()


async def test_backoff_and_fatal_are_states_and_fatal_decays_with_the_clock(tmp_path):
    """BACKOFF used to be a sleeping task and FATAL a flag on a 'failed' agent, and FATAL never
    decayed outside the tests of CrashPolicy. Injected clock and sleep: no real waiting."""
    import asyncio

    from supervisor.agent import AgentRecord
    from supervisor.config import RuntimeConfig
    from supervisor.kilo_env import AgentPaths
    from supervisor.models import StartAgentRequest
    from supervisor.runtime import ContainerRuntime
    from supervisor.states import AgentState
    from tests.conftest import start_body

    now = [1000.0]
    decay_gate, backoff_gate = asyncio.Event(), asyncio.Event()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await (decay_gate if seconds >= 900 else backoff_gate).wait()

    cfg = RuntimeConfig(data_dir=tmp_path / "d", kilo_bin="/bin/false", crash_loop_max=2, crash_backoff_s=0.5)
    rt = ContainerRuntime(cfg)
    hm = rt.health_monitor
    hm.sleep, hm.policy.clock = sleep, lambda: now[0]
    req = StartAgentRequest.model_validate(start_body(agent_id="mayor", role="mayor", rig_id="mayor-town-test"))
    crashed = AgentRecord(request=req, paths=AgentPaths.for_agent(cfg.data_dir, "mayor"))
    crashed.transition(AgentState.failed, "kilo exited unexpectedly (signal 9)")
    rt.supervisor.agents["mayor"] = crashed

    async def until(state: AgentState) -> dict:
        async with asyncio.timeout(30):
            while rt.supervisor.agents["mayor"].state != state:
                await asyncio.sleep(0.01)
        return rt.supervisor.agents["mayor"].status()

    try:
        await rt.supervisor.notify(crashed, "crashed")
        st = await until(AgentState.backoff)
        await asyncio.sleep(0.01)  # the restart task is waiting in its backoff sleep
        assert st["status"] == "backoff" and st["exit_reason"] == "kilo exited unexpectedly (signal 9)" and slept == [0.5]
        backoff_gate.set()  # the restart runs, /bin/false fails it: the second crash ends the loop
        st = await until(AgentState.fatal)
        await asyncio.sleep(0.01)
        assert st["fatal"] is True and "crash loop: 2 crashes" in st["exit_reason"] and slept[-1] == hm.policy.decay_s
        backoff_gate.clear()
        decay_gate.set()  # the decay sleep returns, but the clock has not moved: still FATAL
        await asyncio.sleep(0.1)
        assert rt.supervisor.agents["mayor"].state == AgentState.fatal
        now[0] += hm.policy.decay_s
        hm.rt.tasks.spawn(hm._decay_later(rt.supervisor.agents["mayor"]), "decay-again")
        st = await until(AgentState.backoff)  # decayed: a fresh start (failing again) is a first crash
        assert hm.policy.crash_count("mayor") == 1 and st["restarts"] == 2
    finally:
        backoff_gate.set()
        await rt.shutdown()


async def test_stop_during_backoff_calls_the_restart_off(tmp_path):
    import asyncio

    from supervisor.agent import AgentRecord
    from supervisor.config import RuntimeConfig
    from supervisor.kilo_env import AgentPaths
    from supervisor.models import StartAgentRequest
    from supervisor.runtime import ContainerRuntime
    from supervisor.states import AgentState
    from tests.conftest import start_body

    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await gate.wait()

    rt = ContainerRuntime(RuntimeConfig(data_dir=tmp_path / "d", kilo_bin="/bin/false", crash_backoff_s=5))
    rt.health_monitor.sleep = sleep
    req = StartAgentRequest.model_validate(start_body(agent_id="mayor", role="mayor", rig_id="mayor-town-test"))
    rec = AgentRecord(request=req, paths=AgentPaths.for_agent(rt.cfg.data_dir, "mayor"))
    rec.transition(AgentState.failed, "kilo exited unexpectedly (signal 9)")
    rt.supervisor.agents["mayor"] = rec
    try:
        await rt.supervisor.notify(rec, "crashed")
        assert rec.state == AgentState.backoff
        assert await rt.supervisor.stop("mayor") is True
        gate.set()
        await asyncio.sleep(0.1)
        assert rt.supervisor.agents["mayor"] is rec and rec.state == AgentState.exited and rec.restarts == 0
    finally:
        await rt.shutdown()


async def test_a_start_failing_after_the_exit_watcher_moved_the_mayor_to_backoff_is_not_an_illegal_transition(tmp_path):
    """The watcher saw kilo die mid-start (failed, then the crash policy: backoff); the start then
    failed too and tried failed again: IllegalTransition, a 500 instead of AGENT_START_FAILED."""
    from supervisor.agent import AgentRecord
    from supervisor.config import RuntimeConfig
    from supervisor.kilo_env import AgentPaths
    from supervisor.models import StartAgentRequest
    from supervisor.runtime import ContainerRuntime
    from supervisor.states import AgentState
    from tests.conftest import start_body

    rt = ContainerRuntime(RuntimeConfig(data_dir=tmp_path / "d", kilo_bin="/bin/false"))
    req = StartAgentRequest.model_validate(start_body(agent_id="mayor", role="mayor", rig_id="mayor-town-test"))
    rec = AgentRecord(request=req, paths=AgentPaths.for_agent(rt.cfg.data_dir, "mayor"))
    rec.transition(AgentState.failed, "kilo exited unexpectedly (signal 9)")
    rec.transition(AgentState.backoff, "restart in 1s")
    try:
        await rt.supervisor._abort_start(rec, RuntimeError("event stream did not connect"))
        assert rec.state == AgentState.backoff and rec.exit_reason == "kilo exited unexpectedly (signal 9)"
    finally:
        await rt.shutdown()
