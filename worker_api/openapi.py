"""OpenAPI 3.1 document of the worker API (docs/contract.md §6 and the issue-defined user/tool routes),
served at ``GET /openapi.json``.

Request bodies are generated from the pydantic models the handlers validate with, so accepted
input cannot drift from the document; pydantic ``AfterValidator`` id/url checks are reflected as
``pattern``/``format`` so generated examples look like what the validators accept. Response shapes
are written here by hand. ``tests/test_openapi.py`` checks every registered route is documented
(and vice versa) with the auth policy its handler declares (``x-gastown-auth``);
``tests/test_schemathesis.py`` fuzzes a running worker and checks each response against this.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from gastown.contract.git import check_git_ref, check_git_url
from gastown.core.ids import ID_PATTERN
from worker_api import beads as bx
from worker_api import models as m
from worker_api import routes_tools as tools
from worker_api import routes_user as user
from worker_api.auth import public
from worker_api.scm import routes as scm

OPENAPI_PATH = "/openapi.json"
_REF = "#/components/schemas/{model}"

# Extra JSON Schema for pydantic AfterValidators: what the validator enforces, said in the schema.
_VALIDATOR_HINTS: dict[Any, dict[str, Any]] = {
    m.check_id: {"pattern": ID_PATTERN},
    m.check_http_url: {"pattern": "^https?://[^/?#@\\s]+"},
    check_git_url: {"pattern": "^(https?://|ssh://|git@|file://|/)"},
    check_git_ref: {"pattern": r"^[^-\s~^:?*\[\\][^\s~^:?*\[\\]*$"},
}


class _Schema(GenerateJsonSchema):
    def function_after_schema(self, schema: Any) -> dict[str, Any]:
        out = super().function_after_schema(schema)
        hint = _VALIDATOR_HINTS.get(schema.get("function", {}).get("function"))
        if hint and out.get("type") == "string":
            out = {**out, **hint}
        return out


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    m.CreateTown, m.CreateAgent, m.Heartbeat, m.Completed, m.Waiting, m.Done, m.EvictionContext,
    m.NudgeDelivered, m.EnqueueNudge, m.ContainerEvent, m.ContainerReady, m.RegistryEntry,
    user.CreateRig, user.CreateBead, user.PatchBead, user.Sling, user.CreateConvoy,
    tools.CloseBead, tools.Reassign, tools.RequestChanges, tools.Mail, tools.Escalation, tools.Checkpoint,
    scm.ScmConfig,
)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict[str, Any], *, required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    """An object schema; every property is required unless ``required`` says otherwise."""
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": extra}


def request_schemas() -> dict[str, Any]:
    _, defs = models_json_schema([(model, "validation") for model in REQUEST_MODELS], ref_template=_REF,
                                 schema_generator=_Schema)
    return copy.deepcopy(defs.get("$defs", {}))


# ---------------------------------------------------------------- response shapes

S = {"type": "string"}
S_NULL = {"type": ["string", "null"]}
I = {"type": "integer"}
I_NULL = {"type": ["integer", "null"]}
MS = {"type": "integer", "description": "epoch milliseconds"}
MS_NULL = {"type": ["integer", "null"], "description": "epoch milliseconds"}
B = {"type": "boolean"}
ID = {"type": "string", "pattern": ID_PATTERN}
STR_LIST = {"type": "array", "items": S}
COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
ROLE = {"type": "string", "enum": ["mayor", "polecat", "refinery", "triage"]}
BEAD_FIELDS: dict[str, Any] = {
    "bead_id": ID,
    "type": {"type": "string", "enum": list(bx.BEAD_TYPES)},
    "status": {"type": "string", "enum": list(bx.BEAD_STATUSES)},
    "title": S,
    "body": S,
    "rig_id": S_NULL,
    "parent_bead_id": S_NULL,
    "assignee_agent_id": S_NULL,
    "priority": {"type": "string", "enum": list(bx.PRIORITIES)},
    "labels": STR_LIST,
    "metadata": {"type": "object"},
    "dispatch_attempts": I,
    "last_dispatch_attempt_at": MS_NULL,
    "created_by": S_NULL,
    "created_at": MS,
    "updated_at": MS,
    "closed_at": MS_NULL,
}


def response_schemas() -> dict[str, Any]:
    review = obj({"bead_id": ID, "branch": S_NULL, "target_branch": S, "pr_url": S_NULL, "merge_commit": S_NULL,
                  "retry_count": I, "last_poll_at": MS_NULL}, extra=True)
    convoy_bead = obj({"bead_id": ID, "title": S, "status": S, "assignee_agent_id": S_NULL,
                       "dispatch_attempts": I, "blocked_by": STR_LIST})
    return {
        "Error": obj({"error": {
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"}, "message": S},
            "required": ["code", "message"],
            "additionalProperties": True,
        }}),
        "Town": obj({"town_id": ID, "name": S, "container_url": S, "default_model": S_NULL, "small_model": S_NULL,
                     "organization_id": S_NULL, "created_at": MS, "draining": B},
                    required=["town_id", "name", "container_url", "default_model", "small_model",
                              "organization_id", "created_at"], extra=True),
        # A row of ``agents``; rows from list routes hold checkpoint/gupp_fired as stored JSON text,
        # the tool routes (reset, prime) decode them.
        "Agent": obj({
            "town_id": ID, "agent_id": ID, "role": ROLE, "name": S, "rig_id": S_NULL,
            "status": {"type": "string", "enum": ["idle", "working", "waiting", "stalled", "dead"]},
            "working_since": MS_NULL, "last_activity_at": MS_NULL, "last_event_type": S_NULL,
            "last_event_at": MS_NULL, "active_tools": STR_LIST, "message_count": I, "container_status": S_NULL,
            "container_instance_id": S_NULL, "last_heartbeat_at": MS_NULL, "created_at": MS,
            "current_hook_bead_id": S_NULL, "dispatch_attempts": I, "stalled_at": MS_NULL,
            "checkpoint": {}, "gupp_fired": {"type": ["object", "string"]},
        }, extra=True),
        "PendingNudge": obj({"nudge_id": S, "message": S, "mode": S, "priority": {"enum": ["normal", "urgent"]},
                             "source": S}),
        "Nudge": obj({"nudge_id": S, "agent_id": ID, "message": S, "mode": S,
                      "priority": {"enum": ["normal", "urgent"]}, "source": S, "created_at": MS,
                      "expires_at": MS_NULL, "delivered_at": MS_NULL}),
        "Rig": obj({"rig_id": ID, "name": S, "git_url": S, "default_branch": S, "config": {"type": "object"},
                    "created_at": MS}, extra=True),
        "Bead": obj(BEAD_FIELDS, extra=True),
        "Review": review,
        "BeadView": obj({**BEAD_FIELDS, "blocked_by": STR_LIST, "hooked_agents": STR_LIST,
                         "review": {"anyOf": [review, {"type": "null"}]}},
                        required=[*BEAD_FIELDS, "blocked_by", "hooked_agents"], extra=True),
        "Convoy": obj({**BEAD_FIELDS, "merge_mode": S_NULL, "staged": B, "feature_branch": S_NULL,
                       "landing_attempts": I, "landed_at": MS_NULL,
                       "progress": obj({"total": I, "closed": I, "failed": I, "open": I}),
                       "beads": {"type": "array", "items": convoy_bead}},
                      required=[*BEAD_FIELDS, "merge_mode", "staged", "feature_branch", "landing_attempts",
                                "landed_at", "progress"], extra=True),
        "MailMessage": obj({"mail_id": S, "from_agent_id": S, "to_agent_id": S, "subject": S, "body": S,
                     "created_at": MS}),
        "ScmView": obj({"rig_id": ID, "provider": {"const": "github"}, "token_configured": B,
                        "auto_merge_delay_minutes": {"type": "number", "minimum": 0}}),
        "TownStatus": obj({
            "town_id": ID, "draining": B,
            "beads": obj({"by_status": COUNTS, "by_type": COUNTS}),
            "agents": obj({"by_status": COUNTS, "by_role": COUNTS}),
            "convoys": obj({"by_status": COUNTS}),
            "pending_events": {"type": "integer", "minimum": 0},
            "reconciler": obj({"running": B, "ticks": {"type": "integer", "minimum": 0}}),
        }),
    }


# ---------------------------------------------------------------- operations

ERRORS = {
    400: "Invalid request: bad JSON, a body failing validation, a bad path id or query value",
    401: "Missing or invalid bearer token (UNAUTHORIZED)",
    403: "The token may not use this route or town (FORBIDDEN, ROLE_FORBIDDEN)",
    404: "Unknown town, agent, bead, rig, convoy or nudge (*_NOT_FOUND)",
    409: "Conflict (e.g. *_EXISTS, INVALID_TRANSITION, DEPENDENCY_CYCLE, AGENT_BUSY, CONVOY_FINISHED)",
    413: "Body too large (PAYLOAD_TOO_LARGE)",
}


def _resp(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _params(path: str) -> list[dict[str, Any]]:
    names = {"t": "town id", "a": "agent id", "b": "bead id", "c": "convoy (bead) id", "r": "rig id"}
    return [{"name": n, "in": "path", "required": True, "description": d, "schema": {"type": "string", "pattern": ID_PATTERN}}
            for n, d in names.items() if "{" + n + "}" in path]


def _op(method: str, path: str, op_id: str, auth: str, status: int, schema: dict[str, Any], *,
        body: Any = None, body_required: bool = True, errors: tuple[int, ...] = (), query: list[dict] | None = None,
        summary: str = "", media: str = "application/json") -> tuple[str, str, dict[str, Any]]:
    codes = set(errors)
    if auth != "public":
        codes |= {401, 403}
    if "{" in path:
        codes |= {400, 404}
    if body is not None:
        codes |= {400, 413}
    if query:
        codes.add(400)
    op: dict[str, Any] = {"operationId": op_id, "x-gastown-auth": auth}
    if summary:
        op["summary"] = summary
    if auth == "public":
        op["security"] = []
    params = _params(path) + (query or [])
    if params:
        op["parameters"] = params
    if body is not None:
        schema_ref = ref(body.__name__) if isinstance(body, type) else body
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": schema_ref}}}
    op["responses"] = {str(status): {"description": "Success", "content": {media: {"schema": schema}}}}
    for c in sorted(codes):
        op["responses"][str(c)] = _resp(ERRORS[c], ref("Error"))
    return method, path, op


def _const(key: str, value: Any = True) -> dict[str, Any]:
    return obj({key: {"const": value}})


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    T, A = "/api/towns/{t}", "/api/towns/{t}/agents/{a}"
    q_beads = [
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(bx.BEAD_STATUSES)}},
        {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(bx.BEAD_TYPES)}},
        {"name": "rig_id", "in": "query", "schema": {"type": "string", "pattern": ID_PATTERN}},
    ]
    registry = {"type": "array", "items": ref("RegistryEntry"), "maxItems": m.MAX_REGISTRY_ENTRIES}
    return [
        _op("get", "/alive", "alive", "public", 200, _const("status", "ok")),
        _op("get", OPENAPI_PATH, "openapi", "public", 200, {"type": "object"}, summary="This document"),
        _op("get", "/metrics", "metrics", "admin", 200, {"type": "string"}, media="text/plain",
            summary="Prometheus metrics of every town, read from the store at scrape time"),
        # towns (routes_towns)
        _op("post", "/api/towns", "createTown", "admin", 201,
            obj({"town_id": ID, "container_token": S}), body=m.CreateTown, errors=(409,)),
        _op("get", T, "getTown", "town", 200, ref("Town")),
        _op("post", f"{T}/agents", "createAgent", "admin", 201, ref("Agent"), body=m.CreateAgent, errors=(409,)),
        _op("get", f"{T}/agents", "listAgents", "town", 200, obj({"agents": {"type": "array", "items": ref("Agent")}})),
        _op("get", f"{T}/container-registry", "getRegistry", "town", 200, registry),
        _op("post", f"{T}/container-registry", "putRegistry", "town", 200,
            obj({"stored": {"type": "integer", "minimum": 0}, "dropped": {"type": "array", "items": S}}),
            body=registry, summary="Replace the registry; secret-looking fields are dropped (their paths in `dropped`)"),
        _op("get", f"{T}/prewarm-context", "prewarmContext", "town", 200,
            obj({"agent_id": S_NULL, "model": S_NULL, "small_model": S_NULL, "organization_id": S_NULL})),
        _op("post", f"{T}/refresh-container-token", "refreshContainerToken", "refresh", 200, obj({"token": S}),
            summary="A fresh 8 h container token; the caller's token may be expired (up to 7 days)"),
        # container-facing (routes_container)
        _op("post", f"{A}/heartbeat", "heartbeat", "town", 200,
            obj({"heartbeat": {"const": True}, "drain_nonce": S}, required=["heartbeat"]), body=m.Heartbeat, errors=(409,)),
        _op("post", f"{A}/completed", "completed", "town", 200, _const("completed"), body=m.Completed),
        _op("post", f"{A}/waiting", "waiting", "town", 200, _const("acknowledged"), body=m.Waiting),
        _op("post", f"{A}/done", "done", "town", 200, _const("done"), body=m.Done),
        _op("post", f"{A}/eviction-context", "evictionContext", "town", 200, _const("recorded"), body=m.EvictionContext),
        _op("get", f"{A}/pending-nudges", "pendingNudges", "town", 200,
            obj({"nudges": {"type": "array", "items": ref("PendingNudge")}})),
        _op("post", f"{A}/nudge-delivered", "nudgeDelivered", "town", 200, _const("marked"), body=m.NudgeDelivered),
        _op("post", f"{A}/nudges", "enqueueNudge", "town", 201, ref("Nudge"), body=m.EnqueueNudge, errors=(409,)),
        _op("post", f"{T}/container-events", "containerEvents", "town", 202, _const("accepted"), body=m.ContainerEvent),
        _op("post", f"{T}/container-eviction", "containerEviction", "town", 200, obj({"drain_nonce": S})),
        _op("post", f"{T}/container-ready", "containerReady", "town", 200, obj({"cleared": B}), body=m.ContainerReady),
        # user routes (routes_user)
        _op("post", f"{T}/rigs", "createRig", "town", 201, ref("Rig"), body=user.CreateRig, errors=(409,)),
        _op("get", f"{T}/rigs", "listRigs", "town", 200, obj({"rigs": {"type": "array", "items": ref("Rig")}})),
        _op("put", f"{T}/rigs/{{r}}/scm", "putRigScm", "admin", 200, ref("ScmView"), body=scm.ScmConfig,
            summary="Set (or with null remove) the rig's GitHub token and auto-merge delay; absent fields unchanged"),
        _op("get", f"{T}/rigs/{{r}}/scm", "getRigScm", "town", 200, ref("ScmView"),
            summary="Whether a token is configured (never the token) and the auto-merge delay"),
        _op("post", f"{T}/beads", "createBead", "town", 201, ref("Bead"), body=user.CreateBead),
        _op("get", f"{T}/beads", "listBeads", "town", 200, obj({"beads": {"type": "array", "items": ref("Bead")}}),
            query=q_beads),
        _op("get", f"{T}/beads/{{b}}", "getBead", "town", 200, ref("BeadView")),
        _op("patch", f"{T}/beads/{{b}}", "patchBead", "town", 200, ref("BeadView"), body=user.PatchBead, errors=(409,)),
        _op("delete", f"{T}/beads/{{b}}", "deleteBead", "town", 200, _const("deleted")),
        _op("post", f"{T}/sling", "sling", "town", 201, obj({"bead_id": ID, "status": S}), body=user.Sling),
        _op("post", f"{T}/convoys", "createConvoy", "town", 201, obj({"convoy_id": ID, "bead_ids": STR_LIST}),
            body=user.CreateConvoy, errors=(409,)),
        _op("get", f"{T}/convoys", "listConvoys", "town", 200, obj({"convoys": {"type": "array", "items": ref("Convoy")}})),
        _op("get", f"{T}/convoys/{{c}}", "getConvoy", "town", 200, ref("Convoy")),
        _op("post", f"{T}/convoys/{{c}}/start", "startConvoy", "town", 200, ref("Convoy"), errors=(409,)),
        _op("post", f"{T}/convoys/{{c}}/close", "closeConvoy", "town", 200, ref("Convoy")),
        _op("get", f"{T}/status", "townStatus", "town", 200, ref("TownStatus")),
        _op("get", f"{T}/invariants", "invariants", "town", 200,
            obj({"violations": {"type": "array", "items": obj({"invariant": I, "rule": S}, extra=True)}})),
        # agent tools and interventions (routes_tools)
        _op("post", f"{T}/beads/{{b}}/close", "closeBead", "town", 200, ref("BeadView"),
            body=tools.CloseBead, body_required=False),
        _op("post", f"{T}/beads/{{b}}/reassign", "reassignBead", "town", 200, ref("BeadView"),
            body=tools.Reassign, body_required=False, errors=(409,)),
        _op("post", f"{A}/reset", "resetAgent", "town", 200, ref("Agent")),
        _op("get", f"{A}/prime", "prime", "town", 200, obj({
            "agent": ref("Agent"), "hooked_bead": {"anyOf": [ref("BeadView"), {"type": "null"}]},
            "mail": {"type": "array", "items": ref("MailMessage")}, "open_beads": {"type": "array", "items": ref("Bead")}})),
        _op("post", f"{A}/request-changes", "requestChanges", "town", 200,
            obj({"rework_bead_id": S_NULL, "mr_status": {"enum": ["open", "failed"]}}), body=tools.RequestChanges),
        _op("post", f"{T}/mail", "sendMail", "town", 201, ref("MailMessage"), body=tools.Mail),
        _op("get", f"{A}/mail", "checkMail", "town", 200, obj({"mail": {"type": "array", "items": ref("MailMessage")}})),
        _op("post", f"{T}/escalations", "escalate", "town", 201, obj({"bead_id": ID}), body=tools.Escalation),
        _op("post", f"{A}/checkpoint", "checkpoint", "town", 200, _const("saved"), body=tools.Checkpoint),
    ]


def build_openapi() -> dict[str, Any]:
    """A fresh copy of the worker API's OpenAPI document."""
    return copy.deepcopy(_document())


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    requests, responses = request_schemas(), response_schemas()
    clash = requests.keys() & responses.keys()
    if clash:
        raise ValueError(f"schema names used by both a request model and a response: {sorted(clash)}")
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in operations():
        if method in paths.setdefault(path, {}):
            raise ValueError(f"{method.upper()} {path} documented twice")
        paths[path][method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gastown worker API",
            "version": "1",
            "description": "Towns, agents, beads and the container-facing routes (docs/contract.md §6). Errors are "
            '{"error": {"code", "message"}}. Auth per operation in x-gastown-auth: public (none), admin '
            "(GASTOWN_ADMIN_TOKEN), town (admin token or a container token of the path town), refresh "
            "(like town, but the container token may be expired).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or admin token"}},
            "schemas": {**requests, **responses},
        },
    }


_BODY: bytes | None = None


@public
async def openapi_handler(request: web.Request) -> web.Response:
    global _BODY
    if _BODY is None:
        _BODY = json.dumps(_document()).encode()
    return web.Response(body=_BODY, content_type="application/json")
