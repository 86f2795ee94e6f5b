"""Failure paths through the real plugin: 401 → refresh-container-token → one retry (never a loop),
worker errors, timeouts, bad JSON, unreachable worker. Each gives one short error line and the
server keeps answering."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio

from gastown.core.ports import free_port
from tests.test_plugin_support import (
    TOKEN,
    TOWN,
    FakeWorker,
    Plugin,
    Reply,
    identity_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

T = f"/api/towns/{TOWN}"
PRIME = f"{T}/agents/polecat-1/prime"
REFRESH = f"{T}/refresh-container-token"
PRIME_REPLY = {"agent": {"agent_id": "polecat-1"}, "hooked_bead": None, "mail": [], "open_beads": []}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def worker() -> AsyncIterator[FakeWorker]:
    async with FakeWorker() as w:
        w.defaults[("GET", PRIME)] = PRIME_REPLY
        yield w


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared(worker: FakeWorker, tmp_path_factory: Any) -> AsyncIterator[Plugin]:
    """One plugin for the tests that never refresh its token (its state stays the initial one)."""
    env = identity_env(worker.url, GASTOWN_PLUGIN_TIMEOUT_S="1.5")
    async with Plugin(env, tmp_path_factory.mktemp("shared") / "stderr.log") as p:
        yield p


@pytest.fixture(autouse=True)
def _fresh(worker: FakeWorker) -> None:
    worker.reset()


def _trace(worker: FakeWorker) -> list[tuple[str, str, str | None]]:
    return [(r.method, r.path, r.auth) for r in worker.requests]


# ---------------------------------------------------------------- 401 → refresh → retry once


async def test_401_refreshes_once_and_retries_with_the_new_token(worker: FakeWorker, tmp_path: Path) -> None:
    worker.valid = set()  # the initial token has expired; the refresh route still accepts it
    async with Plugin(identity_env(worker.url), tmp_path / "err.log") as p:
        is_error, text = await p.call("gt_prime")
        assert not is_error, text
        trace = _trace(worker)
        new = trace[2][2]
        assert trace == [
            ("GET", PRIME, f"Bearer {TOKEN}"),
            ("POST", REFRESH, f"Bearer {TOKEN}"),
            ("GET", PRIME, new),
        ]
        assert new != f"Bearer {TOKEN}" and new.removeprefix("Bearer ") in worker.valid
        worker.requests.clear()
        is_error, _ = await p.call("gt_mail_check")
        assert not is_error
        assert _trace(worker) == [("GET", f"{T}/agents/polecat-1/mail", new)], "the new token is kept"
        stderr = p.stderr()
    assert '"token.refreshed"' in stderr
    assert TOKEN not in stderr and new.removeprefix("Bearer ") not in stderr


async def test_a_renewed_token_file_is_used_after_a_401_without_the_refresh_route(worker: FakeWorker,
                                                                                  tmp_path: Path) -> None:
    """In a container the agent's token is a file the runtime renews (and re-issues after a
    rotation): a 401 takes the file's new token instead of refreshing the revoked one."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    env = {k: v for k, v in identity_env(worker.url).items() if k != "GASTOWN_CONTAINER_TOKEN"}
    env["GASTOWN_AGENT_TOKEN_FILE"] = str(token_file)
    async with Plugin(env, tmp_path / "err.log") as p:
        assert not (await p.call("gt_prime"))[0]
        renewed = "agent-token-renewed-by-the-runtime-0123456789"
        token_file.write_text(renewed)
        worker.valid = {renewed}
        worker.requests.clear()
        is_error, text = await p.call("gt_prime")
        assert not is_error, text
        assert _trace(worker) == [("GET", PRIME, f"Bearer {TOKEN}"), ("GET", PRIME, f"Bearer {renewed}")]
        stderr = p.stderr()
    assert renewed not in stderr and TOKEN not in stderr


