"""Configuring a rig's GitHub token over HTTP: admin-only writes, never returned, never logged;
and ``create_app(scm_provider=...)`` wiring."""
from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.test_worker_api_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    JWT_SECRET,
    Worker,
    clock,
    town,
    worker,
)
from worker_api.app import create_app
from worker_api.appkeys import DB
from worker_api.reconciler.service import RECONCILER
from worker_api.scm import tokens
from worker_api.scm.github import GitHubProvider

TOKEN = "ghp_route_secret_token_abcdef0123456789"


async def _rig(worker: Worker, town_id: str) -> str:
    status, rig = await worker.call("POST", f"/api/towns/{town_id}/rigs", token=ADMIN_TOKEN,
                                    json={"rig_id": "rig-1", "name": "Repo", "git_url": "https://github.com/a/b.git"})
    assert status == 201, rig
    return str(rig["rig_id"])


async def test_admin_sets_the_token_and_no_route_returns_it(worker: Worker, town: tuple[str, str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    town_id, container_token = town
    rig_id = await _rig(worker, town_id)
    path = f"/api/towns/{town_id}/rigs/{rig_id}/scm"
    status, view = await worker.call("PUT", path, token=ADMIN_TOKEN,
                                     json={"github_token": TOKEN, "auto_merge_delay_minutes": 10,
                                           "merge_strategy": "pr"})
    assert status == 200 and view == {"rig_id": rig_id, "provider": "github", "token_configured": True,
                                      "auto_merge_delay_minutes": 10, "merge_strategy": "pr"}
    status, err = await worker.call("PUT", path, token=ADMIN_TOKEN, json={"merge_strategy": "yolo"})
    assert status == 400 and err["error"]["code"]
    assert await worker.db.run(tokens.get_rig_token, town_id, rig_id) == TOKEN
    for p in (path, f"/api/towns/{town_id}/rigs", f"/api/towns/{town_id}", f"/api/towns/{town_id}/status"):
        resp = await worker.client.get(p, headers={"Authorization": f"Bearer {container_token}"})
        assert resp.status == 200 and TOKEN not in await resp.text()
    for r in caplog.records:
        assert TOKEN not in r.getMessage() and TOKEN not in repr(getattr(r, "fields", ""))


async def test_container_token_cannot_set_the_github_token(worker: Worker, town: tuple[str, str]) -> None:
    town_id, container_token = town
    rig_id = await _rig(worker, town_id)
    status, body = await worker.call("PUT", f"/api/towns/{town_id}/rigs/{rig_id}/scm", token=container_token,
                                     json={"github_token": TOKEN})
    assert status == 403 and await worker.db.run(tokens.get_rig_token, town_id, rig_id) is None


async def test_null_token_removes_it_and_absent_fields_are_unchanged(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    rig_id = await _rig(worker, town_id)
    path = f"/api/towns/{town_id}/rigs/{rig_id}/scm"
    await worker.call("PUT", path, token=ADMIN_TOKEN, json={"github_token": TOKEN})
    status, view = await worker.call("PUT", path, token=ADMIN_TOKEN, json={"auto_merge_delay_minutes": 0})
    assert view["token_configured"] is True and view["auto_merge_delay_minutes"] == 0
    status, view = await worker.call("PUT", path, token=ADMIN_TOKEN, json={"github_token": None})
    assert status == 200 and view["token_configured"] is False and view["auto_merge_delay_minutes"] == 0


@pytest.mark.parametrize("body", [{"github_token": "has space in it"}, {"github_token": "short"},
                                  {"auto_merge_delay_minutes": -1}, {"auto_merge_delay_minutes": "5"}])
async def test_invalid_scm_config_is_a_400(worker: Worker, town: tuple[str, str], body: dict[str, Any]) -> None:
    town_id, _ = town
    rig_id = await _rig(worker, town_id)
    status, err = await worker.call("PUT", f"/api/towns/{town_id}/rigs/{rig_id}/scm", token=ADMIN_TOKEN, json=body)
    assert status == 400 and "has space" not in str(err)


async def test_unknown_rig_is_a_404(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    status, _ = await worker.call("PUT", f"/api/towns/{town_id}/rigs/rig-nope/scm", token=ADMIN_TOKEN,
                                  json={"github_token": TOKEN})
    assert status == 404


async def test_default_auto_merge_delay_is_reported(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    rig_id = await _rig(worker, town_id)
    status, view = await worker.call("GET", f"/api/towns/{town_id}/rigs/{rig_id}/scm", token=ADMIN_TOKEN)
    assert view == {"rig_id": rig_id, "provider": "github", "token_configured": False,
                    "auto_merge_delay_minutes": tokens.DEFAULT_AUTO_MERGE_DELAY_MS / 60_000,
                    "merge_strategy": "direct"}


async def test_create_app_passes_the_scm_provider_to_the_reconciler_and_closes_it(tmp_path: Any,
                                                                                  aiohttp_client: Any) -> None:
    scm = GitHubProvider("http://127.0.0.1:9")
    app = create_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, scm_provider=scm)
    assert app[RECONCILER].deps.scm is scm
    plain = create_app(tmp_path / "w2.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET)
    assert plain[RECONCILER].deps.scm is None
    plain[DB].close()
    scm._http()  # open a session, as a first poll would
    service = app[RECONCILER]
    service.running = True
    await service.stop()
    assert scm._session is not None and scm._session.closed
    app[DB].close()
