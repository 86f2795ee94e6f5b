"""OpenAPI 3.1 document of the control server (docs/contract.md §4), served at ``GET /openapi.json``.

Request bodies are generated from the pydantic models the handlers validate with
(``supervisor.models``), so the document cannot drift from what is accepted. Response shapes are
written here by hand and kept honest by tests: ``tests/test_openapi.py`` compares the routes with
the router and the security markings with the auth middleware, and ``tests/test_schemathesis.py``
fuzzes the running server and checks every response against these schemas.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gastown.contract.agents import AgentState
from gastown.core.ids import ID_PATTERN
from supervisor.models import (
    MessageRequest,
    ModelPatchRequest,
    RefreshTokenRequest,
    StartAgentRequest,
)

OPENAPI_PATH = "/openapi.json"
REQUEST_MODELS: tuple[type[BaseModel], ...] = (StartAgentRequest, MessageRequest, ModelPatchRequest, RefreshTokenRequest)

_REF = "#/components/schemas/{model}"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(props: dict[str, Any], *, required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    """An object schema; every property is required unless ``required`` says otherwise."""
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": extra,
    }


def request_schemas(models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """Component schemas of the request models (their ``$defs`` hoisted into components).

    A ``dict[constrained str, ...]`` becomes ``patternProperties``; pydantic refuses any other key,
    so ``additionalProperties: false`` is added to say the same thing in JSON Schema."""
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    out = copy.deepcopy(defs.get("$defs", {}))

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if "patternProperties" in node and "additionalProperties" not in node and "properties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                tighten(v)
        elif isinstance(node, list):
            for v in node:
                tighten(v)

    tighten(out)
    return out


def error_schema() -> dict[str, Any]:
    """``{"error": {"code", "message", ...}}``: extra keys carry details (e.g. a failed start's phase)."""
    return obj(
        {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"}, "message": {"type": "string"}},
                "required": ["code", "message"],
                "additionalProperties": True,
            }
        }
    )


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": json_content(schema or ref("Error"))}


ERROR_DESCRIPTIONS = {
    400: "Invalid request: bad JSON, a body failing validation, or a bad path id (INVALID_JSON, INVALID_REQUEST, INVALID_ID)",
    401: "Missing or wrong bearer token (UNAUTHORIZED)",
    404: "Unknown agent (AGENT_NOT_FOUND)",
    409: "Conflict (AGENT_NOT_RUNNING, TOWN_MISMATCH)",
    413: "Body larger than the limit (PAYLOAD_TOO_LARGE)",
    422: "The provider does not offer the requested model (MODEL_NOT_AVAILABLE)",
    502: "kilo could not be brought up, swapped or reached (AGENT_START_FAILED, MODEL_UPDATE_FAILED, AGENT_UNREACHABLE); details in extra error keys",
    503: "Draining, boot hydration not finished in time, or not enough memory (DRAINING, HYDRATING, INSUFFICIENT_MEMORY)",
}


def errors(*codes: int) -> dict[str, Any]:
    return {str(c): response(ERROR_DESCRIPTIONS[c]) for c in codes}


