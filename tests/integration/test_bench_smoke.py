"""Every benchmark, run by ``python -m bench`` at its smallest size, so none can rot unnoticed (two
did: the start bench stopped matching the prewarm's fields and the ship bench raised on its own
directory, with no test running either). A new ``bench/*_bench.py`` is picked up by itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import discover

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kilo, pytest.mark.xdist_group("bench")]

SMALLEST = {
    "BENCH_RECONCILER_SIZES": "200", "BENCH_SNAPSHOT_MB": "2", "BENCH_SNAPSHOT_REPS": "1",
    "BENCH_CONTROL_REQUESTS": "200", "BENCH_CONTROL_CONNECTIONS": "2", "BENCH_COLD_PAIRS": "1", "BENCH_WARM_RUNS": "2",
    "BENCH_HYDRATION_AGENTS": "2", "BENCH_RESTART_ROUNDS": "1", "BENCH_SHIP_RUNS": "1", "BENCH_IMAGE_RUNS": "1",
    "BENCH_IMAGE_UNCACHED": "0", "BENCH_REPLICAS_TOWNS": "4", "BENCH_REPLICAS_HISTORY": "20", "BENCH_REPLICAS": "2",
    "BENCH_REPLICAS_CADENCE_S": "6", "BENCH_RECONCILER_ENGINES": "sqlite,postgresql",
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("module", discover())
def test_the_benchmark_runs_at_its_smallest_size(module: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", module], cwd=REPO, env={**os.environ, **SMALLEST},
                          capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert results, proc.stderr[-4000:]
    for r in results:
        assert r.get("benchmark"), r
        if "ratio" in r:
            assert isinstance(r["ratio"], (int, float)) and r["ratio"] > 0, r
