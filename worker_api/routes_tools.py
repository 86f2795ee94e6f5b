"""Agent tool routes (the plugin's gt_* tools) and bead/agent interventions.

The container token is town-scoped and the container is trusted within its town, so the path agent
is not re-authenticated; role rules that protect the merge flow are enforced here, e.g. only a
refinery hooked to an MR may request changes (docs/original-system.md bug 23: a refinery that lost its hook fell
back to ``gt_done`` and merged what it meant to reject).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from aiohttp import web
from pydantic import Field

from gastown.core.http import ApiError, path_id, read_model
from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import nudges, store
from worker_api.appkeys import DB, TOWN, now_ms
from worker_api.auth import require_sender
from worker_api.db import Conn, from_json, to_json
from worker_api.lifecycle import (
    acknowledge_escalation,
    create_escalation,
    send_back_for_rework,
    set_agent_idle,
    transition_bead,
    unhook_agent,
)
from worker_api.models import Body, Id, ShortText
from worker_api.reconciler.service import arm_new_work
from worker_api.routes_user import bead_view

log = get_logger("worker_api.tools")

Text = Annotated[str, Field(max_length=60000)]
MAX_CHECKPOINT_BYTES = 64 * 1024


class CloseBead(Body):
    agent_id: Optional[Id] = None


class Reassign(Body):
    agent_id: Optional[Id] = None


class RequestChanges(Body):
    feedback: Annotated[str, Field(min_length=1, max_length=60000)]
    files: Annotated[list[Annotated[str, Field(min_length=1, max_length=1000)]], Field(max_length=500)] = []


class Mail(Body):
    from_agent_id: Id
    to_agent_id: Id
    subject: ShortText
    body: Text


class Escalation(Body):
    agent_id: Id
    title: ShortText
    body: Text = ""
    priority: Literal["low", "medium", "high", "critical"] = "medium"


class Acknowledge(Body):
    agent_id: Optional[Id] = None
    note: Optional[ShortText] = None


class Checkpoint(Body):
    data: Any


def _town(request: web.Request) -> str:
    return str(request[TOWN]["town_id"])


def _agent(conn: Conn, town_id: str, agent_id: str) -> dict[str, Any]:
    agent = store.get_agent(conn, town_id, agent_id)
    if agent is None:
        raise ApiError(404, "AGENT_NOT_FOUND", f"agent {agent_id} not found")
    agent["checkpoint"] = from_json(agent.get("checkpoint"))
    agent["gupp_fired"] = from_json(agent.get("gupp_fired"), {})
    return agent


# ---------------------------------------------------------------- bead interventions


def _close_tx(conn: Conn, town_id: str, bead_id: str, agent_id: str | None, now: int) -> dict:
    bead = bx.require_bead(conn, town_id, bead_id)
    if agent_id is not None:
        agent = _agent(conn, town_id, agent_id)
        if agent["current_hook_bead_id"] == bead_id:
            unhook_agent(conn, town_id, agent_id, now)
            set_agent_idle(conn, town_id, agent_id, now)
    if bead["status"] != "closed":
        transition_bead(conn, town_id, bead_id, "closed", now, reason="closed", actor=agent_id or "user",
                        clear_assignee=False)
    return bead_view(conn, town_id, bead_id)


async def close_bead(request: web.Request) -> web.Response:
    body = await read_model(request, CloseBead, allow_empty=True)
    bead = await request.app[DB].run(_close_tx, _town(request), path_id(request, "b"), body.agent_id, now_ms(request))
    return web.json_response(bead)


def _reassign_tx(conn: Conn, town_id: str, bead_id: str, agent_id: str | None, now: int) -> dict:
    bead = bx.require_bead(conn, town_id, bead_id)
    if bead["type"] != "issue" or bead["status"] in bx.TERMINAL:
        raise ApiError(409, "INVALID_TRANSITION", f"only a live issue bead can be reassigned ({bead['status']})")
    if agent_id is not None:
        agent = _agent(conn, town_id, agent_id)
        if agent["role"] not in ("polecat", "triage"):
            raise ApiError(409, "AGENT_BUSY", f"a {agent['role']} cannot take issue beads")
        if agent["status"] not in ("idle", "dead") or agent["current_hook_bead_id"] not in (None, bead_id):
            raise ApiError(409, "AGENT_BUSY", f"agent {agent_id} is {agent['status']} and hooked to "
                                              f"{agent['current_hook_bead_id']}")
    transition_bead(conn, town_id, bead_id, "open", now, reason="reassigned", actor="user", clear_assignee=True)
    if agent_id is not None:
        bx.set_hook(conn, town_id, agent_id, bead_id, now)
        bx.update_fields(conn, town_id, bead_id, now, assignee_agent_id=agent_id)
        conn.execute("UPDATE agents SET status = 'idle' WHERE town_id = ? AND agent_id = ?", (town_id, agent_id))
    return bead_view(conn, town_id, bead_id)


async def reassign_bead(request: web.Request) -> web.Response:
    body = await read_model(request, Reassign, allow_empty=True)
    bead = await request.app[DB].run(_reassign_tx, _town(request), path_id(request, "b"), body.agent_id,
                                     now_ms(request))
    arm_new_work(request.app, _town(request))
    return web.json_response(bead)


def _reset_tx(conn: Conn, town_id: str, agent_id: str, now: int) -> dict:
    agent = _agent(conn, town_id, agent_id)
    hook = agent["current_hook_bead_id"]
    unhook_agent(conn, town_id, agent_id, now)
    conn.execute("UPDATE agents SET status = 'idle', dispatch_attempts = 0, stalled_at = NULL, gupp_fired = '{}'"
                 " WHERE town_id = ? AND agent_id = ?", (town_id, agent_id))
    if hook:
        # Give the bead back; the reconciler decides what happens next (redispatch, or R2/R3 for MRs).
        transition_bead(conn, town_id, hook, "open", now, reason="agent_reset", from_status="in_progress",
                        clear_assignee=True)
        # A reset is a fresh start for the bead too: no attempt cap or backoff left from the failed runs.
        conn.execute("UPDATE town_beads SET dispatch_attempts = 0, last_dispatch_attempt_at = NULL"
                     " WHERE town_id = ? AND bead_id = ?", (town_id, hook))
    return _agent(conn, town_id, agent_id)


async def reset_agent(request: web.Request) -> web.Response:
    agent = await request.app[DB].run(_reset_tx, _town(request), path_id(request, "a"), now_ms(request))
    arm_new_work(request.app, _town(request))
    return web.json_response(agent)


# ---------------------------------------------------------------- agent tools


def _prime_tx(conn: Conn, town_id: str, agent_id: str) -> dict:
    agent = _agent(conn, town_id, agent_id)
    hook = agent["current_hook_bead_id"]
    hooked = bead_view(conn, town_id, hook) if hook and bx.get_bead(conn, town_id, hook) else None
    rig = agent["rig_id"] if agent["role"] != "mayor" else None
    open_beads = [b for b in bx.list_beads(conn, town_id, status="open", rig_id=rig, limit=50)
                  if b["type"] in ("issue", "escalation")]
    return {"agent": agent, "hooked_bead": hooked, "mail": bx.peek_mail(conn, town_id, agent_id),
            "open_beads": open_beads}


async def prime(request: web.Request) -> web.Response:
    out = await request.app[DB].run(_prime_tx, _town(request), path_id(request, "a"), write=False)
    return web.json_response(out)


def _request_changes_tx(conn: Conn, town_id: str, agent_id: str, body: RequestChanges,
                        now: int) -> dict:
    agent = _agent(conn, town_id, agent_id)
    mr = bx.get_bead(conn, town_id, agent["current_hook_bead_id"]) if agent["current_hook_bead_id"] else None
    if agent["role"] != "refinery" or mr is None or mr["type"] != "merge_request" or mr["status"] != "in_progress":
        raise ApiError(403, "ROLE_FORBIDDEN", "only a refinery hooked to an in-progress merge request may request changes")
    unhook_agent(conn, town_id, agent_id, now)
    set_agent_idle(conn, town_id, agent_id, now)
    files = "\n".join(f"- {f}" for f in body.files)
    text = body.feedback + (f"\n\nFiles:\n{files}" if files else "")
    rework = send_back_for_rework(conn, town_id, mr, text, now, actor=agent_id, reason="changes_requested")
    return {"rework_bead_id": rework, "mr_status": "open" if rework else "failed"}


async def request_changes(request: web.Request) -> web.Response:
    body = await read_model(request, RequestChanges)
    out = await request.app[DB].run(_request_changes_tx, _town(request), path_id(request, "a"), body, now_ms(request))
    arm_new_work(request.app, _town(request))
    return web.json_response(out)


def _mail_tx(conn: Conn, town_id: str, body: Mail, now: int) -> dict:
    _agent(conn, town_id, body.to_agent_id)
    mail = bx.send_mail(conn, town_id, from_agent_id=body.from_agent_id, to_agent_id=body.to_agent_id,
                        subject=body.subject, body=body.body, now_ms=now)
    nudges.enqueue_nudge(conn, town_id, body.to_agent_id, now_ms=now, source="mail",
                         message=f"New mail from {body.from_agent_id}: {body.subject}. Read it with gt_mail_check.")
    return mail


async def send_mail(request: web.Request) -> web.Response:
    body = await read_model(request, Mail)
    require_sender(request, body.from_agent_id)
    mail = await request.app[DB].run(_mail_tx, _town(request), body, now_ms(request))
    return web.json_response(mail, status=201)


def _take_mail_tx(conn: Conn, town_id: str, agent_id: str, now: int) -> list[dict]:
    _agent(conn, town_id, agent_id)
    return bx.take_mail(conn, town_id, agent_id, now)


async def check_mail(request: web.Request) -> web.Response:
    mail = await request.app[DB].run(_take_mail_tx, _town(request), path_id(request, "a"), now_ms(request))
    return web.json_response({"mail": mail})


def _escalation_tx(conn: Conn, town_id: str, body: Escalation, now: int) -> str:
    agent = store.get_agent(conn, town_id, body.agent_id)
    return create_escalation(conn, town_id, title=body.title, body=body.body, now=now, agent_id=body.agent_id,
                             bead_id=agent["current_hook_bead_id"] if agent else None, severity=body.priority)


async def escalate(request: web.Request) -> web.Response:
    body = await read_model(request, Escalation)
    require_sender(request, body.agent_id)
    bead_id = await request.app[DB].run(_escalation_tx, _town(request), body, now_ms(request))
    log.info("escalation.created", town=_town(request), bead_id=bead_id, agent_id=body.agent_id)
    return web.json_response({"bead_id": bead_id}, status=201)


def _ack_tx(conn: Conn, town_id: str, bead_id: str, body: Acknowledge, now: int) -> dict:
    if body.agent_id is not None:
        _agent(conn, town_id, body.agent_id)
    acknowledge_escalation(conn, town_id, bead_id, now, actor=body.agent_id or "user", note=body.note)
    return bead_view(conn, town_id, bead_id)


async def acknowledge(request: web.Request) -> web.Response:
    """The mayor (or a user) has seen an escalation: it is not re-escalated (it stays open until closed)."""
    body = await read_model(request, Acknowledge, allow_empty=True)
    require_sender(request, body.agent_id)
    bead = await request.app[DB].run(_ack_tx, _town(request), path_id(request, "e"), body, now_ms(request))
    return web.json_response(bead)


def _checkpoint_tx(conn: Conn, town_id: str, agent_id: str, data: Any) -> None:
    _agent(conn, town_id, agent_id)
    text = to_json(data)
    if len(text.encode()) > MAX_CHECKPOINT_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"checkpoint exceeds {MAX_CHECKPOINT_BYTES} bytes")
    conn.execute("UPDATE agents SET checkpoint = ? WHERE town_id = ? AND agent_id = ?", (text, town_id, agent_id))


async def checkpoint(request: web.Request) -> web.Response:
    body = await read_model(request, Checkpoint)
    await request.app[DB].run(_checkpoint_tx, _town(request), path_id(request, "a"), body.data)
    return web.json_response({"saved": True})