def agent_status_schema() -> dict[str, Any]:
    """What ``supervisor.agent.AgentRecord.status()`` returns (never a token or secret env)."""
    num_or_null = {"type": ["integer", "null"]}  # epoch ms (gastown/contract/wire.py)
    str_or_null = {"type": ["string", "null"]}
    last_exit = obj(
        {
            "code": {"type": ["integer", "null"]},
            "signal": {"type": ["integer", "null"]},
            "at": num_or_null,
            "oom_suspected": {"type": "boolean"},
            "stderr_tail": {"type": "string"},
        },
        required=["code", "signal", "at", "oom_suspected", "stderr_tail"],
        extra=True,
    )
    last_snapshot = obj(
        {
            "at": num_or_null,
            "bytes": {"type": ["integer", "null"]},
            "sha256": str_or_null,
            "generation": {"type": ["integer", "string", "null"]},
        },
        extra=True,
    )
    return obj(
        {
            "agent_id": {"type": "string", "pattern": ID_PATTERN},
            "town_id": {"type": "string", "pattern": ID_PATTERN},
            "rig_id": {"type": "string", "pattern": ID_PATTERN},
            "role": ref("Role"),
            "name": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in AgentState]},
            "pid": {"type": ["integer", "null"]},
            "server_port": {"type": ["integer", "null"]},
            "session_id": str_or_null,
            "model": {"type": "string"},
            "started_at": {"type": "integer", "description": "epoch ms"},
            "last_activity_at": num_or_null,
            "last_event_type": str_or_null,
            "last_event_at": num_or_null,
            "active_tools": {"type": "array", "items": {"type": "string"}},
            "message_count": {"type": "integer", "minimum": 0},
            "exit_reason": str_or_null,
            "last_exit": nullable(last_exit),
            "last_snapshot": nullable(last_snapshot),
            "rss_bytes": {"type": "integer", "minimum": 0},
            "restarts": {"type": "integer", "minimum": 0},
            "fatal": {"type": "boolean"},
        }
    )


def response_schemas() -> dict[str, Any]:
    return {
        "Error": error_schema(),
        "AgentStatus": agent_status_schema(),
        "Health": obj(
            {
                "status": {"type": "string", "enum": ["ok", "draining"]},
                "agents": {"type": "integer", "minimum": 0, "description": "active agents"},
                "servers": {"type": "integer", "minimum": 0, "description": "running kilo servers (prewarmed included)"},
                "uptime_ms": {"type": "integer", "minimum": 0},
                "started_at": {"type": "integer", "description": "epoch ms"},
                "hydrated": {"type": "boolean"},
                "draining": {"type": "boolean"},
                "mayor_ready_at": {"type": ["integer", "null"]},
            }
        ),
        "AgentEvent": obj(
            {"id": {"type": "integer"}, "type": {"type": "string"}, "data": {}, "ts": {"type": "integer"}}
        ),
        "RefreshResult": obj(
            {
                "refreshed": {"type": "boolean"},
                "agents_restarted": {"type": "integer", "minimum": 0},
                "agents_failed": {"type": "integer", "minimum": 0},
                "results": {
                    "type": "array",
                    "items": obj(
                        {
                            "agent_id": {"type": "string"},
                            "success": {"type": "boolean"},
                            "duration_ms": {"type": "integer"},
                            "error": {"type": "string"},
                        },
                        required=["agent_id", "success", "duration_ms"],
                    ),
                },
            }
        ),
    }


AGENT_ID_PARAM = {
    "name": "agent_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": ID_PATTERN},
}


def body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": json_content(ref(model.__name__))}


