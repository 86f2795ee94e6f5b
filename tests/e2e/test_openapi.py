"""The OpenAPI documents match the implementation (issue 7, item 3).

* both are valid OpenAPI 3.1 and served without auth at ``/openapi.json``;
* every route the app registers is documented and every documented operation is registered;
* the documented security matches the auth middleware (probed without a token) and, for the
  worker, the policy each handler declares;
* every operation, driven with valid input, answers a documented status with a body matching its
  schema (the worker fully in-process; the control server's agent routes with a real kilo, marked
  ``kilo``). ``tests/test_schemathesis.py`` adds the fuzzing.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient

from control_server.app import PUBLIC_PATHS
from control_server.app import build_openapi as control_openapi
from control_server.app import create_app as create_control_app
from supervisor.config import RuntimeConfig
from supervisor.runtime import ContainerRuntime
from gastown.local.s3servers import new_bucket, s3_env
from tests.conftest import ADMIN_TOKEN, CONTROL_TOKEN, JWT_SECRET, start_body
from tests.s3servers import seaweedfs  # noqa: F401 - fixture
from worker_api import beads as bx
from worker_api.app import create_app as create_worker_app
from worker_api.appkeys import AUTH_POLICIES, DB
from worker_api.routes import build_openapi as worker_openapi
from worker_api.snapshot_access import SnapshotBroker

METHODS = {"get", "post", "put", "patch", "delete"}


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m in METHODS}


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route; the HEAD aiohttp adds beside each GET is implied."""
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return {(m, p) for m, p in routes if not (m == "HEAD" and ("GET", p) in routes)}


def is_public(doc: dict[str, Any], method: str, path: str) -> bool:
    op = doc["paths"][path][method.lower()]
    return op.get("security", doc.get("security")) == []


def concrete(path: str, value: str = "x1") -> str:
    return re.sub(r"\{[^}]+\}", value, path)


