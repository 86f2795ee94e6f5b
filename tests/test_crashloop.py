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
