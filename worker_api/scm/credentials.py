"""Git credentials for agents, rig-scoped, asked for by git's credential helper (``gastown
git-credential``) at the moment git needs them (docs/forge.md §2).

An agent gets its rig's token, and only for its rig's repository: the URL git asks about must be
the rig's ``git_url`` (scheme, host and path; a trailing ``.git`` or ``/`` does not matter). The
token is never in the agent's env, argv, remote URL, registry entry or a log line (it is registered
with the log scrubber); nothing caches it, so a token rotated mid-task is picked up at the next git
call. Today the token is the one set with ``PUT .../rigs/{r}/scm``; a GitHub App installation token
minted per request is the production shape of the same answer (``expires_at`` then set).
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from gastown.core.http import ApiError, path_id
from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import store
from worker_api.appkeys import DB, TOWN
from worker_api.scm import tokens
from worker_api.scm.repos import parse_remote
from worker_api.db import Conn

log = get_logger("worker_api.scm.credentials")
USERNAME = "x-access-token"  # what GitHub expects beside an installation token


def repo_key(url: str) -> tuple[str, str, str] | None:
    """(scheme, host[:port], path) of an http(s) remote: what a credential is for."""
    remote = parse_remote(url)
    return remote if remote and remote[0] in ("http", "https") else None


def _credential_tx(conn: Conn, town_id: str, agent_id: str, url: str) -> dict[str, Any]:
    agent = store.get_agent(conn, town_id, agent_id)
    if agent is None:
        raise ApiError(404, "AGENT_NOT_FOUND", f"agent {agent_id} not found")
    rig = bx.get_rig(conn, town_id, agent["rig_id"]) if agent["rig_id"] else None
    if rig is None:
        raise ApiError(404, "NO_CREDENTIAL", f"agent {agent_id} belongs to no rig, so it has no git credential")
    wanted = repo_key(url)
    if wanted is None or wanted != repo_key(rig["git_url"]):
        raise ApiError(403, "CREDENTIAL_NOT_FOR_REPO", "the credential of this agent's rig is for the rig's repository only")
    token = tokens.get_rig_token(conn, town_id, rig["rig_id"])
    if not token:
        raise ApiError(404, "NO_CREDENTIAL", f"rig {rig['rig_id']} has no git credential (PUT .../rigs/{{r}}/scm)")
    return {"username": USERNAME, "password": token, "expires_at": None, "rig_id": rig["rig_id"]}


async def git_credential(request: web.Request) -> web.Response:
    town_id, agent_id = request[TOWN]["town_id"], path_id(request, "a")
    url = request.query.get("url", "")
    if not url or len(url) > 2048:
        raise ApiError(400, "INVALID_REQUEST", "query parameter url (the remote git asks about) is required")
    try:
        answer = await request.app[DB].run(_credential_tx, town_id, agent_id, url, write=False)
    except ApiError as e:
        log.warning("git_credential.refused", town=town_id, agent_id=agent_id, code=e.code)
        raise
    log.info("git_credential.issued", town=town_id, agent_id=agent_id, rig_id=answer["rig_id"])
    return web.json_response(answer)