def build_openapi() -> dict[str, Any]:
    """A fresh copy of the control server's OpenAPI document."""
    return copy.deepcopy(_document())


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    public: list[dict[str, Any]] = []
    status_ok = response("The agent", ref("AgentStatus"))
    paths: dict[str, Any] = {
        "/alive": {
            "get": {
                "operationId": "alive",
                "summary": "Liveness: 200 while the process runs",
                "security": public,
                "responses": {"200": response("Alive", obj({"status": {"const": "ok"}}))},
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: boot hydration finished and not draining",
                "security": public,
                "responses": {
                    "200": response("Ready", obj({"status": {"const": "ready"}})),
                    "503": response("Hydrating or draining", obj({"status": {"enum": ["hydrating", "draining"]}})),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Runtime summary",
                "responses": {"200": response("Health", ref("Health")), **errors(401)},
            }
        },
        "/agents/start": {
            "post": {
                "operationId": "startAgent",
                "summary": "Start an agent (waits for boot hydration)",
                "description": "The same request on a running agent returns it with 200 (no second process or "
                "session); a different request restarts it (201).",
                "requestBody": body(StartAgentRequest),
                "responses": {
                    "201": response("Started", ref("AgentStatus")),
                    "200": response("Already running with the same request", ref("AgentStatus")),
                    **errors(400, 401, 409, 413, 502, 503),
                },
            }
        },
        "/agents": {
            "get": {
                "operationId": "listAgents",
                "summary": "Every agent record",
                "responses": {
                    "200": response("Agents", obj({"agents": {"type": "array", "items": ref("AgentStatus")}})),
                    **errors(401),
                },
            }
        },
        "/agents/{agent_id}/status": {
            "get": {
                "operationId": "agentStatus",
                "parameters": [AGENT_ID_PARAM],
                "responses": {"200": status_ok, **errors(400, 401, 404)},
            }
        },
        "/agents/{agent_id}/stop": {
            "post": {
                "operationId": "stopAgent",
                "summary": "Stop an agent; stopping a stopped agent is 200 {stopped: false}",
                "parameters": [AGENT_ID_PARAM],
                "responses": {"200": response("Stopped", obj({"stopped": {"type": "boolean"}})), **errors(400, 401, 404)},
            }
        },
        "/agents/{agent_id}/message": {
            "post": {
                "operationId": "messageAgent",
                "summary": "Send a prompt to a running agent",
                "parameters": [AGENT_ID_PARAM],
                "requestBody": body(MessageRequest),
                "responses": {"202": response("Sent", obj({"sent": {"const": True}})), **errors(400, 401, 404, 409, 413, 502)},
            }
        },
        "/agents/{agent_id}/events": {
            "get": {
                "operationId": "agentEvents",
                "summary": "Buffered events of the agent's session with id > after (bounded buffer)",
                "parameters": [
                    AGENT_ID_PARAM,
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999, "default": 0},
                    },
                ],
                "responses": {
                    "200": response("Events", obj({"events": {"type": "array", "items": ref("AgentEvent")}})),
                    **errors(400, 401, 404),
                },
            }
        },
        "/agents/{agent_id}/model": {
            "patch": {
                "operationId": "patchModel",
                "summary": "Change a running agent's model; the session keeps its history (waits for hydration)",
                "parameters": [AGENT_ID_PARAM],
                "requestBody": body(ModelPatchRequest),
                "responses": {
                    "200": response("Updated", obj({"updated": {"const": True}})),
                    **errors(400, 401, 404, 409, 413, 422, 502, 503),
                },
            }
        },
        "/refresh-token": {
            "post": {
                "operationId": "refreshToken",
                "summary": "Adopt a new worker token and restart running agents with it (waits for hydration)",
                "description": "An issued_at older than the one held is ignored (refreshed: false).",
                "requestBody": body(RefreshTokenRequest),
                "responses": {"200": response("Result", ref("RefreshResult")), **errors(400, 401, 413, 503)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {
                    "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **errors(401),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": public,
                "responses": {"200": response("OpenAPI document", {"type": "object"})},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gastown container control server",
            "version": "1",
            "description": "The per-town container's HTTP API (docs/contract.md §4). Errors are "
            '{"error": {"code", "message"}} with a fitting status; never a 500 for bad input.',
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "GASTOWN_CONTROL_TOKEN"}
            },
            "schemas": _schemas(),
        },
    }


def _schemas() -> dict[str, Any]:
    requests, responses = request_schemas(REQUEST_MODELS), response_schemas()
    clash = requests.keys() & responses.keys()
    if clash:
        raise ValueError(f"schema names used by both a request model and a response: {sorted(clash)}")
    return {**requests, **responses}


_BODY: bytes | None = None


async def openapi_handler(request: web.Request) -> web.Response:
    global _BODY
    if _BODY is None:
        _BODY = json.dumps(_document()).encode()
    return web.Response(body=_BODY, content_type="application/json")


def public_openapi(auth: Any) -> Any:
    """Wrap the auth middleware so ``GET /openapi.json`` needs no token (like /alive, /ready)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == OPENAPI_PATH:
            return await handler(request)
        return await auth(request, handler)

    return middleware
