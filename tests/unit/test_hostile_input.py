"""Hostile input gets a 4xx with the JSON error body, never a 500 (issue 13, items 7 and 8): deep
JSON, a bearer token that is not text, a refresh issued at ``Infinity``; and the start-up refusals
(a short JWT secret, an unauthenticated container on a public address); and model text that would
drive the operator's terminal."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gastown.cli.operator import fmt_event, table
from gastown.cli.term import printable
from gastown.core.ports import free_port
from tests.test_worker_api_support import ADMIN_TOKEN, Worker, clock, town, worker  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


@pytest.mark.parametrize("depth", [65, 100_000])
async def test_deeply_nested_json_is_a_400(worker: Worker, town: tuple[str, str], depth: int) -> None:
    """100 000 brackets made json.loads recurse into a RecursionError: a 500."""
    town_id, token = town
    async with worker.client.post(f"/api/towns/{town_id}/beads", data=b'{"title": "t", "labels": ' + deep(depth) + b"}",
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                           "Content-Type": "application/json"}) as r:
        body = await r.json()
    assert r.status == 400 and body["error"]["code"] == "INVALID_JSON" and "nested" in body["error"]["message"]


async def raw_get(host: str, port: int, path: str, auth: bytes) -> tuple[int, bytes]:
    """A request no well-behaved client would send (aiohttp's refuses control bytes in headers)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nAuthorization: " + auth +
                 b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_bearer_token_that_is_not_text_is_a_401(worker: Worker) -> None:
    """A token of bytes that are not UTF-8 reached hmac.compare_digest as surrogates: a 500."""
    server = worker.client.server
    for auth in (b"Bearer \xff\xfe", b"Bearer \xc3\xa9t\xc3\xa9"):
        status, body = await raw_get(server.host, server.port, "/api/towns", auth)
        assert status == 401 and b"UNAUTHORIZED" in body, (auth, status, body)
    status, _ = await raw_get(server.host, server.port, "/api/towns", b"Bearer abc\x01def")
    assert status == 400  # a control byte in a header: aiohttp's parser refuses the request itself


@pytest.mark.parametrize("issued_at", ["Infinity", "NaN", "-1", "1e300"])
async def test_a_refresh_issued_at_infinity_is_a_400(container, issued_at: str) -> None:
    """An issued_at of Infinity was taken as the newest issue time: every later refresh was ignored."""
    status, body = await container.request("POST", "/refresh-token", data=f'{{"token": "t", "issued_at": {issued_at}}}',
                                           headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "INVALID_REQUEST", body


def test_the_worker_refuses_a_jwt_secret_shorter_than_32_bytes(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "GASTOWN_ADMIN_TOKEN": "a" * 32, "GASTOWN_JWT_SECRET": "short-secret"}
    out = subprocess.run([sys.executable, "-m", "gastown.cli", "worker", "--port", str(free_port()), "--db",
                          str(tmp_path / "w.db")], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "at least 32 bytes" in out.stderr


async def test_an_insecure_container_listens_on_loopback_only(tmp_path: Path) -> None:
    """--insecure (no control token) bound 0.0.0.0: anyone reaching the port drove the agents."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], "GASTOWN_DATA_DIR": str(tmp_path / "data"), "GASTOWN_TOWN_ID": "town-x"}
    proc = subprocess.Popen([sys.executable, "-m", "gastown.cli", "container", "--insecure", "--host", "0.0.0.0",
                             "--port", str(port)], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/alive") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"], listening
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "listens on 127.0.0.1" in err


def test_model_text_cannot_drive_the_operators_terminal() -> None:
    evil = "ok\x1b]0;pwned\x07\x1b[2J\x9b31m done"
    assert "\x1b" not in printable(evil) and "\x07" not in printable(evil) and "\x9b" not in printable(evil)
    assert printable("line one\nline two\ttab", lines=True) == "line one\nline two\ttab"
    shown = fmt_event({"id": 1, "ts": 0, "type": "message.part.delta", "data": {"delta": evil}})
    assert "\x1b" not in shown and "pwned" in shown
    assert "\x1b" not in table(["NAME"], [[evil]])


async def test_telemetry_is_bounded_per_event_and_per_town(worker: Worker, town: tuple[str, str], monkeypatch) -> None:
    """A 1 MiB telemetry row was accepted and kept a week: 20 MB of the shared store in under a second."""
    from worker_api import routes_container

    town_id, token = town
    path = f"/api/towns/{town_id}/container-events"
    status, err = await worker.call("POST", path, token=token, json={"event": "x", "blob": "a" * 20_000})
    assert status == 413 and err["error"]["code"] == "PAYLOAD_TOO_LARGE"
    monkeypatch.setattr(routes_container, "KEEP_TELEMETRY_PER_TOWN", 3)
    for i in range(6):
        assert (await worker.call("POST", path, token=token, json={"event": "container.memory_usage", "i": i}))[0] == 202
    kept = await worker.db.run(lambda c: [r[0] for r in c.execute(
        "SELECT payload FROM town_events WHERE town_id = ? AND event_type = 'container_telemetry' ORDER BY id",
        (town_id,))])
    assert [json.loads(p)["i"] for p in kept] == [3, 4, 5]
