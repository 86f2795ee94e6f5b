"""In-place restarts after supervisord's model (issue 19), with an injected clock and sleep: a crash
after the start window restarts at once; crashes while starting, and repeated crashes inside the
crash window, back off and end in FATAL."""
from __future__ import annotations

import asyncio

from supervisor.config import RuntimeConfig
from supervisor.crashloop import CrashPolicy
from supervisor.models import StartAgentRequest
from supervisor.runtime import ContainerRuntime
from supervisor.states import AgentState
from tests.conftest import start_body
from tests.unit.test_crashloop import Clock


def test_first_crash_after_a_healthy_run_has_no_delay_and_the_next_one_in_the_window_backs_off():
    clock = Clock()
    p = CrashPolicy(max_crashes=5, window_s=600, base_delay_s=1, start_window_s=10, clock=clock)
    assert p.record_crash("m", ran_s=3600) == 0.0
    clock.t += 60
    assert p.record_crash("m", ran_s=3600) == 2  # a second crash inside the window is not "unrelated"
    clock.t += 601
    assert p.record_crash("m", ran_s=3600) == 0.0  # the window passed: healthy again


def test_crashes_while_starting_back_off_and_a_loop_of_them_is_fatal():
    clock = Clock()
    p = CrashPolicy(max_crashes=4, window_s=600, base_delay_s=1, start_window_s=10, clock=clock)
    assert [p.record_crash("m", ran_s=9.9) for _ in range(3)] == [1, 2, 4]
    assert p.record_crash("m", ran_s=9.9) is None and p.is_fatal("m")


def test_a_process_that_keeps_dying_after_the_start_window_still_ends_fatal():
    clock = Clock()
    p = CrashPolicy(max_crashes=3, window_s=600, base_delay_s=1, start_window_s=10, clock=clock)
    delays = []
    for _ in range(3):
        clock.t += 30
        delays.append(p.record_crash("m", ran_s=30))
    assert delays == [0.0, 2, None] and p.is_fatal("m")


async def _crashed_mayor(tmp_path, ran_s: float):  # noqa: ANN202
    """A runtime whose mayor reached running, served ``ran_s`` on the monitor's clock and crashed.
    Restarts spawn ``/bin/false``, so each one fails its start (a crash that never ran)."""
    clock = Clock()
    gate = asyncio.Event()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await gate.wait()

    cfg = RuntimeConfig(data_dir=tmp_path / "d", kilo_bin="/bin/false", crash_loop_max=3, crash_backoff_s=0.5,
                        start_window_s=10)
    rt = ContainerRuntime(cfg)
    hm = rt.health_monitor
    hm.sleep, hm.clock, hm.policy.clock = sleep, clock, clock
    req = StartAgentRequest.model_validate(start_body(agent_id="mayor", role="mayor", rig_id="mayor-town-test"))
    rec = rt.supervisor.new_record(req)
    rec.transition(AgentState.running)
    clock.t += ran_s
    rec.transition(AgentState.failed, "kilo exited unexpectedly (signal 9)")
    rt.supervisor.agents["mayor"] = rec
    await rt.supervisor.notify(rec, "crashed")
    return rt, rec, slept, gate


async def _until(pred, timeout: float = 30.0) -> None:  # noqa: ANN001
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def test_a_mayor_that_crashed_after_serving_past_the_start_window_restarts_without_delay(tmp_path):
    rt, crashed, slept, gate = await _crashed_mayor(tmp_path, ran_s=3600)
    try:
        # The restart's own start fails (/bin/false): that is a crash during start, which backs off.
        await _until(lambda: slept)
        again = rt.supervisor.agents["mayor"]
        assert again is not crashed and again.restarts == 1 and again.state == AgentState.backoff
        assert slept == [1.0], "no sleep before the first restart; the failed restart waits 0.5 × 2"
    finally:
        gate.set()
        await rt.shutdown()


async def test_a_mayor_that_crashed_inside_the_start_window_waits_its_backoff_first(tmp_path):
    rt, crashed, slept, gate = await _crashed_mayor(tmp_path, ran_s=2)
    try:
        await _until(lambda: slept)
        assert slept == [0.5] and rt.supervisor.agents["mayor"] is crashed and crashed.state == AgentState.backoff
        gate.set()
        await _until(lambda: rt.supervisor.agents["mayor"].state == AgentState.fatal and len(slept) == 3)
        assert rt.health_monitor.policy.crash_count("mayor") == 3 and slept == [0.5, 1.0, 900.0]
    finally:
        gate.set()
        await rt.shutdown()
