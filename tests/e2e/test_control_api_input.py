"""Bad input never reaches a 500, never spawns anything, and secrets never leak (issue 2)."""
from __future__ import annotations

import logging

import pytest

from gastown.core import jsonlog
from tests.conftest import CONTROL_TOKEN, kilo_processes, start_body


@pytest.mark.parametrize(
    "body, field",
    [
        ({k: v for k, v in start_body().items() if k != "agent_id"}, "agent_id"),
        (start_body(agent_id="../x"), "agent_id"),
        (start_body(agent_id="a" * 200), "agent_id"),
        (start_body(agent_id=""), "agent_id"),
        (start_body(town_id="town/../../etc"), "town_id"),
        (start_body(rig_id="rig 1"), "rig_id"),
        (start_body(role="admiral"), "role"),
        (start_body(prompt=123), "prompt"),
        (start_body(model=""), "model"),
        (start_body(model="has space"), "model"),
        (start_body(env_vars={"BAD KEY": "x"}), "env_vars"),
        (start_body(env_vars={"OK": 5}), "env_vars"),
        (start_body(git_url="--upload-pack=evil"), "git_url"),
        (start_body(branch="../../x"), "branch"),
        (start_body(lightweight="maybe"), "lightweight"),
    ],
)
async def test_invalid_start_request_is_400_and_spawns_nothing(container, body, field):
    status, resp = await container.request("POST", "/agents/start", json=body)
    assert status == 400, resp
    assert resp["error"]["code"] == "INVALID_REQUEST"
    assert field in resp["error"]["message"]
    assert kilo_processes() == []
    assert container.runtime.supervisor.agents == {}


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'"str"', b"{", b"\xff\xfe"])
async def test_malformed_body_is_400(container, raw):
    status, resp = await container.request("POST", "/agents/start", data=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and resp["error"]["code"] in ("INVALID_JSON", "INVALID_REQUEST")


async def test_oversized_body_is_413(container):
    status, resp = await container.request("POST", "/agents/start", data=b"{" + b" " * (3 * 1024 * 1024) + b"}")
    assert status == 413, resp


@pytest.mark.parametrize("token", [None, "", "wrong-token", CONTROL_TOKEN + "x"])
@pytest.mark.parametrize("method, path", [("GET", "/health"), ("GET", "/agents"), ("POST", "/agents/start"),
                                          ("GET", "/agents/a/status"), ("POST", "/agents/a/stop")])
async def test_wrong_token_is_401(container, token, method, path):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    status, resp = await container.request(method, path, token=None, headers=headers, json=start_body())
    assert status == 401 and resp["error"]["code"] == "UNAUTHORIZED"
    assert kilo_processes() == []


async def test_alive_and_ready_need_no_token(container):
    assert await container.request("GET", "/alive", token=None) == (200, {"status": "ok"})
    await container.runtime.wait_hydrated(5)
    assert await container.request("GET", "/ready", token=None) == (200, {"status": "ready"})


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/agents/..%2Fx/status", None), ("GET", "/agents/" + "a" * 200 + "/status", None),
    ("POST", "/agents/a.b/stop", None), ("POST", "/agents/a%20b/message", {"prompt": "x"}),
    ("GET", "/agents/-x/events", None), ("PATCH", "/agents/a.b/model", {"model": "fake/m1"}),
])
async def test_bad_path_ids_are_400_invalid_id_not_a_404(container, method, path, body):
    """An id that can never exist is a bad request, told apart from an unknown agent (404): with
    ``path_id`` a no-op these routes answered AGENT_NOT_FOUND and the old check still passed."""
    status, resp = await container.request(method, path, json=body)
    assert status == 400 and resp["error"]["code"] == "INVALID_ID", (path, resp)


async def test_unknown_agent_is_404(container):
    for method, path, body in [("GET", "/agents/nobody/status", None), ("POST", "/agents/nobody/stop", None),
                               ("POST", "/agents/nobody/message", {"prompt": "x"}), ("GET", "/agents/nobody/events", None)]:
        status, resp = await container.request(method, path, json=body)
        assert status == 404 and resp["error"]["code"] == "AGENT_NOT_FOUND", (path, resp)


async def test_unknown_route_and_method_are_json_4xx(container):
    status, resp = await container.request("GET", "/nope")
    assert status == 404 and resp["error"]["code"] == "NOT_FOUND"
    status, resp = await container.request("DELETE", "/agents/start")
    assert status == 405 and resp["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_events_after_must_be_integer_even_for_an_unknown_agent(container):
    """The bad cursor is a 400 whatever the agent: the old check accepted the 404 of the unknown
    agent and stayed green with the validation removed."""
    for after in ("-1", "abc", "1e9", "%C2%B2", "9" * 19):
        status, resp = await container.request("GET", f"/agents/x/events?after={after}")
        assert status == 400 and resp["error"]["code"] == "INVALID_REQUEST", (after, resp)
    status, resp = await container.request("GET", "/agents/x/events?after=5")
    assert status == 404 and resp["error"]["code"] == "AGENT_NOT_FOUND"


async def test_town_mismatch_is_409(container, runtime_config):
    container.runtime.cfg.town_id = "town-a"
    status, resp = await container.request("POST", "/agents/start", json=start_body(town_id="town-b"))
    assert status == 409 and resp["error"]["code"] == "TOWN_MISMATCH"


@pytest.mark.kilo
async def test_no_secret_in_responses_or_logs(container, fake_llm, capfd):
    jsonlog.configure()
    secret_token = "sekret-container-token-XYZ123456"
    kilo_key = "sekret-kilocode-token-ABC987654"
    body = start_body(env_vars={"GASTOWN_CONTAINER_TOKEN": secret_token, "KILOCODE_TOKEN": kilo_key, "CUSTOM": "visible"})
    status, resp = await container.request("POST", "/agents/start", json=body)
    assert status == 201, resp
    responses = [resp]
    for path in ("/agents", "/agents/polecat-1/status", "/health", "/agents/polecat-1/events?after=0"):
        responses.append((await container.request("GET", path))[1])
    rec = container.runtime.supervisor.get("polecat-1")
    password = rec.child_env["KILO_SERVER_PASSWORD"]
    # A request's env_vars cannot hand the agent (or the runtime) a token: both are the runtime's own.
    assert rec.child_env.get("GASTOWN_CONTAINER_TOKEN") == container.runtime.worker.token
    assert secret_token not in repr(rec.child_env) and kilo_key not in repr(rec.child_env)
    logging.getLogger("test").info("probe %s %s", secret_token, password)
    registry = container.runtime.registry.entries()
    assert registry[0]["request"]["env_vars"] == {"CUSTOM": "visible"}
    responses.append(registry)
    assert await container.request("POST", "/agents/polecat-1/stop") == (200, {"stopped": True})
    out, err = capfd.readouterr()
    blob = repr(responses) + out + err
    for secret in (secret_token, kilo_key, password, CONTROL_TOKEN):
        assert secret not in blob
    assert '"event": "agent.started"' in err
    assert all('"town_id"' in line for line in err.splitlines() if line.startswith("{"))


async def test_lone_surrogate_in_json_is_400_not_500(container):
    raw = b'{"agent_id": "a", "prompt": "\\udbea\\udd43x\\ud808"}'
    status, resp = await container.request("POST", "/agents/start", data=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and resp["error"]["code"] == "INVALID_JSON"
