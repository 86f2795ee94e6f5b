"""Crash policy for agents restarted in place (the mayor): exponential backoff, then FATAL.

Pure bookkeeping over an injected clock, so tests are deterministic. A crash loop (``max_crashes``
within ``window_s``) ends in FATAL: no more automatic restarts until a quiet period (``decay_s``)
has passed or an operator/worker start clears it.
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
    clock: Callable[[], float] = time.monotonic
    _history: dict[str, CrashHistory] = field(default_factory=dict)

    def _h(self, agent_id: str) -> CrashHistory:
        return self._history.setdefault(agent_id, CrashHistory())

    def record_crash(self, agent_id: str) -> float | None:
        """Register a crash; the delay before the next restart, or None when the agent is now FATAL."""
        now = self.clock()
        h = self._h(agent_id)
        h.crashes = [t for t in h.crashes if now - t <= self.window_s] + [now]
        if len(h.crashes) >= self.max_crashes:
            h.fatal_since = now
            return None
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
