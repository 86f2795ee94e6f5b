"""Reconciler tick time for one town with 1k / 10k / 50k beads (``python -m bench.reconciler_bench``),
on SQLite and on a real PostgreSQL server (started for the run: tests/pgserver.py).

The town looks like a long-lived one: most beads are history (closed), a slice is live: open beads
waiting on a blocker, beads in progress with working polecats (fresh heartbeats), beads in review
with queued MRs. Each measured tick is the full ``run_tick`` (container status pre-phase against a
fake container, event drain, state load, ``reconcile``, apply, effects, invariants) on a file
database, then on PostgreSQL. Prints one JSON line per size and engine, and per size the ratio of
PostgreSQL's median tick to SQLite's (measured in the same run); target < 50 ms at 10k beads.
``BENCH_RECONCILER_ENGINES`` picks the engines (default ``sqlite,postgresql``).
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from worker_api import store
from worker_api.db import Database, to_json
from worker_api.dispatch import StartResult
from worker_api.reconciler.reconcile import reconcile
from worker_api.reconciler.state import load_state
from worker_api.reconciler.tick import TickDeps, run_tick

T0 = 1_800_000_000_000
TOWN = "town-bench"
TICKS = 20


class NullContainer:
    async def start_agent(self, target, request):  # noqa: ANN001, ANN201
        return StartResult("started", 201)

    async def agent_statuses(self, target, agent_ids):  # noqa: ANN001, ANN201
        return dict.fromkeys(agent_ids, "running")

    async def stop_agent(self, target, agent_id):  # noqa: ANN001, ANN201
        return True

    async def send_message(self, target, agent_id, prompt):  # noqa: ANN001, ANN201
        return True


def populate(conn, n: int) -> dict[str, int]:  # noqa: ANN001
    store.create_town(conn, town_id=TOWN, name="bench", container_url="http://127.0.0.1:1", control_token="x" * 16,
                      default_model="fake/m", small_model=None, organization_id=None, now_ms=T0)
    for r in range(5):
        conn.execute("INSERT INTO rigs (town_id, rig_id, name, git_url, created_at) VALUES (?, ?, ?, ?, ?)",
                     (TOWN, f"rig-{r}", f"rig-{r}", "https://example.com/r.git", T0))
    beads, deps, agents, reviews = [], [], [], []
    counts = {"closed": 0, "open_blocked": 0, "in_progress": 0, "in_review": 0}
    n_live = max(n // 10, 4)
    blocker = "bead-blocker"
    beads.append((TOWN, blocker, "issue", "in_progress", "blocker", "rig-0", None, T0, T0))
    agents.append((TOWN, "polecat-blocker", "polecat", "pb", "rig-0", "working", blocker, T0, T0))
    live = 0
    for i in range(n - 1):
        rig = f"rig-{i % 5}"
        bid = f"bead-{i:08d}"
        kind = i % (n // n_live) if i < n_live * (n // n_live) else 1
        if kind == 0:
            live += 1
        if kind == 0 and live % 4 == 0:
            beads.append((TOWN, bid, "issue", "open", f"t{i}", rig, None, T0 + i, T0 + i))
            deps.append((TOWN, bid, blocker, "blocks"))
            counts["open_blocked"] += 1
        elif kind == 0 and live % 4 == 1:
            beads.append((TOWN, bid, "issue", "in_progress", f"t{i}", rig, f"polecat-{i}", T0 + i, T0 + i))
            agents.append((TOWN, f"polecat-{i}", "polecat", f"p{i}", rig, "working", bid, T0, T0))
            counts["in_progress"] += 1
        elif kind == 0:
            beads.append((TOWN, bid, "issue", "in_review", f"t{i}", rig, None, T0 + i, T0 + i))
            beads.append((TOWN, f"mr-{i:08d}", "merge_request", "open", f"r{i}", rig, None, T0 + i, T0 + i))
            deps.append((TOWN, f"mr-{i:08d}", bid, "tracks"))
            reviews.append((TOWN, f"mr-{i:08d}", f"gt/x/{i}", "main"))
            counts["in_review"] += 1
        else:
            beads.append((TOWN, bid, "issue", "closed", f"t{i}", rig, None, T0 + i, T0 + i))
            counts["closed"] += 1
    conn.executemany("INSERT INTO town_beads (town_id, bead_id, type, status, title, rig_id, assignee_agent_id,"
                     " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)", beads)
    conn.executemany("INSERT INTO bead_dependencies VALUES (?,?,?,?)", deps)
    conn.executemany("INSERT INTO review_metadata (town_id, bead_id, branch, target_branch) VALUES (?,?,?,?)", reviews)
    conn.executemany("INSERT INTO agents (town_id, agent_id, role, name, rig_id, status, current_hook_bead_id,"
                     " last_activity_at, created_at) VALUES (?,?,?,?,?,?,?,?,?)", agents)
    conn.execute("UPDATE town_beads SET metadata = ? WHERE town_id = ? AND type = 'merge_request'",
                 (to_json({}), TOWN))
    return {**counts, "rows": len(beads), "agents": len(agents)}


def heartbeat_all(conn, now: int) -> None:  # noqa: ANN001
    conn.execute("UPDATE agents SET last_activity_at = ? WHERE town_id = ? AND status = 'working'", (now, TOWN))


async def bench(n: int, engine: str = "sqlite", pg: object = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(pg.new_database("bench") if engine == "postgresql" else Path(tmp) / "bench.db")  # type: ignore[attr-defined]
        try:
            shape = await db.run(populate, n)
            if engine == "postgresql":
                # The planner's statistics as autovacuum leaves them a minute after a bulk load: without
                # them PostgreSQL plans the invariants' anti-joins as nested loops (seconds at 10k beads).
                await db.run(lambda conn: conn.execute("ANALYZE"))
            clock = {"ms": T0}
            deps = TickDeps(container=NullContainer())
            times = []
            for i in range(TICKS + 3):
                clock["ms"] += 5000
                await db.run(heartbeat_all, clock["ms"])
                t0 = time.perf_counter()
                result = await run_tick(db, TOWN, deps, lambda: clock["ms"])
                if i >= 3:  # the first ticks dispatch/pop the queues; measure the steady state
                    times.append((time.perf_counter() - t0) * 1000)
                assert result is not None and result.violations == [], result
            t0 = time.perf_counter()
            state = await db.run(load_state, TOWN, clock["ms"], write=False)
            load_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            actions = reconcile(state)
            reconcile_ms = (time.perf_counter() - t0) * 1000
        finally:
            await db.aclose()
    times.sort()
    return {"bench": "reconciler_tick", "engine": engine, "beads": shape["rows"], "shape": shape, "ticks": len(times),
            "tick_ms_median": round(statistics.median(times), 2),
            "tick_ms_p95": round(times[int(len(times) * 0.95) - 1], 2), "load_state_ms": round(load_ms, 2),
            "reconcile_ms": round(reconcile_ms, 2), "live_beads": len(state.beads), "actions": len(actions)}


def main() -> int:
    env = os.environ.get("BENCH_RECONCILER_SIZES", "")  # e.g. "200" for the smoke test
    sizes = [int(a) for a in sys.argv[1:]] or [int(a) for a in env.split(",") if a] or [1_000, 10_000, 50_000]
    engines = [e for e in os.environ.get("BENCH_RECONCILER_ENGINES", "sqlite,postgresql").split(",") if e]
    pg = None
    if "postgresql" in engines:
        from tests.pgserver import start_pg  # a real server of Debian's PostgreSQL (make pg-tools)
        pg = start_pg()
    try:
        for n in sizes:
            results = {}
            for engine in engines:
                results[engine] = asyncio.run(bench(n, engine, pg))
                print(json.dumps(results[engine]), flush=True)
            if len(results) == 2:
                print(json.dumps({"benchmark": f"reconciler_tick_pg_vs_sqlite_{results['sqlite']['beads']}",
                                  "ratio": round(results["postgresql"]["tick_ms_median"]
                                                 / results["sqlite"]["tick_ms_median"], 2),
                                  "baseline": "SQLite's median tick at the same size, same run"}), flush=True)
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
