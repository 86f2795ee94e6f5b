"""``gastown worker`` as a real process: starts, answers /alive, exits 0 on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gastown.core.ports import free_port
from tests.httpsync import get_json
from tests.test_worker_api_support import ADMIN_TOKEN, CONTROL_TOKEN, JWT_SECRET

GASTOWN = Path(sys.executable).parent / "gastown"


def _post(url: str, token: str, data: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(data).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=2) as resp:
        return resp.status, json.loads(resp.read())


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GASTOWN_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_process_serves_and_exits_zero_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    db = tmp_path / "sub" / "worker.db"
    proc = subprocess.Popen(
        [str(GASTOWN), "worker", "--port", str(port), "--db", str(db)],
        env=_env(GASTOWN_ADMIN_TOKEN=ADMIN_TOKEN, GASTOWN_JWT_SECRET=JWT_SECRET),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = get_json(f"http://127.0.0.1:{port}/alive")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "worker did not answer /alive"
                time.sleep(0.05)
        assert (status, body) == (200, {"status": "ok"})
        status, body = get_json(f"http://127.0.0.1:{port}/api/towns/town-000000000000", ADMIN_TOKEN)
        assert status == 404 and body["error"]["code"] == "TOWN_NOT_FOUND"
        status, body = _post(f"http://127.0.0.1:{port}/api/towns", ADMIN_TOKEN, {
            "name": "T", "container_url": "http://127.0.0.1:8080", "control_token": CONTROL_TOKEN})
        assert status == 201
        status, _ = get_json(f"http://127.0.0.1:{port}/api/towns/{body['town_id']}", body["container_token"] + "x")
        assert status == 401
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert db.exists()
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    names = [line["event"] for line in logged]
    assert "worker.started" in names and names[-1] == "worker.stopped"
    assert "town.created" in names and "auth.token_rejected" in names
    for secret in (ADMIN_TOKEN, JWT_SECRET, CONTROL_TOKEN, body["container_token"] if isinstance(body, dict) else ""):
        assert secret not in stderr


def test_worker_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(GASTOWN), "worker", "--port", str(free_port()), "--db", str(tmp_path / "w.db")],
        env=_env(GASTOWN_ADMIN_TOKEN=ADMIN_TOKEN), capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "GASTOWN_JWT_SECRET" in proc.stderr
