"""Fresh start latency while the container resumes 20 agents at boot, against an idle container.

A worker holds two towns: one whose container registry lists 20 polecats (each resumed with its own
kilo and prompt), one with an empty registry (the idle container: same worker wiring, nothing to
hydrate). Hydrating round: boot a container for the first town and at once ``POST /agents/start`` a
new agent; its time to 201 is the figure (the per-agent hydration gate lets it run beside the
resumes, and resumes not yet begun wait for it). Once some resumes run and others still boot, a
second start is timed too (``mid_hydration_ratio``: it shares the CPU with the boots in flight).
Idle runs: the same start on the idle container. Order: idle, hydrating, idle (the idle baseline
is the median of the runs around it). Target: ratio ≤ 1.2. ``hydration_vs_serial_starts`` is the
whole hydration against N real starts one after another on the idle container (measured last, in
the same run, the same N as the hydration).

Each kilo holds ~0.75 GB, so the bench checks free memory first and uses fewer agents when 21 would
not fit (the JSON says how many). ``BENCH_HYDRATION_AGENTS`` / ``BENCH_HYDRATION_CONCURRENCY`` /
``BENCH_HYDRATION_ROUNDS`` override the defaults (20, the runtime default for this machine's CPUs, 1).

Run: ``python -m bench.hydration_bench``. Prints one JSON line.
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
    assert_no_kilo_left, configure_runtime_log, emit, fake_llm, log, machine, median, ms, ms_list, my_kilos,
    rmtree, runtime_config, start_body, start_container, start_worker, tail,
)
from supervisor.cpus import default_hydration_concurrency

AGENTS = int(os.environ.get("BENCH_HYDRATION_AGENTS", "20"))
CONCURRENCY = int(os.environ.get("BENCH_HYDRATION_CONCURRENCY", str(default_hydration_concurrency())))
ROUNDS = int(os.environ.get("BENCH_HYDRATION_ROUNDS", "1"))
GB_PER_KILO = 0.75
RESERVE_GB = 3.0


def affordable_agents(want: int) -> int:
    free_gb = psutil.virtual_memory().available / 2**30
    fit = int((free_gb - RESERVE_GB) / GB_PER_KILO) - 1  # minus the fresh agent
    return max(1, min(want, fit))


async def bench(tmp: Path) -> dict:
    t_begin = time.monotonic()
    async with fake_llm() as llm:
        worker = await start_worker(tmp / "worker.db")
        try:
            town_h, token_h = await worker.create_town(default_model="fake/m1")
            town_i, token_i = await worker.create_town(default_model="fake/m1")
            idle = await start_container(runtime_config(tmp / "idle", llm, town_id=town_i, api_url=worker.url,
                                                        container_token=token_i))
            idle_runs: list[float] = []
            hyd_runs: list[dict] = []
            try:
                await idle.runtime.wait_hydrated(60)

                async def idle_run(tag: str) -> None:
                    await assert_no_kilo_left()
                    await asyncio.sleep(0.3)
                    prompt = f"idle fresh {tag}"
                    t0 = time.perf_counter()
                    status, body = await idle.start_agent(agent_id=f"fresh-idle-{tag}", town_id=town_i, prompt=prompt)
                    elapsed = time.perf_counter() - t0
                    if status != 201:
                        raise RuntimeError(f"idle start returned {status}: {body}")
                    await llm.wait_for(lambda r: prompt in r.last_user_text, timeout=60)
                    assert (await idle.request("POST", f"/agents/fresh-idle-{tag}/stop"))[0] == 200
                    idle_runs.append(elapsed)
                    log(f"hydration: idle start {ms(elapsed):8.1f} ms")

                async def mid_hydration_start(container, rt, tag: str) -> float | None:
                    """A second start once resumes are running *and* others still boot (None if
                    hydration finished first): it waits only for the boots already in flight."""
                    while not rt.hydrated.is_set():
                        resumes = [a for a in rt.supervisor.agents.values() if a.agent_id.startswith("polecat-")]
                        if any(a.state.value == "running" for a in resumes) and any(
                                a.state.value == "starting" for a in resumes):
                            break
                        await asyncio.sleep(0.05)
                    else:
                        return None
                    t0 = time.perf_counter()
                    status, body = await container.start_agent(agent_id=f"fresh-mid-{tag}", town_id=town_h,
                                                               prompt=f"mid fresh {tag}")
                    if status != 201:
                        raise RuntimeError(f"start mid-hydration returned {status}: {body}")
                    log(f"hydration: start mid-hydration {ms(time.perf_counter() - t0):8.1f} ms "
                        f"({sum(1 for a in resumes if a.state.value == 'running')} resumes running)")
                    return time.perf_counter() - t0

                async def hydrating_run(tag: str) -> None:
                    await assert_no_kilo_left()
                    n = affordable_agents(AGENTS)
                    entries = [{"agent_id": f"polecat-{i}", "workdir": f"/w/{i}",
                                "request": start_body(agent_id=f"polecat-{i}", town_id=town_h, prompt=f"resume {i}")}
                               for i in range(n)]
                    status, body = await worker.request("POST", f"/api/towns/{town_h}/container-registry", json=entries)
                    assert status == 200, body
                    data_dir = tmp / f"hydrating-{tag}"
                    cfg = runtime_config(data_dir, llm, town_id=town_h, api_url=worker.url, container_token=token_h,
                                         hydration_concurrency=CONCURRENCY)
                    await asyncio.sleep(0.3)
                    mem_before = psutil.virtual_memory().available
                    t_boot = time.perf_counter()
                    container = await start_container(cfg)
                    try:
                        rt = container.runtime
                        prompt = f"hydrating fresh {tag}"
                        t0 = time.perf_counter()
                        status, body = await container.start_agent(agent_id=f"fresh-{tag}", town_id=town_h,
                                                                   prompt=prompt)
                        elapsed = time.perf_counter() - t0
                        if status != 201:
                            raise RuntimeError(f"start during hydration returned {status}: {body}")
                        in_flight = sum(1 for a in rt.supervisor.agents.values() if a.state.value == "starting")
                        running_at_201 = sum(1 for a in rt.supervisor.agents.values() if a.state.value == "running") - 1
                        mid = await mid_hydration_start(container, rt, tag)
                        await rt.wait_hydrated(600)
                        hydration_s = time.perf_counter() - t_boot
                        failures = {a: r for a, r in rt.hydrator.results.items() if r != "resumed"}
                        if failures:  # reported, not fatal: on an overloaded box kilo can miss its 60 s start timeout
                            log(f"hydration: {len(failures)} resumes failed: {failures}")
                        kilos = len(my_kilos())
                        mem_used_gb = (mem_before - psutil.virtual_memory().available) / 2**30
                        await llm.wait_for(lambda r: prompt in r.last_user_text, timeout=60)
                    finally:
                        t_stop = time.perf_counter()
                        await container.close()
                        stop_s = time.perf_counter() - t_stop
                    await assert_no_kilo_left()
                    rmtree(data_dir)
                    hyd_runs.append({"start_s": elapsed, "mid_start_s": mid, "agents": n, "hydration_s": hydration_s,
                                     "resumes_starting_at_201": in_flight, "resumes_running_at_201": running_at_201,
                                     "kilos_alive": kilos, "resume_failures": len(failures),
                                     "mem_used_gb": round(mem_used_gb, 1), "shutdown_s": stop_s})
                    log(f"hydration: start during hydration of {n} {ms(elapsed):8.1f} ms "
                        f"(hydration {hydration_s:.1f} s, {kilos} kilos, ~{mem_used_gb:.1f} GB)")

                async def serial_starts(n: int) -> float:
                    """The baseline of the whole hydration: n real starts one after another on the idle
                    container (each until its 201, all kept running as resumes are), then stopped."""
                    await assert_no_kilo_left()
                    t0 = time.perf_counter()
                    for i in range(n):
                        status, body = await idle.start_agent(agent_id=f"serial-{i}", town_id=town_i,
                                                              prompt=f"serial {i}")
                        if status != 201:
                            raise RuntimeError(f"serial start {i} returned {status}: {body}")
                    total = time.perf_counter() - t0
                    for i in range(n):
                        await idle.request("POST", f"/agents/serial-{i}/stop")
                    log(f"hydration: {n} serial starts {total:.1f} s")
                    return total

                await idle_run("0")
                for r in range(ROUNDS):
                    await hydrating_run(str(r))
                    await idle_run(str(r + 1))
                serial_s = await serial_starts(hyd_runs[-1]["agents"])
            finally:
                await idle.close()
        finally:
            await worker.close()
    await assert_no_kilo_left()
    idle_med = median(idle_runs)
    hyd_med = median(r["start_s"] for r in hyd_runs)
    mids = [r["mid_start_s"] for r in hyd_runs if r["mid_start_s"] is not None]
    last = hyd_runs[-1]
    return {
        "benchmark": "hydration_fresh_start",
        "start_during_hydration_ms": ms(hyd_med),
        "start_on_idle_ms": ms(idle_med),
        "ratio": round(hyd_med / idle_med, 2),
        "target": "ratio <= 1.2",
        "pass": hyd_med / idle_med <= 1.2,
        "start_mid_hydration_ms": ms(median(mids)) if mids else None,
        "mid_hydration_ratio": round(median(mids) / idle_med, 2) if mids else None,
        "agents_hydrated": last["agents"],
        "hydration_concurrency": CONCURRENCY,
        "hydration_total_s": round(last["hydration_s"], 1),
        "serial_starts_s": round(serial_s, 1),
        "hydration_vs_serial_starts": round(last["hydration_s"] / serial_s, 2),
        "serial_baseline": f"{last['agents']} real starts one after another on the idle container, same run",
        "resumes_starting_at_201": last["resumes_starting_at_201"],
        "resumes_running_at_201": last["resumes_running_at_201"],
        "kilos_alive_after_hydration": last["kilos_alive"],
        "resume_failures": sum(r["resume_failures"] for r in hyd_runs),
        "mem_used_gb": last["mem_used_gb"],
        "shutdown_of_all_s": round(last["shutdown_s"], 1),
        "idle_runs_ms": ms_list(idle_runs),
        "hydrating_runs_ms": ms_list(r["start_s"] for r in hyd_runs),
        "order": "idle, hydrating, idle" + (" ..." if ROUNDS > 1 else ""),
        "machine": machine(),
        "total_s": round(time.monotonic() - t_begin, 1),
    }


async def main_async() -> int:
    with tempfile.TemporaryDirectory(prefix="hydration-bench-") as d:
        tmp = Path(d)
        configure_runtime_log(tmp / "runtime.log")
        try:
            emit(await bench(tmp))
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
    return asyncio.run(main_async())


if __name__ == "__main__":
    sys.exit(main())
