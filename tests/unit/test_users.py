"""Users and their towns (issue 12, item 1): a user token is neither the admin's nor a
container's, a user sees and reaches only its own towns, and the token is stored as a hash."""
from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.test_worker_api_support import ADMIN_TOKEN, CONTROL_TOKEN, Worker, clock, worker  # noqa: F401


async def new_user(worker: Worker, name: str = "ada") -> tuple[str, str]:
    status, body = await worker.call("POST", "/api/users", token=ADMIN_TOKEN, json={"name": name})
    assert status == 201 and body["token"].startswith("gtu_"), body
    return body["user_id"], body["token"]


async def user_town(worker: Worker, token: str) -> str:
    status, body = await worker.call("POST", "/api/towns", token=token, json={
        "name": "mine", "container_url": "http://127.0.0.1:8080", "control_token": CONTROL_TOKEN})
    assert status == 201, body
    return str(body["town_id"])


async def test_a_user_creates_and_lists_its_own_towns_and_gets_403_on_another_users(worker: Worker) -> None:
    ada, ada_token = await new_user(worker, "ada")
    _, bob_token = await new_user(worker, "bob")
    town = await user_town(worker, ada_token)
    admin_town, _ = await worker.create_town()
    status, listed = await worker.call("GET", "/api/towns", token=ada_token)
    assert status == 200 and [t["town_id"] for t in listed["towns"]] == [town]
    assert listed["towns"][0]["owner_user_id"] == ada
    assert (await worker.call("GET", "/api/towns", token=bob_token))[1]["towns"] == []
    admin_view = (await worker.call("GET", "/api/towns", token=ADMIN_TOKEN))[1]["towns"]
    assert {t["town_id"] for t in admin_view} == {town, admin_town}
    for method, path, body in (("GET", f"/api/towns/{town}", None), ("GET", f"/api/towns/{town}/beads", None),
                               ("POST", f"/api/towns/{town}/beads", {"type": "issue", "title": "x"})):
        status, err = await worker.call(method, path, token=bob_token, json=body)
        assert status == 403 and err["error"]["code"] == "FORBIDDEN", (path, err)
    assert (await worker.call("GET", f"/api/towns/{admin_town}", token=ada_token))[0] == 403
    assert (await worker.call("GET", f"/api/towns/{town}", token=ada_token))[0] == 200
    assert (await worker.call("POST", f"/api/towns/{town}/beads", token=ada_token,
                              json={"type": "message", "title": "x"}))[0] == 201
    assert (await worker.call("GET", f"/api/towns/{town}", token=ADMIN_TOKEN))[0] == 200  # the admin still works


async def test_a_user_token_is_refused_on_admin_and_container_routes(worker: Worker) -> None:
    _, token = await new_user(worker)
    town = await user_town(worker, token)
    assert (await worker.call("POST", "/api/users", token=token, json={}))[0] == 403
    assert (await worker.call("POST", f"/api/towns/{town}/agents", token=token,
                              json={"role": "polecat", "name": "p"}))[0] == 403
    status, err = await worker.call("POST", f"/api/towns/{town}/container-registry", token=token, json={"entries": []})
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    assert (await worker.call("GET", "/api/towns", token="gtu_not-a-real-token"))[0] == 401


async def test_a_container_token_cannot_act_as_a_user(worker: Worker) -> None:
    _, container_token = await worker.create_town()
    assert (await worker.call("GET", "/api/towns", token=container_token))[0] == 403
    assert (await worker.call("POST", "/api/towns", token=container_token, json={
        "name": "x", "container_url": "http://127.0.0.1:1", "control_token": CONTROL_TOKEN}))[0] == 403


async def test_the_user_token_is_stored_as_a_hash_and_never_logged(worker: Worker,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, token = await new_user(worker)
    await user_town(worker, token)
    rows: list[Any] = await worker.db.run(lambda conn: conn.execute("SELECT * FROM users").fetchall(), write=False)
    assert token not in repr([tuple(r) for r in rows])
    for r in caplog.records:
        assert token not in r.getMessage() and token not in repr(getattr(r, "fields", ""))
