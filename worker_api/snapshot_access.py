"""Snapshot storage brokered by the worker: a town's container holds no object-store credentials.

With ``GASTOWN_SNAPSHOT_URL=s3://bucket/prefix`` (and the ``AWS_*`` keys) on the worker, a runtime
asks for one presigned request at a time (``POST …/agents/{a}/snapshot-access``): an operation on
exactly one key of that agent (``manifest.json`` or ``generations/<n>-<tag>.db``) or the listing of
its ``generations/``, valid for five minutes. Conditional headers (``If-None-Match``, ``If-Match``)
are part of the signature, so the manifest's fencing holds through the broker. A runtime of one
town can name no key of another (the key is built here from the path's town and agent), an agent's
own token is refused (``runtime`` policy), and nothing the container keeps outlives the URL.
"""
from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import Field

from gastown.core.http import ApiError, read_model
from gastown.core.jsonlog import get_logger
from worker_api.answers import Answer
from worker_api.models import Body

log = get_logger("worker_api.snapshot_access")

URL_TTL_S = 300
_OBJECT_KEY = re.compile(r"^(manifest\.json|generations/\d{10}-[A-Za-z0-9_-]{1,80}\.db)$")
_LIST_PREFIXES = ("", "generations/")
_OPS = {"get": ("get_object", "GET"), "put": ("put_object", "PUT"), "head": ("head_object", "HEAD"),
        "delete": ("delete_object", "DELETE"), "list": ("list_objects_v2", "GET")}


class AccessRequest(Body):
    op: Literal["get", "put", "head", "delete", "list"]
    key: str = Field(default="", max_length=200)   # relative to the agent's snapshot prefix
    if_none_match: bool = False
    if_match: Optional[str] = Field(default=None, min_length=1, max_length=200, pattern=r'^"?[A-Za-z0-9-]+"?$')
    continuation: Optional[str] = Field(default=None, min_length=1, max_length=1024)


class Access(Answer):
    url: str
    method: str
    headers: dict[str, str]
    expires_at: int


class StoreInfo(Answer):
    conditional_writes: bool


@dataclass
class SnapshotBroker:
    bucket: str
    prefix: str
    client: Any
    now: Any = time.time
    _conditional: Optional[bool] = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "SnapshotBroker | None":
        url = env.get("GASTOWN_SNAPSHOT_URL") or ""
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError("GASTOWN_SNAPSHOT_URL must be s3://bucket[/prefix] on the worker")
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3", endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=5,
                          read_timeout=15, retries={"max_attempts": 3, "mode": "standard"},
                          request_checksum_calculation="when_required", response_checksum_validation="when_required"))
        return cls(parts.netloc, parts.path.strip("/"), client)

    def base(self, town_id: str, agent_id: str) -> str:
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}towns/{town_id}/agents/{agent_id}/"

    def presign(self, town_id: str, agent_id: str, req: AccessRequest) -> dict[str, Any]:
        method_name, http_method = _OPS[req.op]
        base = self.base(town_id, agent_id)
        if req.op == "list":
            if req.key not in _LIST_PREFIXES:
                raise ApiError(400, "INVALID_KEY", "a listing covers the agent's prefix or its generations/")
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + req.key}
            if req.continuation:
                params["ContinuationToken"] = req.continuation
        else:
            if not _OBJECT_KEY.match(req.key):
                raise ApiError(400, "INVALID_KEY", "not a snapshot key (manifest.json or generations/<n>-<tag>.db)")
            params = {"Bucket": self.bucket, "Key": base + req.key}
        headers: dict[str, str] = {}
        if req.op == "put" and req.if_none_match and req.if_match:
            raise ApiError(400, "INVALID_REQUEST", "if_none_match and if_match are exclusive")
        if req.op == "put" and req.if_none_match:
            params["IfNoneMatch"], headers["If-None-Match"] = "*", "*"
        elif req.op == "put" and req.if_match:
            etag = req.if_match if req.if_match.startswith('"') else f'"{req.if_match}"'
            params["IfMatch"], headers["If-Match"] = etag, etag
        url = self.client.generate_presigned_url(method_name, Params=params, ExpiresIn=URL_TTL_S,
                                                  HttpMethod=http_method)
        return {"url": url, "method": http_method, "headers": headers, "expires_at": int(self.now()) + URL_TTL_S}

    def conditional_writes(self) -> bool:
        """Probed once: two If-None-Match PUTs of one key, the second must fail (some servers ignore it)."""
        if self._conditional is None:
            key = f"{self.prefix + '/' if self.prefix else ''}_probe/conditional-write-{secrets.token_hex(8)}"
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
                try:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
                    self._conditional = False
                except Exception as e:  # noqa: BLE001 - botocore's ClientError: 412 is the answer we want
                    self._conditional = "412" in str(e) or "PreconditionFailed" in str(e)
            finally:
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                except Exception:  # noqa: BLE001 - best effort
                    pass
            log.info("snapshot_broker.conditional_writes", supported=self._conditional)
        return bool(self._conditional)


BROKER = web.AppKey("worker_snapshot_broker", SnapshotBroker)


def _broker(request: web.Request) -> SnapshotBroker:
    broker = request.app.get(BROKER)
    if broker is None:
        raise ApiError(404, "SNAPSHOTS_NOT_BROKERED", "this worker has no snapshot store (GASTOWN_SNAPSHOT_URL)")
    return broker


async def access(request: web.Request) -> web.Response:
    broker = _broker(request)
    body = await read_model(request, AccessRequest)
    answer = broker.presign(request.match_info["t"], request.match_info["a"], body)
    return web.json_response(answer)


async def store_info(request: web.Request) -> web.Response:
    broker = _broker(request)
    try:
        conditional = await asyncio.wait_for(asyncio.to_thread(broker.conditional_writes), 30)
    except Exception as e:  # noqa: BLE001 - the store is down: the runtime retries, as with any outage
        log.warning("snapshot_broker.probe_failed", error=type(e).__name__)
        raise ApiError(503, "STORE_UNAVAILABLE", "the snapshot store did not answer") from None
    return web.json_response({"conditional_writes": conditional})
