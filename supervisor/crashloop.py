"""Crash policy for agents restarted in place (the mayor), after supervisord's model.

An exit after the agent had been serving for ``start_window_s`` (supervisord's ``startsecs``) is
restarted at once: a mayor that crashed once after hours of work costs no added delay. An exit
during that window (or a start that failed), and every further crash inside ``window_s``, waits a
backoff that doubles; ``max_crashes`` within ``window_s`` is a crash loop and ends in FATAL: no
more automatic restarts until a quiet period (``decay_s``) has passed or a new start clears it.
Pure bookkeeping over an injected clock, so tests are deterministic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class CrashHistory:
    crashes: list[float] = field(default_factory=list)
    fatal_since: float | None = None


@dataclass
class CrashPolicy:
    max_crashes: int = 5
    window_s: float = 600.0
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    decay_s: float = 900.0
    start_window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _history: dict[str, CrashHistory] = field(default_factory=dict)

    def _h(self, agent_id: str) -> CrashHistory:
        return self._history.setdefault(agent_id, CrashHistory())

    def record_crash(self, agent_id: str, ran_s: float = 0.0) -> float | None:
        """Register a crash of a process that had served for ``ran_s`` seconds; the delay before
        the next restart (0: at once), or None when the agent is now FATAL."""
        now = self.clock()
        h = self._h(agent_id)
        h.crashes = [t for t in h.crashes if now - t <= self.window_s] + [now]
        if len(h.crashes) >= self.max_crashes:
            h.fatal_since = now
            return None
        if ran_s >= self.start_window_s and len(h.crashes) == 1:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2 ** (len(h.crashes) - 1))

    def is_fatal(self, agent_id: str) -> bool:
        h = self._history.get(agent_id)
        if h is None or h.fatal_since is None:
            return False
        if self.clock() - h.fatal_since >= self.decay_s:
            self.clear(agent_id)
            return False
        return True

    def crash_count(self, agent_id: str) -> int:
        h = self._history.get(agent_id)
        return len(h.crashes) if h else 0

    def clear(self, agent_id: str) -> None:
        self._history.pop(agent_id, None)
