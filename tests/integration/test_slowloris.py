"""Slow clients cannot hold the servers (issue 13, item 7): a request head sent a byte at a time is
cut within ~10 s, a body trickled a byte at a time gets a 408, and 200 idle connections do not stop
a real client from being served. Real ``gastown worker`` and ``gastown container`` processes."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest

from gastown.core.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["worker", "container"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, str]]:
    yield from _serve(request.param, tmp_path, {})


@pytest.fixture(params=["worker", "container"])
def capped_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, str]]:
    yield from _serve(request.param, tmp_path, {"GASTOWN_MAX_CONNECTIONS": "20"})


def _serve(kind: str, tmp_path: Path, extra: dict[str, str]) -> Iterator[tuple[int, str]]:
    port = free_port()
    env = {"PATH": os.environ["PATH"], **extra}
    if kind == "worker":
        env |= {"GASTOWN_ADMIN_TOKEN": "a" * 32, "GASTOWN_JWT_SECRET": "j" * 32}
        argv = ["worker", "--port", str(port), "--db", str(tmp_path / "w.db")]
        body_path = "/api/users"
    else:
        env |= {"GASTOWN_DATA_DIR": str(tmp_path / "data"), "GASTOWN_TOWN_ID": "town-x"}
        argv = ["container", "--insecure", "--host", "127.0.0.1", "--port", str(port)]
        body_path = "/agents/start"
    proc = subprocess.Popen([sys.executable, "-m", "gastown.cli", *argv], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout == "":
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not listen"
            time.sleep(0.1)
        yield port, body_path
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def closed_after(port: int, head: bytes, trickle: bytes, every: float = 1.0, limit: float = 30) -> tuple[float, bytes]:
    """Send ``head``, then ``trickle`` a byte every ``every`` seconds, until the server answers or
    closes; how long that took and what it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(head)
    await writer.drain()
    got = b""
    try:
        for i in range(int(limit / every)):
            try:
                got += await asyncio.wait_for(reader.read(4096), every)
                if got or reader.at_eof():
                    break
            except asyncio.TimeoutError:
                writer.write(trickle[i % len(trickle):i % len(trickle) + 1])
                await writer.drain()
    except ConnectionError:
        pass
    writer.close()
    return time.monotonic() - t0, got


async def test_a_head_sent_a_byte_at_a_time_is_cut_within_about_10_s(server: tuple[int, str]) -> None:
    port, _ = server
    elapsed, _ = await closed_after(port, b"GET /alive HTTP/1.1\r\nHost: x\r\n", b"X-Slow: aaaaaaaaaaaaaaaaaaaa")
    assert elapsed < 15, elapsed


async def test_a_body_sent_a_byte_at_a_time_gets_a_408(server: tuple[int, str]) -> None:
    port, path = server
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {'a' * 32}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
    elapsed, got = await closed_after(port, head, b'{"name": "' + b"x" * 990)
    assert elapsed < 15 and got.startswith(b"HTTP/1.1 408") and b"REQUEST_TIMEOUT" in got, (elapsed, got[:300])


async def test_200_idle_connections_do_not_stop_a_real_client(server: tuple[int, str]) -> None:
    port, _ = server
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    try:
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/alive",
                                                             timeout=aiohttp.ClientTimeout(total=5)) as r:
            assert r.status == 200
        assert time.monotonic() - t0 < 2
    finally:
        for _, w in idle:
            w.close()


async def test_past_the_connection_cap_a_new_connection_gets_a_503_and_is_served_once_idle_ones_are_cut(
        capped_server: tuple[int, str]) -> None:
    """A flood of connections cannot use up the server's descriptors: past the cap a newcomer is
    told so at once (503, the JSON error), and the idle ones are cut within ~10 s."""
    port, _ = capped_server
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    try:
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503") and b"TOO_MANY_CONNECTIONS" in refused, refused
        t0 = time.monotonic()
        while True:
            try:
                async with aiohttp.ClientSession() as http, http.get(
                        f"http://127.0.0.1:{port}/alive", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() - t0 < 20, "the idle connections were never cut"
            await asyncio.sleep(0.5)
    finally:
        for _, w in idle:
            w.close()