async def test_a_second_401_is_an_error_not_a_loop(worker: FakeWorker, tmp_path: Path) -> None:
    worker.valid = set()
    worker.refresh_grants_valid = False  # refresh "works" but the worker still rejects the new token
    async with Plugin(identity_env(worker.url), tmp_path / "err.log") as p:
        is_error, text = await p.call("gt_done", {"branch": "b"})
        assert is_error
        assert text == "error: UNAUTHORIZED: container token rejected: expired"
        assert [(m, path) for m, path, _ in _trace(worker)] == [
            ("POST", f"{T}/agents/polecat-1/done"), ("POST", REFRESH), ("POST", f"{T}/agents/polecat-1/done"),
        ]
        worker.requests.clear()
        is_error, _ = await p.call("gt_prime")
        assert is_error and len(worker.requests) == 3, "each call is bounded: call, refresh, one retry"


async def test_a_rejected_refresh_is_an_error_without_retry(worker: FakeWorker, tmp_path: Path) -> None:
    worker.valid = set()
    worker.issued = set()  # e.g. a token older than the refresh window
    async with Plugin(identity_env(worker.url), tmp_path / "err.log") as p:
        is_error, text = await p.call("gt_prime")
        stderr = p.stderr()
    assert is_error
    assert text == "error: UNAUTHORIZED: container token rejected and refresh failed (UNAUTHORIZED)"
    assert [(m, path) for m, path, _ in _trace(worker)] == [("GET", PRIME), ("POST", REFRESH)]
    assert '"token.refresh_failed"' in stderr


async def test_concurrent_401s_share_one_refresh(worker: FakeWorker, tmp_path: Path) -> None:
    worker.valid = set()
    worker.reject_delay = 0.5
    async with Plugin(identity_env(worker.url), tmp_path / "err.log") as p:
        results = await asyncio.gather(p.call("gt_prime"), p.call("gt_mail_check"), p.call("gt_bead_status", {"bead_id": "b"}))
    assert all(not is_error for is_error, _ in results), results
    assert sum(1 for r in worker.requests if r.path == REFRESH) == 1
    assert sum(1 for r in worker.requests if r.auth == f"Bearer {TOKEN}" and r.path != REFRESH) == 3, "they overlapped"


# ---------------------------------------------------------------- worker errors


@pytest.mark.parametrize("reply,expected", [
    (Reply(404, {"error": {"code": "BEAD_NOT_FOUND", "message": "bead bd-x not found"}}),
     "error: BEAD_NOT_FOUND: bead bd-x not found"),
    (Reply(403, {"error": {"code": "FORBIDDEN", "message": "only a refinery may request changes"}}),
     "error: FORBIDDEN: only a refinery may request changes"),
    (Reply(500, raw=b"Internal Server Error"), "error: HTTP_500: Internal Server Error"),
    (Reply(502, raw=b""), "error: HTTP_502: no body"),
    (Reply(200, raw=b"<html>not json</html>"), "error: INVALID_RESPONSE: the worker answered HTTP 200 with invalid JSON"),
    (Reply(200, delay=4), "error: TIMEOUT: the worker did not answer within 1.5 s"),
])
async def test_worker_failure_is_one_short_line_and_the_server_keeps_running(
    shared: Plugin, worker: FakeWorker, reply: Reply, expected: str
) -> None:
    worker.script("GET", PRIME, reply)
    is_error, text = await shared.call("gt_prime")
    assert is_error
    assert text == expected
    is_error, text = await shared.call("gt_prime")
    assert not is_error and "hooked bead: none" in text


async def test_long_error_bodies_are_clipped(shared: Plugin, worker: FakeWorker) -> None:
    worker.script("GET", PRIME, Reply(503, raw=b"<html>" + b"x" * 5000 + b"</html>"))
    is_error, text = await shared.call("gt_prime")
    assert is_error and text.startswith("error: HTTP_503: <html>xxx")
    assert len(text) < 400


async def test_empty_success_body_is_fine(shared: Plugin, worker: FakeWorker) -> None:
    worker.script("POST", f"{T}/agents/polecat-1/done", Reply(204, raw=b""))
    is_error, text = await shared.call("gt_done", {"branch": "b"})
    assert not is_error and text.startswith("done recorded for branch b"), text


async def test_unreachable_worker_is_a_network_error(tmp_path: Path) -> None:
    port = free_port()  # bound and closed again: nothing listens there
    async with Plugin(identity_env(f"http://127.0.0.1:{port}"), tmp_path / "err.log") as p:
        is_error, text = await p.call("gt_prime")
        assert is_error and text.startswith("error: NETWORK: cannot reach the worker"), text
        assert len(await p.tools()) == 10, "still serving"
