"""Auth matrix and hostile input: every refusal is a JSON 4xx with error.code, never a 500."""
from __future__ import annotations

import time
import warnings

import jwt
import pytest

from tests.test_worker_api_support import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    JWT_SECRET,
    Worker,
    clock,
    town,
    worker,
)
from worker_api import nudges
from worker_api.tokens import ContainerTokens, TokenError

# (method, path template, body) for every route that takes a container token.
TOWN_ROUTES = [
    ("GET", "/api/towns/{t}", None),
    ("GET", "/api/towns/{t}/agents", None),
    ("GET", "/api/towns/{t}/container-registry", None),
    ("POST", "/api/towns/{t}/container-registry", []),
    ("GET", "/api/towns/{t}/prewarm-context", None),
    ("POST", "/api/towns/{t}/agents/pc-1/heartbeat", {"status": "running"}),
    ("POST", "/api/towns/{t}/agents/pc-1/completed", {"status": "completed"}),
    ("POST", "/api/towns/{t}/agents/pc-1/waiting", {"fired_at": 1_800_000_000_000}),
    ("POST", "/api/towns/{t}/agents/pc-1/done", {"branch": "b"}),
    ("POST", "/api/towns/{t}/agents/pc-1/eviction-context", {"branch": "b", "agent_name": "n", "saved_at": 1_800_000_000_000}),
    ("GET", "/api/towns/{t}/agents/pc-1/pending-nudges", None),
    ("POST", "/api/towns/{t}/agents/pc-1/nudge-delivered", {"nudge_id": "n-1"}),
    ("POST", "/api/towns/{t}/container-events", {"event": "x"}),
    ("POST", "/api/towns/{t}/container-eviction", None),
    ("POST", "/api/towns/{t}/container-ready", {"nonce": "n"}),
    # Agents nudge each other through the gt_nudge tool with the container token.
    ("POST", "/api/towns/{t}/agents/pc-1/nudges", {"message": "m"}),
]
ADMIN_ROUTES = [
    ("POST", "/api/towns", {"name": "n", "container_url": "http://c:8080", "control_token": "0123456789"}),
    ("POST", "/api/towns/{t}/agents", {"role": "polecat", "name": "n"}),
]
ALL_ROUTES = TOWN_ROUTES + ADMIN_ROUTES + [("POST", "/api/towns/{t}/refresh-container-token", None)]


def _ids(routes: list) -> list[str]:
    return [f"{m} {p}" for m, p, _ in routes]


async def _agent_town(worker: Worker) -> tuple[str, str]:
    town_id, token = await worker.create_town()
    await worker.create_agent(town_id, agent_id="pc-1")
    await worker.db.run(nudges.enqueue_nudge, town_id, "pc-1", message="m", now_ms=worker.clock.ms, nudge_id="n-1")
    return town_id, token


