"""Control server throughput: ``GET /agents/{id}/status`` requests/s and latency percentiles.

The container (served like ``gastown container``: one asyncio loop, one core, no access log) holds two
agent records: one running agent with its real kilo (status walks the kilo process tree for RSS) and
one stopped agent (a record without a process). A load generator in a separate process (this
module with ``--client``: a minimal HTTP/1.1 keep-alive client on asyncio streams, so the client is
cheap next to the server) sends a fixed number of requests over a fixed number of connections,
bounded in time, after a short warm-up; it reports req/s and latency percentiles measured per
request. The server's CPU seconds over each load run give req per CPU-second, which is what one
dedicated core would sustain on this box even when other work shares it. The baseline, in the same
run, process and loop: a bare aiohttp handler on the same path shape that checks the bearer and
answers a small JSON body, loaded by the same client; running agent and bare handler alternate
(A B B A), then the stopped agent. ``ratio`` = our req/s ÷ the bare handler's. Target: ≥ 2000 req/s
and p99 < 20 ms (running agent).

Run: ``python -m bench.control_bench``. Prints one JSON line.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from aiohttp import web

from bench.common import (
    CONTROL_TOKEN, abba, assert_no_kilo_left, configure_runtime_log, emit, fake_llm, log, machine, median, my_kilos,
    pct, runtime_config, settle, start_container, tail,
)

REQUESTS = int(os.environ.get("BENCH_CONTROL_REQUESTS", "4000"))
CONNECTIONS = int(os.environ.get("BENCH_CONTROL_CONNECTIONS", "8"))
WARMUP = 500
MAX_S = 10.0
PAIRS = 2


# -- load generator (separate process) ------------------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_client(url: str, token: str, count: int, connections: int, warmup: int, max_s: float) -> dict:
    parts = urlsplit(url)
    request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
               "Connection: keep-alive\r\n\r\n").encode()
    latencies: list[float] = []
    errors = 0
    issued = 0
    ready = 0
    deadline = 0.0
    all_ready, go = asyncio.Event(), asyncio.Event()

    async def conn(n_warm: int) -> None:
        nonlocal issued, errors, ready
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for _ in range(n_warm):
                writer.write(request)
                await _read_response(reader)
            ready += 1
            if ready == connections:
                all_ready.set()
            await go.wait()
            while issued < count and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(conn(warmup // connections)) for _ in range(connections)]
    await asyncio.wait([asyncio.ensure_future(all_ready.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED)
    deadline = time.perf_counter() + max_s  # the clock starts once every connection is open and warm
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": errors, "elapsed_s": elapsed, "rps": len(latencies) / elapsed,
            "p50_ms": pct(latencies, 50) * 1000, "p90_ms": pct(latencies, 90) * 1000,
            "p99_ms": pct(latencies, 99) * 1000, "max_ms": max(latencies) * 1000}


def client_main(argv: list[str]) -> int:
    url, count, connections, warmup, max_s = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    token = os.environ["BENCH_CONTROL_TOKEN"]
    print(json.dumps(asyncio.run(run_client(url, token, count, connections, warmup, max_s))), flush=True)
    return 0


# -- server side ----------------------------------------------------------------------------------
def cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


async def load(url: str) -> dict:
    env = {**os.environ, "BENCH_CONTROL_TOKEN": CONTROL_TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.control_bench", "--client", url, str(REQUESTS), str(CONNECTIONS), str(WARMUP),
        str(MAX_S), env=env, stdout=subprocess.PIPE)
    c0, w0 = cpu_s(), time.perf_counter()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), MAX_S + 30)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    # The server CPU window includes the warm-up and connection setup: a slight overestimate of cost.
    cpu, wall = cpu_s() - c0, time.perf_counter() - w0
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed with exit code {proc.returncode}")
    r = json.loads(out)
    r["server_cpu_s"] = cpu
    r["server_cpu_util"] = cpu / wall
    r["req_per_server_cpu_s"] = (r["requests"] + WARMUP) / cpu if cpu > 0 else None
    return r


async def bare_server() -> tuple[web.AppRunner, str]:
    """The baseline: aiohttp with one handler and nothing else (no middlewares, no lookups)."""
    async def status(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {CONTROL_TOKEN}":
            return web.json_response({"error": {"code": "UNAUTHORIZED", "message": "bad token"}}, status=401)
        return web.json_response({"agent_id": request.match_info["agent_id"], "status": "running"})

    app = web.Application()
    app.router.add_get("/agents/{agent_id}/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def bench(tmp: Path) -> dict:
    t_begin = time.monotonic()
    async with fake_llm() as llm:
        container = await start_container(runtime_config(tmp / "data", llm))
        bare_runner, bare_url = await bare_server()
        runs: dict[str, list[dict]] = {"running": [], "stopped": [], "bare": []}
        try:
            agent_ids = ("status-running", "status-stopped")
            started = await asyncio.gather(*(container.start_agent(agent_id=a, prompt=f"hello {a}") for a in agent_ids))
            assert all(status == 201 for status, _ in started), started
            for agent_id in agent_ids:
                await llm.wait_for(lambda r, a=agent_id: f"hello {a}" in r.last_user_text, timeout=60)
            assert (await container.request("POST", "/agents/status-stopped/stop"))[0] == 200
            rec = container.runtime.supervisor.get("status-running")
            await settle(rec.process.pids())
            status, body = await container.request("GET", "/agents/status-running/status")
            assert status == 200 and body["status"] == "running" and body["rss_bytes"] > 0, body
            status, body = await container.request("GET", "/agents/status-stopped/status")
            assert status == 200 and body["status"] == "exited" and body["pid"] is None, body
            cost = {}  # what building one status body costs in-process (no HTTP), per agent kind
            for kind in ("running", "stopped"):
                r = container.runtime.supervisor.get(f"status-{kind}")
                t0 = time.perf_counter()
                for _ in range(200):
                    r.status()
                cost[kind] = round((time.perf_counter() - t0) / 200 * 1e6)
            for kind in [*("running" if side == "A" else "bare" for side in abba(PAIRS)), *["stopped"] * PAIRS]:
                base = bare_url if kind == "bare" else container.url
                r = await load(f"{base}/agents/status-{'running' if kind == 'bare' else kind}/status")
                if r["errors"]:
                    raise RuntimeError(f"{r['errors']} non-200 answers")
                runs[kind].append(r)
                log(f"control: status of {kind} agent: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.1f} ms, "
                    f"server cpu {r['server_cpu_util']:.0%}")
        finally:
            await bare_runner.cleanup()
            await container.close()
    await assert_no_kilo_left()

    def summary(rs: list[dict]) -> dict:
        return {"rps_median": round(median(r["rps"] for r in rs)),
                "p50_ms": round(median(r["p50_ms"] for r in rs), 2),
                "p99_ms": round(median(r["p99_ms"] for r in rs), 2),
                "max_ms": round(max(r["max_ms"] for r in rs), 1),
                "req_per_server_cpu_s": round(median(r["req_per_server_cpu_s"] for r in rs)),
                "server_cpu_util": round(median(r["server_cpu_util"] for r in rs), 2),
                "runs_rps": [round(r["rps"]) for r in rs]}

    run, stop, bare = summary(runs["running"]), summary(runs["stopped"]), summary(runs["bare"])
    return {
        "benchmark": "control_status",
        "rps": run["rps_median"],
        "p99_ms": run["p99_ms"],
        "target": "rps >= 2000 and p99 < 20 ms",
        "pass": run["rps_median"] >= 2000 and run["p99_ms"] < 20,
        "ratio": round(run["rps_median"] / bare["rps_median"], 2),
        "ratio_of": "our req/s / a bare aiohttp handler's (same process, loop and client, same run)",
        "status_body_us": cost,
        "running_agent": run,
        "stopped_agent": stop,
        "bare_aiohttp": bare,
        "requests_per_run": REQUESTS,
        "connections": CONNECTIONS,
        "client": "separate process, HTTP/1.1 keep-alive over asyncio streams, one request in flight per connection",
        "machine": machine(),
        "total_s": round(time.monotonic() - t_begin, 1),
    }


async def main_async() -> int:
    with tempfile.TemporaryDirectory(prefix="control-bench-") as d:
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
    if sys.argv[1:2] == ["--client"]:
        return client_main(sys.argv[2:])
    return asyncio.run(main_async())


if __name__ == "__main__":
    sys.exit(main())
