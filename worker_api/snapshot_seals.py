"""Snapshot manifests the worker vouches for.

A manifest's sha256 is the container's own word: anyone who can write the bucket (another tenant's
container in a shared bucket, a leaked key) could replace an agent's ``kilo.db`` and its manifest
together. The runtime has each manifest sealed here (an HMAC over the town, the agent and the
manifest, with a key derived from the worker's secret, which no container holds) before it
publishes it, and has the seal checked before a restore trusts it: an edited manifest is refused.
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import Field

from gastown.core.http import ApiError, read_model
from gastown.core.jsonlog import get_logger
from worker_api.answers import Answer
from worker_api.appkeys import TOKENS, TOWN
from worker_api.models import Body

log = get_logger("worker_api.snapshot_seals")

PURPOSE = "snapshot-manifest"
MAX_MANIFEST_BYTES = 4096  # a manifest is seven short fields


class SealRequest(Body):
    manifest: dict[str, Any]


class VerifyRequest(Body):
    manifest: dict[str, Any]
    seal: str = Field(min_length=1, max_length=128)


class Sealed(Answer):
    seal: str


class Verified(Answer):
    valid: bool


def _subject(request: web.Request, manifest: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if len(json.dumps(manifest)) > MAX_MANIFEST_BYTES:
        raise ApiError(400, "INVALID_REQUEST", f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    return request[TOWN]["town_id"], {"agent_id": request.match_info["a"], "manifest": manifest}


async def seal(request: web.Request) -> web.Response:
    body = await read_model(request, SealRequest)
    town_id, subject = _subject(request, body.manifest)
    return web.json_response({"seal": request.app[TOKENS].seal(PURPOSE, town_id, subject)})


async def verify(request: web.Request) -> web.Response:
    body = await read_model(request, VerifyRequest)
    town_id, subject = _subject(request, body.manifest)
    valid = request.app[TOKENS].seal_matches(PURPOSE, town_id, subject, body.seal)
    if not valid:
        log.warning("snapshot.manifest_forged", town=town_id, agent_id=subject["agent_id"])
    return web.json_response({"valid": valid})