@pytest.mark.parametrize("method, path, body", TOWN_ROUTES + ADMIN_ROUTES, ids=_ids(TOWN_ROUTES + ADMIN_ROUTES))
async def test_missing_or_invalid_token_is_401(worker: Worker, method: str, path: str, body: object) -> None:
    town_id, _ = await _agent_town(worker)
    for token in (None, "not-a-jwt", "Bearer", ADMIN_TOKEN + "x"):
        status, data = await worker.call(method, path.format(t=town_id), token=token, json=body)
        assert status == 401, token
        assert data["error"]["code"] == "UNAUTHORIZED"
    resp = await worker.client.request(method, path.format(t=town_id), headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert resp.status == 401


@pytest.mark.parametrize("method, path, body", TOWN_ROUTES, ids=_ids(TOWN_ROUTES))
async def test_town_routes_matrix(worker: Worker, method: str, path: str, body: object) -> None:
    town_id, token = await _agent_town(worker)
    other_id, other_token = await _agent_town(worker)
    url = path.format(t=town_id)
    # the town's own container token
    status, _ = await worker.call(method, url, token=token, json=body)
    assert status < 300, (status, url)
    # another town's token → 403
    status, data = await worker.call(method, url, token=other_token, json=body)
    assert status == 403 and data["error"]["code"] == "FORBIDDEN"
    # the admin token works everywhere
    status, _ = await worker.call(method, url, token=ADMIN_TOKEN, json=body)
    assert status < 300
    # an expired token → 401
    worker.clock.advance(8 * 3600)
    status, data = await worker.call(method, url, token=token, json=body)
    assert status == 401 and data["error"]["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize("method, path, body", ADMIN_ROUTES, ids=_ids(ADMIN_ROUTES))
async def test_admin_routes_refuse_container_tokens(worker: Worker, method: str, path: str, body: object) -> None:
    town_id, token = await _agent_town(worker)
    status, data = await worker.call(method, path.format(t=town_id), token=token, json=body)
    assert status == 403 and data["error"]["code"] == "FORBIDDEN"
    status, _ = await worker.call(method, path.format(t=town_id), token=ADMIN_TOKEN, json=body)
    assert status == 201


async def test_container_token_with_wrong_scope_or_algorithm_is_401(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    now = int(worker.clock())
    claims = {"town_id": town_id, "iat": now, "exp": now + 3600}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about the HS512 key length
        bad = [
            jwt.encode({**claims, "scope": "user"}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({**claims, "scope": "container"}, JWT_SECRET, algorithm="HS512"),
            jwt.encode({"town_id": town_id, "scope": "container", "iat": now}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({**claims, "scope": "container"}, None, algorithm="none"),
            jwt.encode({**claims, "scope": "container", "town_id": "../x"}, JWT_SECRET, algorithm="HS256"),
        ]
    for token in bad:
        status, data = await worker.call("GET", f"/api/towns/{town_id}/agents", token=token)
        assert status == 401, token


async def test_unknown_town_is_404_for_admin_and_403_for_a_container(worker: Worker, town: tuple[str, str]) -> None:
    _, token = town
    status, data = await worker.call("GET", "/api/towns/town-000000000000/agents", token=ADMIN_TOKEN)
    assert status == 404 and data["error"]["code"] == "TOWN_NOT_FOUND"
    status, data = await worker.call("GET", "/api/towns/town-000000000000/agents", token=token)
    assert status == 403


@pytest.mark.parametrize("bad_id", ["..%2Fx", "..x", "-leading-dash", "a" * 65, "b" * 200, "sp%20ace", "x.y"])
async def test_bad_path_ids_are_400_invalid_id(worker: Worker, town: tuple[str, str], bad_id: str) -> None:
    town_id, token = town
    for method, path, body in ALL_ROUTES:
        if "{t}" not in path:
            continue
        for url in {path.format(t=bad_id), path.replace("pc-1", bad_id).format(t=town_id)}:
            if url == path.format(t=town_id):
                continue
            resp = await worker.client.request(method, url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json=body)
            data = await resp.json()
            assert resp.status == 400, (url, resp.status, data)
            assert data["error"]["code"] == "INVALID_ID"


async def test_dot_dot_segments_never_reach_a_town(worker: Worker, town: tuple[str, str]) -> None:
    """Clients normalise ``%2E%2E`` to ``..`` and collapse the path: the answer is still a JSON 4xx."""
    town_id, _ = town
    for url in ("/api/towns/%2E%2E/agents", f"/api/towns/{town_id}/agents/%2E%2E/done", "/api/towns/./agents"):
        status, data = await worker.call("POST", url, token=ADMIN_TOKEN, json={"branch": "b"})
        assert 400 <= status < 500 and data["error"]["code"], url


GARBAGE_BODIES = [b"{", b"null", b"[]", b"42", b'"str"', b"\xff\xfe", b'{"status": 5}', b'{"nonce": null}',
                  b'{"message_count": "5", "status": "running"}', b'{"fired_at": "abc"}', b'{"fired_at": -1}',
                  b'{"fired_at": true}', b'{"branch": ["x"]}', b'{"nudge_id": "../x"}', b'{"role": "king", "name": "n"}',
                  b'{"name": "n", "container_url": "ftp://x", "control_token": "0123456789"}',
                  b'{"active_tools": "bash", "status": "running"}', b'[{"agent_id": 1}]', b'{"event": {}}',
                  b'{"ttl_s": 0, "message": "m"}', b'{"status": "running", "last_event_at": "yesterday"}']


@pytest.mark.parametrize("method, path, body", ALL_ROUTES, ids=_ids(ALL_ROUTES))
async def test_garbage_bodies_never_cause_a_500(worker: Worker, method: str, path: str, body: object) -> None:
    town_id, _ = await _agent_town(worker)
    url = path.format(t=town_id)
    for raw in GARBAGE_BODIES:
        resp = await worker.client.request(
            method, url, data=raw, headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        )
        assert resp.status < 500, (url, raw, resp.status, await resp.text())
        assert resp.content_type == "application/json"
        if resp.status >= 400:
            assert (await resp.json())["error"]["code"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/agents/pc-1/heartbeat", {"status": "running", "message_count": "5"}),
        ("/agents/pc-1/heartbeat", {"status": "running", "message_count": True}),
        ("/agents/pc-1/heartbeat", {"status": "running", "active_tools": [1, 2]}),
        ("/agents/pc-1/heartbeat", {"status": "sleeping"}),
        ("/agents/pc-1/waiting", {"fired_at": "1700000000000"}),
        ("/agents/pc-1/waiting", {}),
        ("/agents/pc-1/done", {"branch": 7}),
        ("/agents/pc-1/completed", {"status": "completed", "reason": 5}),
        ("/agents/pc-1/nudge-delivered", {"nudge_id": "a" * 200}),
    ],
)
async def test_wrong_types_are_400_invalid_request(worker: Worker, path: str, body: dict) -> None:
    town_id, token = await _agent_town(worker)
    status, data = await worker.call("POST", f"/api/towns/{town_id}{path}", token=token, json=body)
    assert status == 400 and data["error"]["code"] == "INVALID_REQUEST", data


async def test_invalid_json_is_400_invalid_json(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    status, data = await worker.call("POST", f"/api/towns/{town_id}/container-events", token=token, data=b"{nope")
    assert status == 400 and data["error"]["code"] == "INVALID_JSON"


async def test_unknown_route_and_wrong_method_are_json_errors(worker: Worker) -> None:
    status, data = await worker.call("GET", "/api/nope", token=ADMIN_TOKEN)
    assert status == 404 and data["error"]["code"] == "NOT_FOUND"
    status, data = await worker.call("DELETE", "/api/towns", token=ADMIN_TOKEN)
    assert status == 405 and data["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_create_town_validates_its_body(worker: Worker) -> None:
    base = {"name": "n", "container_url": "http://c:8080", "control_token": "0123456789"}
    for patch in ({"name": ""}, {"container_url": "not a url"}, {"container_url": "http://u:p@c"},
                  {"control_token": "short"}, {"default_model": 5}, {"name": None}):
        status, data = await worker.call("POST", "/api/towns", token=ADMIN_TOKEN, json={**base, **patch})
        assert status == 400 and data["error"]["code"] == "INVALID_REQUEST", patch


async def test_unknown_fields_are_ignored(worker: Worker, town: tuple[str, str]) -> None:
    town_id, token = town
    await worker.create_agent(town_id, agent_id="pc-1")
    body = {"status": "running", "agentId": "pc-1", "timestamp": "2026-01-01T00:00:00Z", "whatever": [1]}
    assert (await worker.call("POST", f"/api/towns/{town_id}/agents/pc-1/heartbeat", token=token, json=body))[0] == 200


# ---------------------------------------------------------------- tokens unit


def test_token_mint_verify_and_expiry_with_an_injected_clock() -> None:
    t = [1_000_000.0]
    tokens = ContainerTokens(JWT_SECRET, now=lambda: t[0])
    token = tokens.mint("town-abc")
    claims = tokens.verify(token)
    assert (claims.town_id, claims.exp - claims.iat) == ("town-abc", 8 * 3600)
    t[0] += 8 * 3600 - 1
    tokens.verify(token)
    t[0] += 1
    with pytest.raises(TokenError) as e:
        tokens.verify(token)
    assert e.value.reason == "expired"
    assert tokens.verify_allow_expired(token).town_id == "town-abc"
    t[0] = 1_000_000.0 + 7 * 24 * 3600 + 1
    with pytest.raises(TokenError) as e:
        tokens.verify_allow_expired(token)
    assert e.value.reason == "too_old"


def test_token_issued_in_the_future_is_refused() -> None:
    future = ContainerTokens(JWT_SECRET, now=lambda: time.time() + 3600).mint("town-abc")
    with pytest.raises(TokenError) as e:
        ContainerTokens(JWT_SECRET).verify(future)
    assert e.value.reason == "issued_in_future"
    with pytest.raises(TokenError):
        ContainerTokens(JWT_SECRET).verify_allow_expired(future)


def test_mint_refuses_invalid_town_ids() -> None:
    with pytest.raises(ValueError):
        ContainerTokens(JWT_SECRET).mint("../x")
