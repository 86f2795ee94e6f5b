"""Worker API happy paths and route behaviour, through real HTTP (pytest-aiohttp)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tests.test_worker_api_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    CONTROL_TOKEN,
    JWT_SECRET,
    Worker,
    clock,
    town,
    worker,
)
from worker_api import events, store
from worker_api.tokens import ContainerTokens


async def test_alive_needs_no_auth(worker: Worker) -> None:
    assert await worker.call("GET", "/alive") == (200, {"status": "ok"})


# ---------------------------------------------------------------- towns and agents


async def test_create_town_returns_id_and_a_container_token_for_that_town(worker: Worker) -> None:
    town_id, token = await worker.create_town()
    assert town_id.startswith("town-") and len(town_id) == 17
    claims = ContainerTokens(JWT_SECRET, now=worker.clock).verify(token)
    assert claims.town_id == town_id
    assert claims.exp - claims.iat == 8 * 3600


async def test_get_town_with_admin_or_container_token(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    for t in (ADMIN_TOKEN, token):
        status, data = await worker.call("GET", f"/api/towns/{town_id}", token=t)
        assert status == 200
        assert data["town_id"] == town_id
        assert data["name"] == "Town"
        assert data["default_model"] == "kilo/anthropic/claude-sonnet-4"
        assert data["draining"] is False


async def test_control_token_is_never_returned_by_any_route(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, "mayor")
    for path in ("", "/agents", "/prewarm-context", "/container-registry"):
        resp = await worker.client.get(f"/api/towns/{town_id}{path}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
        text = await resp.text()
        assert CONTROL_TOKEN not in text
        assert "control_token" not in text


async def test_create_agent_generates_id_and_lists_it(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    agent = await worker.create_agent(town_id, "polecat", name="Toast", rig_id="rig-1")
    assert agent["agent_id"].startswith("polecat-")
    assert agent["status"] == "idle" and agent["role"] == "polecat" and agent["rig_id"] == "rig-1"
    assert agent["active_tools"] == [] and agent["message_count"] == 0
    named = await worker.create_agent(town_id, "refinery", agent_id="ref-1")
    assert named["agent_id"] == "ref-1"
    status, data = await worker.call("GET", f"/api/towns/{town_id}/agents", token=token)
    assert status == 200
    assert [a["agent_id"] for a in data["agents"]] == [agent["agent_id"], "ref-1"]


async def test_second_mayor_in_a_town_is_a_conflict(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    await worker.create_agent(town_id, "mayor")
    status, data = await worker.call(
        "POST", f"/api/towns/{town_id}/agents", token=ADMIN_TOKEN, json={"role": "mayor", "name": "m2"}
    )
    assert status == 409 and data["error"]["code"] == "MAYOR_EXISTS"
    # another town may have its own mayor
    other, _ = await worker.create_town(name="Other")
    await worker.create_agent(other, "mayor")


async def test_duplicate_agent_id_is_a_conflict(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    await worker.create_agent(town_id, agent_id="pc-1")
    status, data = await worker.call(
        "POST", f"/api/towns/{town_id}/agents", token=ADMIN_TOKEN, json={"agent_id": "pc-1", "role": "polecat", "name": "x"}
    )
    assert status == 409 and data["error"]["code"] == "AGENT_EXISTS"


async def test_agents_of_one_town_are_invisible_to_another(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    other, other_token = await worker.create_town(name="Other")
    await worker.create_agent(town_id, agent_id="pc-1")
    status, data = await worker.call("GET", f"/api/towns/{other}/agents", token=other_token)
    assert (status, data) == (200, {"agents": []})
    status, data = await worker.call(
        "POST", f"/api/towns/{other}/agents/pc-1/done", token=other_token, json={"branch": "b"}
    )
    assert status == 404 and data["error"]["code"] == "AGENT_NOT_FOUND"


# ---------------------------------------------------------------- registry


def _entry(agent_id: str = "pc-1", town_id: str = "t", **request_extra: object) -> dict:
    request = {"agent_id": agent_id, "town_id": town_id, "rig_id": "rig-1", "role": "polecat", "name": "Toast",
               "prompt": "do it", "model": "kilo/x", "git_url": "https://github.com/acme/repo.git",
               "env_vars": {"LOG_LEVEL": "info", "FEATURE_FLAGS": "a,b"}}
    request.update(request_extra)
    return {"agent_id": agent_id, "request": request, "workdir": f"/workspace/rigs/rig-1/{agent_id}"}


async def test_registry_round_trip(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    path = f"/api/towns/{town_id}/container-registry"
    assert await worker.call("GET", path, token=token) == (200, [])
    entries = [_entry("pc-1", town_id), _entry("pc-2", town_id)]
    assert await worker.call("POST", path, token=token, json=entries) == (200, {"stored": 2, "dropped": []})
    assert await worker.call("GET", path, token=token) == (200, entries)
    assert await worker.call("POST", path, token=token, json=[]) == (200, {"stored": 0, "dropped": []})
    assert await worker.call("GET", path, token=token) == (200, [])


@pytest.mark.parametrize(
    "request_extra, where, kept",
    [
        ({"env_vars": {"GIT_TOKEN": "abc", "LOG_LEVEL": "debug"}}, "request.env_vars.GIT_TOKEN", {"env_vars": {"LOG_LEVEL": "debug"}}),
        ({"env_vars": {"KILOCODE_TOKEN": "abc"}}, "request.env_vars.KILOCODE_TOKEN", {"env_vars": {}}),
        ({"env_vars": {"KILO_SERVER_PASSWORD": "abc"}}, "request.env_vars.KILO_SERVER_PASSWORD", {"env_vars": {}}),
        ({"env_vars": {"AWS_SECRET_ACCESS_KEY": "abc"}}, "request.env_vars.AWS_SECRET_ACCESS_KEY", {"env_vars": {}}),
        ({"env_vars": {"GITHUB_CLI_PAT": "abc"}}, "request.env_vars.GITHUB_CLI_PAT", {"env_vars": {}}),
        ({"env_vars": {"GH_PAT": "abc"}}, "request.env_vars.GH_PAT", {"env_vars": {}}),
        ({"env_vars": {"SESSION_COOKIE": "abc"}}, "request.env_vars.SESSION_COOKIE", {"env_vars": {}}),
        ({"env_vars": {"KILO_AUTH_CONTENT": "{}"}}, "request.env_vars.KILO_AUTH_CONTENT", {"env_vars": {}}),
        ({"container_token": "abc"}, "request.container_token", {}),
        ({"extra": {"github": {"api_key": "abc", "user": "u"}}}, "request.extra.github.api_key",
         {"extra": {"github": {"user": "u"}}}),
        ({"git_url": "https://x-access-token:ghs_abcdefghijklmnopqrstuvwxyz@github.com/a/b.git"}, "request.git_url",
         {"git_url": "https://github.com/a/b.git"}),
        ({"prompt": "use ghp_abcdefghijklmnopqrstuvwxyz0123 please"}, "request.prompt", {"prompt": "use [redacted] please"}),
    ],
)
async def test_registry_keeps_an_entry_and_drops_only_its_secret(
    worker: Worker, town: tuple[str, str], request_extra: dict, where: str, kept: dict
) -> None:
    """One secret-looking field used to reject the whole registry, so after a restart boot
    hydration resumed a stale set of agents: now only that field goes."""
    town_id, token = town
    path = f"/api/towns/{town_id}/container-registry"
    status, data = await worker.call("POST", path, token=token, json=[_entry("ok-2", town_id), _entry("bad", town_id, **request_extra)])
    assert status == 200 and data == {"stored": 2, "dropped": [f"[1].{where}"]}, data
    status, stored = await worker.call("GET", path, token=token)
    assert status == 200 and stored[0] == _entry("ok-2", town_id)
    assert stored[1]["agent_id"] == "bad"
    for key, value in kept.items():
        assert stored[1]["request"][key] == value, stored[1]
    assert "abc" not in json.dumps(stored[1]["request"].get("env_vars", {})) and "abcdefghij" not in json.dumps(stored)


async def test_registry_drops_runtime_owned_env_keys_without_calling_them_secrets(worker: Worker, town: tuple[str, str]) -> None:
    """A registry entry once switched the next container's worker URL (GASTOWN_API_URL): runtime-owned
    keys never survive into what boot hydration resumes, and the rest of the entry does."""
    town_id, token = town
    env = {"GASTOWN_API_URL": "http://attacker", "LD_PRELOAD": "/x.so", "HOME": "/h", "LOG_LEVEL": "debug"}
    status, data = await worker.call("POST", f"/api/towns/{town_id}/container-registry", token=token,
                                     json=[_entry("pc-1", town_id, env_vars=env)])
    assert status == 200 and sorted(data["dropped"]) == sorted(
        f"[0].request.env_vars.{k}" for k in ("GASTOWN_API_URL", "LD_PRELOAD", "HOME")), data
    _, stored = await worker.call("GET", f"/api/towns/{town_id}/container-registry", token=token)
    assert stored[0]["request"]["env_vars"] == {"LOG_LEVEL": "debug"}


async def test_registry_entry_of_another_town_or_not_a_start_request_is_refused(worker: Worker,
                                                                                town: tuple[str, str]) -> None:
    town_id, token = town
    path = f"/api/towns/{town_id}/container-registry"
    for body in ([_entry("pc-1", "town-other")], [{**_entry("pc-1", town_id), "agent_id": "pc-2"}],
                 [_entry("pc-1", town_id, role="king")], [_entry("pc-1", town_id, git_url="--upload-pack=touch /tmp/x")]):
        status, data = await worker.call("POST", path, token=token, json=body)
        assert status == 400 and data["error"]["code"] == "INVALID_REQUEST", (body, data)


@pytest.mark.parametrize(
    "body, code",
    [
        ({"agent_id": "x"}, "INVALID_REQUEST"),  # object, not array
        ([1], "INVALID_REQUEST"),
        ([{"agent_id": "../x", "request": {}, "workdir": "/w"}], "INVALID_REQUEST"),
        ([{"agent_id": "a", "request": "nope", "workdir": "/w"}], "INVALID_REQUEST"),
        ([{"agent_id": "a", "request": {}, "workdir": ""}], "INVALID_REQUEST"),
        ([{"agent_id": "a", "request": {"env_vars": {"A": 1}}, "workdir": "/w"}], "INVALID_REQUEST"),
    ],
)
async def test_registry_rejects_malformed_bodies(worker: Worker, town: tuple[str, str], body: object, code: str) -> None:
    town_id, token = town
    status, data = await worker.call("POST", f"/api/towns/{town_id}/container-registry", token=token, json=body)
    assert status == 400 and data["error"]["code"] == code


# ---------------------------------------------------------------- prewarm


async def test_prewarm_context_is_null_without_a_mayor(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    status, data = await worker.call("GET", f"/api/towns/{town_id}/prewarm-context", token=token)
    assert status == 200
    assert data == {"agent_id": None, "model": "kilo/anthropic/claude-sonnet-4",
                    "small_model": "kilo/openai/gpt-5-nano", "organization_id": "org-1"}


async def test_prewarm_context_names_the_mayor_and_the_town_models(worker: Worker) -> None:
    town_id, token = await worker.create_town(default_model="p/big", small_model=None, organization_id=None)
    await worker.create_agent(town_id, "polecat")
    mayor = await worker.create_agent(town_id, "mayor")
    status, data = await worker.call("GET", f"/api/towns/{town_id}/prewarm-context", token=token)
    assert status == 200
    assert {k: data[k] for k in ("agent_id", "model", "small_model", "organization_id")} == {
        "agent_id": mayor["agent_id"], "model": "p/big", "small_model": None, "organization_id": None}


async def test_prewarm_context_is_the_mayors_whole_start_but_the_prompt(worker: Worker) -> None:
    """The container's prewarm hard-coded the mayor's name and knew nothing of its system prompt,
    identity or the town's env vars, so its env never matched the real start's."""
    from worker_api.front.desk import start_request

    town_id, token = await worker.create_town(default_model="p/big", small_model=None, organization_id=None)
    mayor = await worker.create_agent(town_id, "mayor")
    status, _ = await worker.call("PATCH", f"/api/towns/{town_id}/settings", token=ADMIN_TOKEN,
                                  json={"env_vars": {"FOO": "bar"}, "git_author_name": "Ada"})
    assert status == 200
    status, data = await worker.call("GET", f"/api/towns/{town_id}/prewarm-context", token=token)
    town = await worker.db.run(lambda c: {**dict(c.execute("SELECT * FROM towns WHERE town_id = ?",
                                                             (town_id,)).fetchone())})
    start = start_request(town, mayor["agent_id"])
    assert {k: v for k, v in data.items() if v is not None} == {
        k: v for k, v in start.items() if k not in ("prompt", "town_id", "rig_id", "role")}
    assert data["env_vars"] == {"FOO": "bar"} and data["identity"] and data["system_prompt"]


# ---------------------------------------------------------------- heartbeat


def _hb(**kw: object) -> dict:
    body = {"status": "running", "last_event_type": "message.part.updated", "last_event_at": 1_799_999_999_000,
            "active_tools": ["bash"], "message_count": 3, "container_instance_id": "inst-1"}
    body.update(kw)
    return body


async def test_heartbeat_updates_the_agent_watermark(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/heartbeat", token=token, json=_hb())
    assert (status, data) == (200, {"heartbeat": True})
    agent = await worker.db.run(store.get_agent, town_id, "pc-1")
    assert agent["last_heartbeat_at"] == worker.clock.ms == agent["last_activity_at"]
    assert agent["last_event_type"] == "message.part.updated"
    assert agent["last_event_at"] == 1_799_999_999_000
    assert agent["active_tools"] == ["bash"] and agent["message_count"] == 3
    assert agent["container_status"] == "running" and agent["container_instance_id"] == "inst-1"
    assert agent["status"] == "idle"  # the worker-side status belongs to the reconciler
    # heartbeats are not events (they would flood the queue)
    assert await worker.db.run(events.list_events, town_id) == []


@pytest.mark.parametrize("state", ["backoff", "fatal"])
async def test_heartbeat_with_a_crash_policy_state_is_understood(worker: Worker, town: tuple[str, str], state: str) -> None:
    """BACKOFF and FATAL are container states now: a heartbeat carrying one is stored, not a 400,
    and the reconciler counts BACKOFF as alive (about to restart) and FATAL as dead."""
    from gastown.contract.agents import DEAD_STATUSES

    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    status, _ = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/heartbeat", token=token, json=_hb(status=state))
    assert status == 200
    assert (await worker.db.run(store.get_agent, town_id, "pc-1"))["container_status"] == state
    assert (state in DEAD_STATUSES) is (state == "fatal")


async def test_heartbeat_accepts_iso_timestamps(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    status, _ = await worker.call(
        "POST", f"/api/towns/{town_id}/agents/pc-1/heartbeat", token=token,
        json=_hb(last_event_at="2027-01-15T08:00:00Z"),
    )
    assert status == 200
    agent = await worker.db.run(store.get_agent, town_id, "pc-1")
    assert agent["last_event_at"] == int(datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp() * 1000)


async def test_heartbeat_for_unknown_agent_without_role_is_404(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/ghost/heartbeat", token=token, json=_hb())
    assert status == 404 and data["error"]["code"] == "AGENT_NOT_FOUND"


async def test_heartbeat_with_role_registers_an_unknown_agent(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    status, _ = await worker.call(
        "POST", f"/api/towns/{town_id}/agents/pc-9/heartbeat", token=token,
        json=_hb(role="polecat", name="Nine", rig_id="rig-1"),
    )
    assert status == 200
    agent = await worker.db.run(store.get_agent, town_id, "pc-9")
    assert (agent["role"], agent["name"], agent["rig_id"]) == ("polecat", "Nine", "rig-1")
    assert agent["last_heartbeat_at"] == worker.clock.ms


# ---------------------------------------------------------------- lifecycle callbacks


async def test_completed_inserts_an_agent_completed_event(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    status, data = await worker.call(
        "POST", f"/api/towns/{town_id}/agents/pc-1/completed", token=token, json={"status": "failed", "reason": "boom"}
    )
    assert (status, data) == (200, {"completed": True})
    [ev] = await worker.db.run(events.list_events, town_id)
    assert ev["event_type"] == "agent_completed" and ev["agent_id"] == "pc-1"
    assert ev["payload"] == {"status": "failed", "reason": "boom"}
    assert ev["created_at"] == worker.clock.ms and ev["processed_at"] is None
    status, data = await worker.call(
        "POST", f"/api/towns/{town_id}/agents/pc-1/completed", token=token, json={"status": "exploded"}
    )
    assert status == 400 and data["error"]["code"] == "INVALID_REQUEST"


async def test_done_inserts_an_agent_done_event(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    body = {"branch": "gt/toast/abcd1234", "pr_url": "https://github.com/a/b/pull/1", "summary": "did it"}
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/done", token=token, json=body)
    assert (status, data) == (200, {"done": True})
    [ev] = await worker.db.run(events.list_events, town_id)
    assert ev["event_type"] == "agent_done" and ev["payload"] == body
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/done", token=token, json={"branch": ""})
    assert status == 400


async def test_eviction_context_is_recorded_as_an_event(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    body = {"branch": "gt/toast/abcd1234", "agent_name": "Toast", "saved_at": 1_799_999_000_000}
    status, data = await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/eviction-context", token=token, json=body)
    assert (status, data) == (200, {"recorded": True})
    [ev] = await worker.db.run(events.list_events, town_id)
    assert ev["event_type"] == "agent_eviction_context" and ev["payload"] == body


async def test_waiting_flips_a_working_mayor_to_waiting(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    mayor = await worker.create_agent(town_id, "mayor")
    await worker.db.run(store.mark_agent_working, town_id, mayor["agent_id"], worker.clock.ms)
    worker.clock.advance(5)
    status, data = await worker.call(
        "POST", f"/api/towns/{town_id}/agents/{mayor['agent_id']}/waiting", token=token, json={"fired_at": worker.clock.ms}
    )
    assert (status, data) == (200, {"acknowledged": True})
    agent = await worker.db.run(store.get_agent, town_id, mayor["agent_id"])
    assert agent["status"] == "waiting"
    [ev] = await worker.db.run(events.list_events, town_id)
    assert ev["event_type"] == "agent_waiting" and ev["payload"] == {"fired_at": worker.clock.ms, "applied": True}


async def test_stale_waiting_callback_does_not_flip_working_mayor(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    mayor = await worker.create_agent(town_id, "mayor")
    fired_at_end_of_previous_turn = worker.clock.ms
    worker.clock.advance(2)
    await worker.db.run(store.mark_agent_working, town_id, mayor["agent_id"], worker.clock.ms)  # a new prompt
    worker.clock.advance(1)
    status, _ = await worker.call(
        "POST", f"/api/towns/{town_id}/agents/{mayor['agent_id']}/waiting", token=token,
        json={"fired_at": fired_at_end_of_previous_turn},
    )
    assert status == 200
    agent = await worker.db.run(store.get_agent, town_id, mayor["agent_id"])
    assert agent["status"] == "working"
    [ev] = await worker.db.run(events.list_events, town_id)
    assert ev["payload"]["applied"] is False


async def test_waiting_for_a_non_mayor_only_records_the_event(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    await worker.db.run(store.mark_agent_working, town_id, "pc-1", worker.clock.ms)
    status, _ = await worker.call(
        "POST", f"/api/towns/{town_id}/agents/pc-1/waiting", token=token, json={"fired_at": worker.clock.ms + 1}
    )
    assert status == 200
    assert (await worker.db.run(store.get_agent, town_id, "pc-1"))["status"] == "working"


async def test_callbacks_for_unknown_agents_are_404(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    base = f"/api/towns/{town_id}/agents/ghost"
    for method, path, body in [
        ("POST", "/completed", {"status": "completed"}),
        ("POST", "/waiting", {"fired_at": 1_800_000_000_000}),
        ("POST", "/done", {"branch": "b"}),
        ("POST", "/eviction-context", {"branch": "b", "agent_name": "n", "saved_at": 1_800_000_000_000}),
        ("GET", "/pending-nudges", None),
        ("POST", "/nudge-delivered", {"nudge_id": "nudge-1"}),
    ]:
        status, data = await worker.call(method, base + path, token=token, json=body)
        assert status == 404 and data["error"]["code"] == "AGENT_NOT_FOUND", path
    assert await worker.db.run(events.list_events, town_id) == []


async def test_heartbeat_with_blank_optional_fields_is_accepted(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    body = {"status": "starting", "last_event_type": "", "last_event_at": None, "container_instance_id": ""}
    assert (await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/heartbeat", token=token, json=body))[0] == 200
    agent = await worker.db.run(store.get_agent, town_id, "pc-1")
    assert agent["last_event_type"] is None and agent["container_instance_id"] is None