class Conformance:
    """Validates responses against one document and records which operations answered 2xx."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.ok: set[tuple[str, str]] = set()

    def check(self, method: str, path: str, status: int, body: Any, content_type: str = "application/json") -> None:
        op = self.doc["paths"][path][method.lower()]
        responses = op["responses"]
        assert str(status) in responses, f"{method} {path} answered undocumented {status}: {body}"
        content = responses[str(status)]["content"]
        media = content_type.split(";")[0].strip()
        assert media in content, f"{method} {path} {status}: content type {media} not documented"
        schema = {**content[media]["schema"], "components": self.doc["components"]}
        try:
            jsonschema.Draft202012Validator(schema).validate(body)
        except jsonschema.ValidationError as e:
            raise AssertionError(f"{method} {path} {status}: body does not match the schema: {e.message}\n{body}") from None
        if 200 <= status < 300:
            self.ok.add((method.upper(), path))


async def call(client: TestClient, conf: Conformance, method: str, template: str, expect: int, *,
               path: str | None = None, token: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.request(method, path or template, headers=headers, **kw) as resp:
        ctype = resp.headers.get("Content-Type", "")
        body = await resp.json() if ctype.startswith("application/json") else await resp.text()
        assert resp.status == expect, f"{method} {path or template}: {resp.status} {body}"
        conf.check(method, template, resp.status, body, ctype)
        return body


# ---------------------------------------------------------------- documents


@pytest.mark.parametrize("build", [control_openapi, worker_openapi], ids=["control", "worker"])
def test_document_is_valid_openapi(build) -> None:
    doc = build()
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # the OpenAPI 3.1 meta-schema
    results = list(schema.get_all_operations())
    assert results and all(r.ok() for r in results)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for item in doc["paths"].values():
        for op in item.values():
            for status in op["responses"]:
                if int(status) >= 500:
                    assert status in ("502", "503"), f"{op['operationId']} documents {status}"


def _control_runtime(tmp_path: Path) -> ContainerRuntime:
    return ContainerRuntime(RuntimeConfig(data_dir=tmp_path / "data", control_token=CONTROL_TOKEN,
                                          kilo_bin=str(tmp_path / "no-kilo")))


def test_control_routes_match_document(tmp_path: Path) -> None:
    app = create_control_app(_control_runtime(tmp_path))
    doc = control_openapi()
    assert registered(app) == documented(doc)


def test_worker_routes_match_document(tmp_path: Path) -> None:
    app = create_worker_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, run_reconciler=False)
    doc = worker_openapi()
    assert registered(app) == documented(doc)
    policies = app[AUTH_POLICIES]  # what the auth middleware enforces
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        op = doc["paths"][route.resource.canonical][route.method.lower()]
        policy = policies.get(route, "admin")  # the middleware's fail-closed default
        assert op["x-gastown-auth"] == policy, f"{route.method} {route.resource.canonical}"
        assert is_public(doc, route.method, route.resource.canonical) == (policy == "public")


def test_control_public_operations_are_exactly_liveness_readiness_and_the_document() -> None:
    """The middleware's allow-list and the document both come from the route declarations; this
    pins what that list may hold (a route declared public by mistake fails here)."""
    doc = control_openapi()
    public = {p for m, p in documented(doc) if is_public(doc, m, p)}
    assert public == set(PUBLIC_PATHS) == {"/alive", "/ready", "/openapi.json"}


async def _probe_without_token(client: TestClient, doc: dict[str, Any]) -> None:
    for method, path in sorted(documented(doc)):
        async with client.request(method, concrete(path), json={}) as resp:
            body = await resp.read()
            if is_public(doc, method, path):
                assert resp.status != 401, f"{method} {path} is documented public but wants a token"
            else:
                assert resp.status == 401, f"{method} {path} is documented as needing a token: {resp.status} {body!r}"


async def test_control_security_matches_middleware(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(create_control_app(_control_runtime(tmp_path)))
    await _probe_without_token(client, control_openapi())


async def test_worker_security_matches_middleware(aiohttp_client, tmp_path: Path) -> None:
    app = create_worker_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, run_reconciler=False)
    await _probe_without_token(await aiohttp_client(app), worker_openapi())


async def test_documents_are_served_without_auth(aiohttp_client, tmp_path: Path) -> None:
    control = await aiohttp_client(create_control_app(_control_runtime(tmp_path)))
    worker = await aiohttp_client(
        create_worker_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, run_reconciler=False))
    for client, doc in ((control, control_openapi()), (worker, worker_openapi())):
        resp = await client.get("/openapi.json")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == doc


# ---------------------------------------------------------------- worker: every operation, valid input


async def test_worker_responses_match_document(aiohttp_client, tmp_path: Path, seaweedfs) -> None:  # noqa: ANN001
    bucket = new_bucket(seaweedfs)
    broker = SnapshotBroker.from_env({"GASTOWN_SNAPSHOT_URL": f"s3://{bucket}/g", **s3_env(seaweedfs, bucket)})
    app = create_worker_app(tmp_path / "w.db", admin_token=ADMIN_TOKEN, jwt_secret=JWT_SECRET, run_reconciler=False,
                            snapshot_broker=broker)
    client = await aiohttp_client(app)
    doc = worker_openapi()
    conf = Conformance(doc)
    adm = ADMIN_TOKEN
    T, A = "/api/towns/{t}", "/api/towns/{t}/agents/{a}"

    async def do(method: str, template: str, expect: int, token: str | None = adm, **kw: Any) -> Any:
        ids = kw.pop("ids", {})
        path = template
        for k, v in {"t": town_id, **ids}.items():
            path = path.replace("{" + k + "}", v)
        return await call(client, conf, method, template, expect, path=path, token=token, **kw)

    town_id = ""
    await do("GET", "/alive", 200, token=None)
    await do("GET", "/openapi.json", 200, token=None)
    town = await do("POST", "/api/towns", 201, json={"name": "t", "container_url": "http://127.0.0.1:9",
                                                      "control_token": "c" * 16, "default_model": "fake/m1"})
    town_id, ctok = town["town_id"], town["container_token"]
    await do("GET", T, 200, token=ctok)
    for agent_id, role in (("mayor-1", "mayor"), ("polecat-1", "polecat"), ("refinery-1", "refinery")):
        await do("POST", f"{T}/agents", 201, json={"agent_id": agent_id, "role": role, "name": agent_id,
                                                   "rig_id": "rig-1"})
    await do("GET", f"{T}/agents", 200)
    entry = {"agent_id": "polecat-1", "request": start_body(town_id=town_id), "workdir": "/w/polecat-1"}
    await do("POST", f"{T}/container-registry", 200, token=ctok, json=[entry])
    await do("GET", f"{T}/container-registry", 200, token=ctok)
    await do("GET", f"{T}/prewarm-context", 200, token=ctok)
    await do("POST", f"{T}/refresh-container-token", 200, token=ctok)

    pc = {"a": "polecat-1"}
    await do("POST", f"{A}/heartbeat", 200, token=ctok, ids=pc,
             json={"status": "running", "last_event_type": "session.idle", "last_event_at": 1_700_000_000_000,
                   "active_tools": ["bash"], "message_count": 2, "container_instance_id": "inst-1"})
    await do("POST", f"{A}/completed", 200, token=ctok, ids=pc, json={"status": "completed", "reason": "done"})
    await do("POST", f"{A}/waiting", 200, token=ctok, ids={"a": "mayor-1"}, json={"fired_at": 1_700_000_000_000})
    await do("POST", f"{A}/done", 200, token=ctok, ids=pc, json={"branch": "gt/polecat-1/x", "summary": "ok"})
    await do("POST", f"{A}/eviction-context", 200, token=ctok, ids=pc,
             json={"branch": "b", "agent_name": "p", "saved_at": "2024-01-01T00:00:00Z"})
    nudge = await do("POST", f"{A}/nudges", 201, ids=pc, json={"message": "wake up", "priority": "urgent", "ttl_s": 60})
    await do("GET", f"{A}/pending-nudges", 200, token=ctok, ids=pc)
    await do("POST", f"{A}/nudge-delivered", 200, token=ctok, ids=pc, json={"nudge_id": nudge["nudge_id"]})
    await do("POST", f"{T}/container-events", 202, token=ctok, json={"event": "agent.oom", "agent_id": "polecat-1",
                                                                     "rss": 1})
    drain = await do("POST", f"{T}/container-eviction", 200, token=ctok)
    hb = await do("POST", f"{A}/heartbeat", 200, token=ctok, ids=pc, json={"status": "running"})
    assert hb["drain_nonce"] == drain["drain_nonce"]
    assert (await do("GET", f"{T}/drain-state", 200, token=ctok)) == {"draining": True,
                                                                       "drain_nonce": drain["drain_nonce"]}
    assert (await do("POST", f"{T}/container-ready", 200, token=ctok, json={"nonce": drain["drain_nonce"]}))["cleared"]

    await do("POST", f"{T}/rigs", 201, json={"rig_id": "rig-1", "name": "r", "git_url": "https://example.invalid/r.git",
                                             "max_dispatch_attempts": 3})
    await do("GET", f"{T}/rigs", 200)
    await do("PATCH", f"{T}/rigs/{{r}}", 200, ids={"r": "rig-1"}, json={"code_review": "off", "env_vars": {"A": "1"},
                                                                     "git_author_name": "Rig Bot"})
    await do("PATCH", f"{T}/settings", 200, json={"default_model": "fake/m2", "env_vars": {"FOO": "bar"},
                                                   "merge_strategy": "pr"})
    await do("PATCH", f"{T}/settings", 400, json={"env_vars": {"GASTOWN_X": "y"}})
    await do("GET", f"{T}/settings", 200)
    rig = {"r": "rig-1"}
    await do("PUT", f"{T}/rigs/{{r}}/scm", 200, ids=rig, json={"github_token": "ghp_" + "x" * 36,
                                                                "auto_merge_delay_minutes": 5})
    scm = await do("GET", f"{T}/rigs/{{r}}/scm", 200, token=ctok, ids=rig)
    assert scm["token_configured"] and "ghp_" not in str(scm)
    cred = await do("GET", f"{A}/git-credential", 200, token=ctok, ids=pc, params={"url": "https://example.invalid/r"})
    assert cred["password"] == "ghp_" + "x" * 36 and cred["username"] == "x-access-token"
    bead = (await do("POST", f"{T}/beads", 201, json={"rig_id": "rig-1", "title": "fix it", "labels": ["x"],
                                                       "metadata": {"k": 1}}))["bead_id"]
    await do("GET", f"{T}/beads", 200, params={"status": "open", "type": "issue", "rig_id": "rig-1"})
    await do("GET", f"{T}/beads/{{b}}", 200, ids={"b": bead})
    await do("PATCH", f"{T}/beads/{{b}}", 200, ids={"b": bead}, json={"priority": "high", "title": "fix it now"})
    slung = (await do("POST", f"{T}/sling", 201, json={"rig_id": "rig-1", "title": "slung"}))["bead_id"]
    convoy = await do("POST", f"{T}/convoys", 201, json={"rig_id": "rig-1", "title": "cv", "staged": True,
                                                         "beads": [{"title": "a"}, {"title": "b", "depends_on": [0]}]})
    cid = {"c": convoy["convoy_id"]}
    await do("GET", f"{T}/convoys", 200)
    await do("GET", f"{T}/convoys/{{c}}", 200, ids=cid)
    await do("POST", f"{T}/convoys/{{c}}/start", 200, ids=cid)
    await do("POST", f"{T}/convoys/{{c}}/close", 200, ids=cid)
    await do("GET", f"{T}/status", 200)
    await do("GET", f"{T}/invariants", 200)

    await do("POST", f"{T}/beads/{{b}}/reassign", 200, ids={"b": bead}, json={"agent_id": "polecat-1"})
    prime = await do("GET", f"{A}/prime", 200, token=ctok, ids=pc)
    assert prime["hooked_bead"]["bead_id"] == bead
    await do("POST", f"{T}/beads/{{b}}/close", 200, ids={"b": bead}, json={"agent_id": "polecat-1"})
    await do("POST", f"{T}/beads/{{b}}/close", 200, ids={"b": slung})  # no body: optional
    await do("POST", f"{A}/reset", 200, ids=pc)

    def hook_refinery_to_mr(conn) -> str:  # what the reconciler does when a polecat's work is done
        src = bx.create_bead(conn, town_id, type="issue", title="src", rig_id="rig-1", now_ms=1, status="in_review")
        mr = bx.create_bead(conn, town_id, type="merge_request", title="Review: src", rig_id="rig-1", now_ms=1,
                            status="in_progress", metadata={"source_bead_id": src["bead_id"]})
        bx.put_review(conn, town_id, mr["bead_id"], branch="gt/polecat-1/src", target_branch="main")
        bx.set_hook(conn, town_id, "refinery-1", mr["bead_id"], 1)
        return mr["bead_id"]

    mr_id = await app[DB].run(hook_refinery_to_mr)
    await do("GET", f"{T}/beads/{{b}}", 200, ids={"b": mr_id})  # a merge request's view carries its review
    out = await do("POST", f"{A}/request-changes", 200, token=ctok, ids={"a": "refinery-1"},
                   json={"feedback": "add tests", "files": ["a.py"]})
    assert out["mr_status"] == "open" and out["rework_bead_id"]

    await do("POST", f"{T}/mail", 201, token=ctok, json={"from_agent_id": "mayor-1", "to_agent_id": "polecat-1",
                                                         "subject": "hi", "body": "there"})
    await do("GET", f"{A}/mail", 200, token=ctok, ids=pc)
    esc = await do("POST", f"{T}/escalations", 201, token=ctok, json={"agent_id": "polecat-1", "title": "stuck",
                                                                      "priority": "high"})
    await do("POST", f"{T}/escalations/{{e}}/acknowledge", 200, token=ctok, ids={"e": esc["bead_id"]},
             json={"agent_id": "mayor-1", "note": "looking"})
    await do("POST", f"{A}/checkpoint", 200, token=ctok, ids=pc, json={"data": {"step": 3}})
    await do("GET", f"{T}/agents", 200)  # rows after hooks, checkpoints and resets
    await do("GET", "/metrics", 200)
    await do("DELETE", f"{T}/beads/{{b}}", 200, ids={"b": bead})
    user = await do("POST", "/api/users", 201, json={"name": "ada"})
    await do("GET", "/api/towns", 200, token=user["token"])
    # The front door: the event archive, its stream, the mayor's inbox (no container: nothing delivered).
    stored = await do("POST", f"{T}/agent-events", 200, token=ctok, json={"events": [
        {"agent_id": "mayor-1", "id": 1, "type": "message.updated", "data": {"info": {"id": "m1", "role": "user"}},
         "ts": 1}, {"agent_id": "mayor-1", "id": 2, "type": "message.part.updated", "ts": 2,
                    "data": {"part": {"id": "p1", "messageID": "m1", "type": "text", "text": "hello"}}}]})
    assert stored == {"stored": 2, "duplicates": 0}
    await do("GET", f"{A}/events", 200, ids={"a": "mayor-1"}, params={"after": "0"})
    stream_path = f"/api/towns/{town_id}/events/stream"
    async with client.get(stream_path, headers={"Authorization": f"Bearer {adm}"}) as resp:
        frame = b""
        while not frame.endswith((b"\n\n", b"\r\n\r\n")):
            frame += await asyncio.wait_for(resp.content.readline(), 10)
        assert frame.startswith(b"id: ") and b"event: agent_event" in frame
        fields = dict(line.split(": ", 1) for line in frame.decode().splitlines() if line)
        conf.check("GET", f"{T}/events/stream", resp.status, fields, resp.headers["Content-Type"])
    assert (await do("POST", f"{T}/mayor/messages", 202, json={"text": "hi"}))["agent_id"] == "mayor-1"
    assert (await do("GET", f"{T}/mayor/messages", 200))["messages"] == [
        {"n": 1, "role": "user", "text": "hello", "ts": 1}]
    await do("GET", f"{T}/mayor", 200)
    async with client.ws_connect(f"/api/towns/{town_id}/agents/mayor-1/pty", headers={"Authorization": f"Bearer {adm}"}) as ws:
        await ws.receive(timeout=10)  # upgraded (101), then closed: the town's container does not answer here
        assert ws.close_code == 1011
        conf.ok.add(("GET", f"{A}/pty"))
    manifest = {"format": 1, "generation": 1, "key": "generations/0000000001-x-ab.db"}
    seal = (await do("POST", f"{A}/snapshot-seal", 200, token=ctok, ids={"a": "polecat-1"},
                     json={"manifest": manifest}))["seal"]
    assert (await do("POST", f"{A}/snapshot-verify", 200, token=ctok, ids={"a": "polecat-1"},
                     json={"manifest": manifest, "seal": seal}))["valid"] is True
    access = await do("POST", f"{A}/snapshot-access", 200, token=ctok, ids={"a": "polecat-1"},
                      json={"op": "put", "key": "manifest.json", "if_none_match": True})
    assert access["method"] == "PUT" and access["headers"] == {"If-None-Match": "*"}
    assert (await do("GET", f"{T}/snapshot-store", 200, token=ctok))["conditional_writes"] is True
    agent_token = await do("POST", f"{A}/token", 200, token=ctok, ids={"a": "polecat-1"})
    assert agent_token["token"] != ctok
    rotated = await do("POST", f"{T}/rotate-tokens", 200)  # last: it revokes ctok
    assert rotated["token_generation"] == 1 and rotated["pushed"] is False

    missing = documented(doc) - conf.ok
    assert not missing, f"operations never exercised with a success response: {sorted(missing)}"


# ---------------------------------------------------------------- control server


async def test_control_responses_without_kilo_match_document(aiohttp_client, tmp_path: Path) -> None:
    """Everything reachable without a live kilo: a failed start (502), its record, the error paths."""
    rt = ContainerRuntime(RuntimeConfig(data_dir=tmp_path / "data", control_token=CONTROL_TOKEN,
                                        kilo_bin=str(tmp_path / "no-kilo"), town_id="town-test"))
    client = await aiohttp_client(create_control_app(rt))
    await rt.start()
    conf = Conformance(control_openapi())
    tok = CONTROL_TOKEN
    try:
        await call(client, conf, "GET", "/alive", 200)
        await call(client, conf, "GET", "/ready", 200)
        await call(client, conf, "GET", "/openapi.json", 200)
        await call(client, conf, "GET", "/health", 200, token=tok)
        await call(client, conf, "GET", "/metrics", 200, token=tok)
        err = await call(client, conf, "POST", "/agents/start", 502, token=tok, json=start_body(lightweight=True))
        assert err["error"]["code"] == "AGENT_START_FAILED"
        await call(client, conf, "POST", "/agents/start", 409, token=tok, json=start_body(town_id="town-other"))
        await call(client, conf, "POST", "/agents/start", 400, token=tok, json={"agent_id": "../x"})
        status = await call(client, conf, "GET", "/agents/{agent_id}/status", 200, path="/agents/polecat-1/status",
                            token=tok)
        assert status["status"] == "failed" and status["pid"] is None
        await call(client, conf, "GET", "/agents", 200, token=tok)
        await call(client, conf, "GET", "/agents/{agent_id}/events", 200, path="/agents/polecat-1/events?after=0",
                   token=tok)
        await call(client, conf, "GET", "/agents/{agent_id}/events", 400, path="/agents/polecat-1/events?after=%C2%B2",
                   token=tok)  # "²" passes str.isdigit() but not int(): once a 500
        await call(client, conf, "POST", "/agents/{agent_id}/message", 409, path="/agents/polecat-1/message",
                   token=tok, json={"prompt": "hi"})
        await call(client, conf, "PATCH", "/agents/{agent_id}/model", 409, path="/agents/polecat-1/model",
                   token=tok, json={"model": "fake/m2"})
        await call(client, conf, "POST", "/agents/{agent_id}/stop", 200, path="/agents/polecat-1/stop", token=tok)
        await call(client, conf, "POST", "/agents/{agent_id}/stop", 404, path="/agents/nobody/stop", token=tok)
        await call(client, conf, "POST", "/refresh-token", 200, token=tok, json={"token": "t", "issued_at": 5.0})
        rt.draining = True
        await call(client, conf, "GET", "/ready", 503)
        await call(client, conf, "POST", "/agents/start", 503, token=tok, json=start_body())
    finally:
        await rt.shutdown()


@pytest.mark.kilo
async def test_control_responses_with_kilo_match_document(container) -> None:
    """The agent routes with a live kilo (fake LLM): AgentStatus of a running agent, events, a
    message, a model hot swap and a token refresh that restarts it."""
    conf = Conformance(control_openapi())

    async def do(method: str, template: str, expect: int, agent: str = "polecat-1", **kw: Any) -> Any:
        path = template.replace("{agent_id}", agent)
        status, body = await container.request(method, path, **kw)
        assert status == expect, f"{method} {path}: {status} {body}"
        conf.check(method, template, status, body)
        return body

    started = await do("POST", "/agents/start", 201, json=start_body())
    assert started["status"] == "running" and started["pid"]
    await do("POST", "/agents/start", 200, json=start_body())
    await do("GET", "/health", 200)
    await do("GET", "/agents", 200)
    await do("POST", "/agents/{agent_id}/message", 202, json={"prompt": "and again"})
    for _ in range(100):
        events = await do("GET", "/agents/{agent_id}/events", 200)
        if events["events"]:
            break
        await asyncio.sleep(0.1)
    assert events["events"], "no event arrived"
    await do("GET", "/agents/{agent_id}/status", 200)
    await do("PATCH", "/agents/{agent_id}/model", 200, json={"model": "fake/m2"})
    ticket = (await do("POST", "/agents/{agent_id}/stream-ticket", 200))["ticket"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{container.url}/agents/polecat-1/stream?follow=false&ticket={ticket}") as resp:
            frame = b""
            while not frame.endswith((b"\n\n", b"\r\n\r\n")):
                frame += await asyncio.wait_for(resp.content.readline(), 10)
            fields = dict(line.split(": ", 1) for line in frame.decode().splitlines() if line)
            conf.check("GET", "/agents/{agent_id}/stream", resp.status, fields, resp.headers["Content-Type"])
        async with http.ws_connect(f"{container.url}/agents/polecat-1/pty?ticket={ticket}") as ws:
            await ws.send_str("exit\n")
            assert ws.protocol is None and not ws.closed  # upgraded: 101, the documented answer
    refreshed = await do("POST", "/refresh-token", 200, json={"token": "new-token"})
    # No agent restarts (agents read their own token file); no worker here, so no agent token re-issued.
    assert refreshed["refreshed"] is True and refreshed["agents_restarted"] == 0 and refreshed["results"] == []
    await do("POST", "/agents/{agent_id}/stop", 200)
    await do("GET", "/agents/{agent_id}/status", 200)
