"""Start latency of an agent: cold (a new kilo) against a bare kilo, and warm (the prewarmed mayor).

cold_start: ``POST /agents/start`` → 201 (workspace ready, kilo spawned and healthy, session created,
event stream live, prompt sent) against the floor set by kilo itself: spawn ``kilo serve`` with the
env the runtime builds, wait for its listening line, create a session and send the prompt by hand
(``KiloProcess`` + ``KiloClient``; its git workspace is prepared outside the timing). Both sides use a
fresh agent dir (kilo creates its db), alternate B A A B after one unmeasured start of each, and each
run is checked end to end: the fake model must receive the prompt before the agent is stopped.
Target: ratio of medians ≤ 1.10 (per-pair ratios are reported too).

warm_start: a worker with a town whose mayor is known; the container prewarms the mayor's kilo during
boot hydration, then ``POST /agents/start`` for the mayor is timed. Between runs the mayor is stopped
and prewarmed again (``runtime.hydrator.prewarm_mayor()``) and the kilo is left to settle (CPU quiet).
Runs alternate a first start (empty kilo db: session created, prompt sent) and a resume (the mayor's
previous session is reused, no prompt). Target: p95 ≤ 50 ms.

Run: ``python -m bench.start_bench [cold|warm]`` (both by default). Prints one JSON line each.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import (
    abba, assert_no_kilo_left, bare_start, configure_runtime_log, emit, fake_llm, log, machine, median, ms, ms_list,
    my_kilos, pct, prepare_bare, rmtree, runtime_config, settle, start_body, start_container, start_worker, tail,
)
from supervisor.hydration import PREWARM_FIELDS, mayor_rig_id
from supervisor.models import StartAgentRequest

COLD_PAIRS = int(os.environ.get("BENCH_COLD_PAIRS", "4"))
WARM_RUNS = max(2, int(os.environ.get("BENCH_WARM_RUNS", "6")))  # at least one first start and one resume


async def cold(tmp: Path) -> dict:
    t_begin = time.monotonic()
    async with fake_llm() as llm:
        bare_cfg = runtime_config(tmp / "bare", llm)
        container = await start_container(runtime_config(tmp / "container", llm))
        bare_runs: list[dict] = []
        rt_runs: list[float] = []
        pairs: list[dict[str, float]] = []
        git_times: list[float] = []
        try:
            async def run_bare(tag: str) -> dict:
                req = StartAgentRequest(**start_body(agent_id=f"bare-{tag}", prompt=f"cold bare {tag}"))
                t0 = time.perf_counter()
                paths = await asyncio.to_thread(prepare_bare, bare_cfg, req)
                git_times.append(time.perf_counter() - t0)
                b = await bare_start(bare_cfg, req, paths)
                try:
                    await llm.wait_for(lambda r: f"cold bare {tag}" in r.last_user_text, timeout=60)
                finally:
                    await b.close()
                return b.phases

            async def run_runtime(tag: str) -> float:
                t0 = time.perf_counter()
                status, body = await container.start_agent(agent_id=f"rt-{tag}", prompt=f"cold runtime {tag}")
                elapsed = time.perf_counter() - t0
                if status != 201:
                    raise RuntimeError(f"start returned {status}: {body}")
                await llm.wait_for(lambda r: f"cold runtime {tag}" in r.last_user_text, timeout=60)
                status, _ = await container.request("POST", f"/agents/rt-{tag}/stop")
                assert status == 200
                return elapsed

            log("cold_start: warm-up (one of each, not measured)")
            await run_bare("warmup")
            await run_runtime("warmup")
            # B first: whatever slows the first measured run (it often is) counts against the runtime.
            for i, side in enumerate(abba(COLD_PAIRS, first="B")):
                await assert_no_kilo_left()
                await asyncio.sleep(0.3)
                if i % 2 == 0:
                    pairs.append({})
                if side == "A":
                    bare_runs.append(await run_bare(str(i)))
                    pairs[-1]["bare"] = bare_runs[-1]["total_s"]
                    log(f"cold_start: bare    {ms(bare_runs[-1]['total_s']):8.1f} ms")
                else:
                    rt_runs.append(await run_runtime(str(i)))
                    pairs[-1]["runtime"] = rt_runs[-1]
                    log(f"cold_start: runtime {ms(rt_runs[-1]):8.1f} ms")
        finally:
            await container.close()
    await assert_no_kilo_left()
    bare_totals = [r["total_s"] for r in bare_runs]
    bare_med, rt_med = median(bare_totals), median(rt_runs)
    return {
        "benchmark": "cold_start",
        "runtime_start_ms_median": ms(rt_med),
        "bare_kilo_ms_median": ms(bare_med),
        "ratio": round(rt_med / bare_med, 3),
        "ratio_of_minima": round(min(rt_runs) / min(bare_totals), 3),
        "pair_ratios": [round(p["runtime"] / p["bare"], 3) for p in pairs],
        "pair_ratio_median": round(median(p["runtime"] / p["bare"] for p in pairs), 3),
        "target": "ratio <= 1.10",
        "pass": rt_med / bare_med <= 1.10,
        "overhead_ms_median": ms(rt_med - bare_med),
        "runtime_runs_ms": ms_list(rt_runs),
        "bare_runs_ms": ms_list(bare_totals),
        "bare_phases_ms_median": {k: ms(median(r[k] for r in bare_runs))
                                  for k in ("listening_s", "session_s", "prompt_s")},
        "workspace_git_init_ms_median": ms(median(git_times)),
        "pairs": COLD_PAIRS,
        "order": "B A A B ... (A = bare kilo, B = /agents/start), after one unmeasured start of each",
        "machine": machine(),
        "total_s": round(time.monotonic() - t_begin, 1),
    }


async def warm(tmp: Path) -> dict:
    t_begin = time.monotonic()
    async with fake_llm() as llm:
        worker = await start_worker(tmp / "worker.db")
        try:
            town_id, token = await worker.create_town(default_model="fake/m1")
            status, body = await worker.request("POST", f"/api/towns/{town_id}/agents",
                                                json={"agent_id": "mayor", "role": "mayor", "name": "Mayor"})
            assert status == 201, body
            cfg = runtime_config(tmp / "warm", llm, town_id=town_id, api_url=worker.url, container_token=token)
            t0 = time.monotonic()
            container = await start_container(cfg)
            try:
                rt = container.runtime
                sup = rt.supervisor
                await rt.wait_hydrated(120)
                boot_prewarm_s = time.monotonic() - t0
                if "mayor" not in sup.prewarm_pool.entries:
                    raise RuntimeError(f"mayor was not prewarmed during hydration\n{tail(tmp / 'runtime.log')}")
                status, ctx = await worker.request("GET", f"/api/towns/{town_id}/prewarm-context")
                start_fields = {k: v for k, v in ctx.items() if k in PREWARM_FIELDS and v is not None and k != "agent_id"}
                runs: dict[str, list[float]] = {"first_start": [], "resume": []}
                settles: list[float] = []
                prewarm_s: list[float] = []
                for i in range(WARM_RUNS):
                    kind = "first_start" if i % 2 == 0 else "resume"
                    if i > 0:
                        if kind == "first_start":
                            rmtree(sup.agents["mayor"].paths.root)  # empty kilo db: a new session + prompt
                        t1 = time.monotonic()
                        await rt.hydrator.prewarm_mayor()
                        prewarm_s.append(time.monotonic() - t1)
                    _, proc, _ = sup.prewarm_pool.entries["mayor"]
                    settles.append(await settle(proc.pids()))
                    prompt = f"warm {i}"
                    t1 = time.perf_counter()
                    # The start the worker's desk sends: the prewarm context's fields (identity, system prompt...).
                    status, body = await container.start_agent(
                        **start_fields, agent_id="mayor", town_id=town_id, rig_id=mayor_rig_id(town_id),
                        role="mayor", prompt=prompt)
                    elapsed = time.perf_counter() - t1
                    if status != 201:
                        raise RuntimeError(f"mayor start returned {status}: {body}")
                    rec = sup.get("mayor")
                    if not rec.prewarmed or body["pid"] != proc.pid:
                        raise RuntimeError("the prewarmed server was not reused")
                    if rec.resumed != (kind == "resume"):
                        raise RuntimeError(f"run {i}: expected {kind}, resumed={rec.resumed}")
                    if kind == "first_start":
                        await llm.wait_for(lambda r, p=prompt: p in r.last_user_text, timeout=60)
                    await settle(proc.pids(), max_s=2.0)  # let the turn finish before stopping
                    runs[kind].append(elapsed)
                    log(f"warm_start: {kind:11s} {ms(elapsed):7.1f} ms")
                    status, _ = await container.request("POST", "/agents/mayor/stop")
                    assert status == 200
                floor = await kilo_floor(rt, sup)
            finally:
                await container.close()
        finally:
            await worker.close()
    await assert_no_kilo_left()
    every = runs["first_start"] + runs["resume"]
    p95 = pct(every, 95)

    def summary(v: list[float]) -> dict:
        return {"median_ms": ms(median(v)), "p95_ms": ms(pct(v, 95)), "max_ms": ms(max(v)), "runs_ms": ms_list(v)}

    return {
        "benchmark": "warm_start",
        "p95_ms": ms(p95),
        "median_ms": ms(median(every)),
        "target": "p95 <= 50 ms",
        "pass": p95 <= 0.050,
        "first_start": summary(runs["first_start"]),
        "resume": summary(runs["resume"]),
        "runs": len(every),
        "kilo_floor_ms": floor,
        "prewarm_s_median": round(median(prewarm_s), 2) if prewarm_s else None,
        "boot_to_prewarmed_s": round(boot_prewarm_s, 2),
        "settle_s_median": round(median(settles), 2),
        "machine": machine(),
        "total_s": round(time.monotonic() - t_begin, 1),
    }


async def kilo_floor(rt, sup) -> dict:  # noqa: ANN001
    """What kilo itself charges on a settled prewarmed server (one more prewarm, then the calls a
    start makes, by hand): the first session-route request (kilo bootstraps the directory's
    instance lazily), a second one, and a session create. Explains the warm figure."""
    rmtree(sup.agents["mayor"].paths.root)
    await rt.hydrator.prewarm_mayor()
    _, proc, client = sup.prewarm_pool.entries["mayor"]
    await settle(proc.pids())
    out = {}
    for name, call in (("health", client.health), ("first_list_sessions", client.list_sessions),
                       ("second_list_sessions", client.list_sessions),
                       ("create_session", lambda: client.create_session("floor"))):
        t0 = time.perf_counter()
        await call()
        out[name] = ms(time.perf_counter() - t0)
    log(f"warm_start: kilo floor {out}")
    return out  # the prewarmed server is stopped by the container's shutdown


async def main_async(which: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="start-bench-") as d:
        tmp = Path(d)
        configure_runtime_log(tmp / "runtime.log")
        try:
            if "cold" in which:
                emit(await cold(tmp))
            if "warm" in which:
                emit(await warm(tmp))
        except BaseException:
            log("runtime log tail:\n" + tail(tmp / "runtime.log"))
            raise
        finally:
            for p in my_kilos():
                try:
                    p.kill()
                except psutil.Error:
                    pass
    return 0


def main() -> int:
    which = sys.argv[1:] or ["cold", "warm"]
    return asyncio.run(main_async(which))


if __name__ == "__main__":
    sys.exit(main())
