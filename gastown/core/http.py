"""aiohttp helpers shared by the control server and the worker API.

Every error leaves as ``{"error": {"code", "message"}}`` with a fitting status. A bad request is a 4xx,
never a 500: body parsing and validation go through :func:`read_model`, unknown routes and methods
are mapped by :func:`error_middleware`, and only a genuine bug yields ``500 INTERNAL``.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, RootModel, ValidationError

from gastown.core.ids import is_valid_id
from gastown.core.jsonlog import get_logger

log = get_logger("gastown.core.http")
M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 64       # nesting a request body may have (parsing deeper recursed into a 500)
BODY_READ_TIMEOUT_S = 10.0
# Both servers close a connection that has not sent a whole request head this long after opening (or
# after its last request): aiohttp's keep-alive timer covers a half-sent head (slowloris).
SERVER_KEEPALIVE_S = 10.0


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    return web.json_response({"error": body}, status=status)


_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    503: "UNAVAILABLE",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, **e.extra)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _STATUS_CODES.get(e.status, "HTTP_ERROR")
        return error_response(e.status, code, e.reason or code)
    except Exception:
        log.error("http.unhandled_error", exc_info=True, method=request.method, path=request.path)
        return error_response(500, "INTERNAL", "internal error")


def _format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


async def read_json(request: web.Request, *, default: Any = None) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"body exceeds {MAX_BODY_BYTES} bytes")
    try:
        raw = await asyncio.wait_for(request.read(), BODY_READ_TIMEOUT_S)
    except asyncio.TimeoutError:  # a body trickled a byte at a time holds a connection and a handler
        raise ApiError(408, "REQUEST_TIMEOUT", f"the body did not arrive within {BODY_READ_TIMEOUT_S:.0f}s") from None
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"body exceeds {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if default is not None:
            return default
        raise ApiError(400, "INVALID_JSON", "request body must be a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "INVALID_JSON", "request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "INVALID_JSON", f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise ApiError(400, "INVALID_JSON", f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        # JSON may escape lone surrogates ("\udbea"): valid JSON, but not text that SQLite, logs or
        # responses can encode. Refuse it here rather than fail with a 500 deep inside a handler.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "INVALID_JSON", "request body contains invalid unicode (lone surrogates)") from None
    return data


async def read_model(request: web.Request, model: type[M], *, allow_empty: bool = False) -> M:
    data = await read_json(request, default={} if allow_empty else None)
    return parse_model(model, data)


def _depth(data: Any) -> int:
    """How deeply ``data`` nests (iteratively: a recursive walk is what the limit guards against)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_model(model: type[M], data: Any) -> M:
    """``data`` as ``model`` or a 400 naming the first failing fields (a RootModel may wrap a
    non-object body, e.g. an array)."""
    if not isinstance(data, dict) and not issubclass(model, RootModel):
        raise ApiError(400, "INVALID_REQUEST", "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(400, "INVALID_REQUEST", _format_validation(e)) from None


def path_id(request: web.Request, name: str) -> str:
    value = request.match_info.get(name, "")
    if not is_valid_id(value):
        raise ApiError(400, "INVALID_ID", f"{name} must match ^[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}$")
    return value


def bearer_token(request: web.Request) -> str | None:
    """The bearer token, or None when there is none; a token that is not printable ASCII (bytes
    that are not UTF-8 arrive as surrogates) is a 401, never an encoding error further down."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    token = token.strip()
    if not (token.isascii() and token.isprintable()):
        raise ApiError(401, "UNAUTHORIZED", "invalid bearer token")
    return token
