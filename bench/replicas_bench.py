"""Worker replicas on one PostgreSQL (``python -m bench replicas``): 100 towns with 1 000 beads of
history each, the towns' containers one lightweight fake speaking the control API
(tests/replicas.py), real `gastown worker` processes.

1. baseline: one replica; one bead slung per town, dispatch latency (sling answered → the start
   request at the container);
2. three replicas (the same towns, the first replica stopped): one bead per town through any replica,
   the same latency; then, for 20 s, how often each town with agents at work is ticked (the gap
   between the reconciler's ``GET /agents`` calls, 5 s by design);
3. the replica holding most towns killed with -9 and one bead per town slung through the others:
   how long until every town has a live holder again, and the latency of the beads of the killed
   replica's towns against the others'.
Over all: every bead started exactly once. One JSON line; ``ratio`` = p99 latency with three
replicas / with one, measured in the same run. Knobs: BENCH_REPLICAS_TOWNS, BENCH_REPLICAS_HISTORY,
BENCH_REPLICAS (the smoke test runs a few small towns).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.common import log
from tests.pgserver import start_pg
from tests.replicas import FakeContainers, Replica, admin_call, create_towns, holders
from worker_api.db import Database

TOWNS = int(os.environ.get("BENCH_REPLICAS_TOWNS", "100"))
HISTORY = int(os.environ.get("BENCH_REPLICAS_HISTORY", "1000"))
REPLICAS = int(os.environ.get("BENCH_REPLICAS", "3"))
CADENCE_WINDOW_S = float(os.environ.get("BENCH_REPLICAS_CADENCE_S", "20"))
T0 = 1_700_000_000_000


def _history(conn, towns: list[str]) -> None:  # noqa: ANN001
    """Closed beads: what a long-lived town carries (each tick loads the live ones, the invariants scan all)."""
    for town_id in towns:
        conn.executemany("INSERT INTO town_beads (town_id, bead_id, type, status, title, rig_id, created_at, updated_at,"
                         " closed_at) VALUES (?, ?, 'issue', 'closed', ?, 'r1', ?, ?, ?)",
                         [(town_id, f"bead-h{i:07d}", f"old {i}", T0 + i, T0 + i, T0 + i) for i in range(HISTORY)])
    conn.execute("ANALYZE")  # statistics as autovacuum leaves them after a bulk load


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))], 3) if values else 0.0


async def _wave(http: aiohttp.ClientSession, fake: FakeContainers, towns: list[str], via: list[Replica], tag: str,
                timeout: float = 180) -> dict[str, float]:
    """One bead per town through the replicas in turn; title -> seconds from the answered sling to its start."""
    answered: dict[str, float] = {}
    for n, town_id in enumerate(towns):
        title = f"{tag}-{n:03d}"
        code, body = await admin_call(http, "POST", f"{via[n % len(via)].url}/api/towns/{town_id}/sling",
                                      {"rig_id": "r1", "title": title})
        assert code == 201, body
        answered[title] = time.monotonic()
    deadline = time.monotonic() + timeout
    while not all(t in fake.started_at for t in answered):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tag}: {sum(t not in fake.started_at for t in answered)} beads never started")
        await asyncio.sleep(0.05)
    return {t: fake.started_at[t] - answered[t] for t in answered}


async def run(tmp: Path) -> dict:
    pg = start_pg()
    fake = FakeContainers()
    workers: list[Replica] = []
    try:
        url = pg.new_database("replicas")
        Database(url).close()  # migrated before any replica starts
        await fake.start()
        async with aiohttp.ClientSession() as http:
            first = Replica(0, url, tmp / "baseline.log")
            workers.append(first)
            await first.wait_up(http)
            towns = await create_towns(http, fake, [first], TOWNS)
            db = Database(url)
            await db.run(_history, towns)
            await db.aclose()
            log(f"replicas: {TOWNS} towns x {HISTORY} beads of history")
            fake.heartbeat([first.url])
            baseline = await _wave(http, fake, towns, [first], "baseline")
            assert first.stop() == 0

            workers = [Replica(i, url, tmp / f"replica-{i}.log") for i in range(REPLICAS)]
            for w in workers:
                await w.wait_up(http)
            fake.heartbeat([w.url for w in workers])
            t0 = time.monotonic()
            while not all((await holders(http, workers[0], towns)).values()):
                await asyncio.sleep(0.2)
            shared_s = time.monotonic() - t0
            spread = await _wave(http, fake, towns, workers, "spread")

            await asyncio.sleep(6)  # past the ticks the slings armed at once: the window sees the cadence alone
            listed_before = {n: len(v) for n, v in fake.listed.items()}
            await asyncio.sleep(CADENCE_WINDOW_S)
            gaps = []
            for n, times in fake.listed.items():
                recent = times[max(0, listed_before.get(n, 0) - 1):]
                gaps += [b - a for a, b in zip(recent, recent[1:])]
            held = await holders(http, workers[0], towns)
            per_replica = Counter(held.values())
            victim_id, victim_towns = per_replica.most_common(1)[0]
            victim = next(w for w in workers if w.owns(victim_id))
            survivors = [w for w in workers if w is not victim]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            killed = time.monotonic()

            async def takeover() -> float:
                while not all(h and h != victim_id for h in (await holders(http, survivors[0], towns)).values()):
                    await asyncio.sleep(0.2)
                return time.monotonic() - killed
            watching = asyncio.create_task(takeover())
            after = await _wave(http, fake, towns, survivors, "after-kill")
            takeover_s = await asyncio.wait_for(watching, 60)
            orphaned = {f"after-kill-{n:03d}" for n, t in enumerate(towns) if held[t] == victim_id}
            for w in survivors:
                w.stop()
        starts = Counter(title for _, _, title in fake.starts)
        p99_1, p99_n = _pct(list(baseline.values()), 0.99), _pct(list(spread.values()), 0.99)
        return {
            "benchmark": "worker_replicas", "towns": TOWNS, "history_beads_per_town": HISTORY, "replicas": REPLICAS,
            "dispatch_latency_s": {
                "one_replica": {"p50": _pct(list(baseline.values()), 0.5), "p99": p99_1},
                "replicas": {"p50": _pct(list(spread.values()), 0.5), "p99": p99_n}},
            "ratio": round(p99_n / p99_1, 2) if p99_1 else None,
            "baseline": "p99 dispatch latency of one replica on the same database, same run",
            "towns_shared_out_s": round(shared_s, 2), "towns_per_replica": sorted(per_replica.values()),
            # A town ticked by two replicas at once would show gaps far under the 5 s cadence (no
            # slings in this window: nothing arms a tick sooner).
            "tick_gap_s": {"p50": _pct(gaps, 0.5), "p99": _pct(gaps, 0.99), "max": round(max(gaps), 3) if gaps else None,
                           "min": round(min(gaps), 3) if gaps else None, "under_4s": sum(g < 4 for g in gaps),
                           "samples": len(gaps), "design": 5.0},
            "kill": {"victim_towns": victim_towns, "takeover_s": round(takeover_s, 2),
                     "latency_victim_towns_p99_s": _pct([v for t, v in after.items() if t in orphaned], 0.99),
                     "latency_other_towns_p99_s": _pct([v for t, v in after.items() if t not in orphaned], 0.99)},
            "double_dispatches": sum(1 for c in starts.values() if c > 1),
            "beads_started": len(starts), "beads_slung": 3 * TOWNS,
        }
    finally:
        for w in workers:
            w.kill()
        await fake.close()
        pg.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gastown-bench-replicas-") as tmp:
        print(json.dumps(asyncio.run(run(Path(tmp)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
