"""Time on the wire: every time field of both APIs is integer epoch **milliseconds** (``*_at``,
``ts``, ``fired_at``). Inside a process times stay ``time.time()`` floats; they are converted
here, at the edge, and nowhere else."""
from __future__ import annotations


def epoch_ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def epoch_s(ms: int | float | None) -> float | None:
    return None if ms is None else ms / 1000
