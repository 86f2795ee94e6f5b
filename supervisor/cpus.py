"""How many CPUs this container may really use, for sizing CPU-bound work (kilo boots).

``os.cpu_count()`` is the host's count; a container is limited by its cpuset (affinity) and by its
CFS quota (Kubernetes/Docker CPU limits write ``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1).
The smallest of those is what a kilo boot can get.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_cpus(root: Path) -> float | None:
    """CPUs granted by the CFS quota, or None when unlimited or unreadable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" / "200000 100000"
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # cgroup v1: -1 when unlimited
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = _quota_cpus(root)
    return max(1, min(affinity, math.ceil(quota)) if quota is not None else affinity)


def default_hydration_concurrency(cpus: int | None = None) -> int:
    """One kilo boot keeps ~1.4 cores busy for seconds (measured: ~7 CPU-s to listening), so more
    boots in flight than CPUs only slows each of them (20 at once on 2 cores missed the 60 s start
    timeout); at least 2 so one slow resume does not hold up the rest; at most 8 (memory)."""
    return max(2, min(8, cpus if cpus is not None else available_cpus()))
