"""User-facing routes that drive a town: rigs, beads, sling, convoys, agent reset, status, invariants.

Auth: the admin token or the town's container token (the mayor's tools call these from the
container). Handlers validate, run one transaction, and *arm* the town's reconciler when they
created work, so a sling is dispatched at the next tick instead of after an idle interval.
Status changes go through ``worker_api.lifecycle`` so a route can never skip a consequence the
reconciler relies on (unhooking agents, failing moot MRs, finishing convoys).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from aiohttp import web
from pydantic import Field

from gastown.contract.git import GitRef, GitUrl
from gastown.core.http import ApiError, path_id, read_model
from gastown.core.ids import is_valid_id
from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import drain, events, leases
from worker_api.appkeys import DB, PRINCIPAL, TOWN, now_ms
from worker_api.db import Conn, to_json
from worker_api.lifecycle import finish_convoy, transition_bead
from worker_api.models import Body, Id, ShortText
from worker_api.reconciler.invariants import check_invariants
from worker_api.reconciler.prompts import feature_branch
from worker_api.reconciler.service import RECONCILER, arm_new_work

log = get_logger("worker_api.user")

LongText = Annotated[str, Field(max_length=60000)]
Priority = Literal["low", "medium", "high", "critical"]
MAX_CONVOY_BEADS = 200


class CreateRig(Body):
    rig_id: Optional[Id] = None
    name: ShortText
    git_url: GitUrl
    default_branch: GitRef = "main"
    max_dispatch_attempts: Optional[Annotated[int, Field(ge=1, le=50)]] = None


class CreateBead(Body):
    rig_id: Optional[Id] = None
    title: ShortText
    body: LongText = ""
    type: Literal["issue", "message", "escalation"] = "issue"
    priority: Priority = "medium"
    labels: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=50)] = []
    metadata: dict[str, Any] = {}


class PatchBead(Body):
    title: Optional[ShortText] = None
    body: Optional[LongText] = None
    status: Optional[Literal["open", "closed", "failed"]] = None
    priority: Optional[Priority] = None


class Sling(Body):
    rig_id: Id
    title: ShortText
    body: LongText = ""
    priority: Priority = "medium"
    metadata: dict[str, Any] = {}


class ConvoyBead(Body):
    title: ShortText
    body: LongText = ""
    depends_on: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_CONVOY_BEADS)] = []


class CreateConvoy(Body):
    rig_id: Id
    title: ShortText
    beads: Annotated[list[ConvoyBead], Field(min_length=1, max_length=MAX_CONVOY_BEADS)]
    merge_mode: Literal["review-then-land", "review-and-merge"] = "review-and-merge"
    staged: bool = False


def _town(request: web.Request) -> str:
    return str(request[TOWN]["town_id"])


def _require_rig(conn: Conn, town_id: str, rig_id: str) -> dict[str, Any]:
    rig = bx.get_rig(conn, town_id, rig_id)
    if rig is None:
        raise bx.not_found("rig", rig_id)
    return rig


def _check_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    if len(to_json(meta)) > 16000:
        raise ApiError(400, "INVALID_REQUEST", "metadata is too large (16 kB max)")
    reserved = {"convoy_id", "source_bead_id", "landing", "branch", "mr_bead_id"} & meta.keys()
    if reserved:
        raise ApiError(400, "INVALID_REQUEST", f"metadata keys reserved for the system: {sorted(reserved)}")
    return meta


# ---------------------------------------------------------------- rigs


async def create_rig(request: web.Request) -> web.Response:
    body = await read_model(request, CreateRig)
    config = {"max_dispatch_attempts": body.max_dispatch_attempts} if body.max_dispatch_attempts else {}
    rig = await request.app[DB].run(bx.create_rig, _town(request), rig_id=body.rig_id or bx.new_id("rig"),
                                    name=body.name, git_url=body.git_url, default_branch=body.default_branch,
                                    now_ms=now_ms(request), config=config)
    log.info("rig.created", town=_town(request), rig_id=rig["rig_id"])
    return web.json_response(rig, status=201)


async def list_rigs(request: web.Request) -> web.Response:
    rigs = await request.app[DB].run(bx.list_rigs, _town(request), write=False)
    if request[PRINCIPAL].kind == "container":
        for rig in rigs:  # a rig's env vars are the owner's (secrets, often): an agent gets its own at start only
            rig["config"].pop("env_vars", None)
    return web.json_response({"rigs": rigs})


# ---------------------------------------------------------------- beads


def _create_bead_tx(conn: Conn, town_id: str, body: CreateBead, now: int) -> dict[str, Any]:
    if body.rig_id is not None:
        _require_rig(conn, town_id, body.rig_id)
    elif body.type == "issue":
        raise ApiError(400, "INVALID_REQUEST", "rig_id: required for issue beads")
    bead = bx.create_bead(conn, town_id, type=body.type, title=body.title, body=body.body, rig_id=body.rig_id,
                          priority=body.priority, labels=body.labels, metadata=_check_metadata(body.metadata),
                          created_by="user", now_ms=now)
    events.insert_event(conn, town_id, "bead_created", bead_id=bead["bead_id"], now_ms=now)
    return bead


async def create_bead(request: web.Request) -> web.Response:
    body = await read_model(request, CreateBead)
    bead = await request.app[DB].run(_create_bead_tx, _town(request), body, now_ms(request))
    arm_new_work(request.app, _town(request))
    return web.json_response(bead, status=201)


async def list_beads(request: web.Request) -> web.Response:
    q = request.query
    status, type_, rig_id = q.get("status") or None, q.get("type") or None, q.get("rig_id") or None
    if status is not None and status not in bx.BEAD_STATUSES:
        raise ApiError(400, "INVALID_REQUEST", f"status must be one of {', '.join(bx.BEAD_STATUSES)}")
    if type_ is not None and type_ not in bx.BEAD_TYPES:
        raise ApiError(400, "INVALID_REQUEST", f"type must be one of {', '.join(bx.BEAD_TYPES)}")
    if rig_id is not None and not is_valid_id(rig_id):
        raise ApiError(400, "INVALID_ID", "rig_id is not a valid id")
    beads = await request.app[DB].run(bx.list_beads, _town(request), status=status, type=type_, rig_id=rig_id,
                                      write=False)
    return web.json_response({"beads": beads})


def bead_view(conn: Conn, town_id: str, bead_id: str) -> dict[str, Any]:
    bead = bx.require_bead(conn, town_id, bead_id)
    bead["blocked_by"] = bx.dependencies(conn, town_id, bead_id, "blocks")
    bead["hooked_agents"] = bx.hooked_agents(conn, town_id, bead_id)
    if bead["type"] == "merge_request":
        bead["review"] = bx.get_review(conn, town_id, bead_id)
        bead["review"] and bead["review"].pop("town_id", None)
    return bead


async def get_bead(request: web.Request) -> web.Response:
    bead = await request.app[DB].run(bead_view, _town(request), path_id(request, "b"), write=False)
    return web.json_response(bead)


def _patch_tx(conn: Conn, town_id: str, bead_id: str, body: PatchBead, now: int) -> dict[str, Any]:
    bead = bx.require_bead(conn, town_id, bead_id)
    fields = {k: v for k, v in (("title", body.title), ("body", body.body), ("priority", body.priority)) if v is not None}
    bx.update_fields(conn, town_id, bead_id, now, **fields)
    if body.status is not None and body.status != bead["status"]:
        if bead["type"] in ("merge_request", "convoy") and body.status == "open":
            raise ApiError(409, "INVALID_TRANSITION", f"a {bead['type']} bead cannot be reopened")
        transition_bead(conn, town_id, bead_id, body.status, now, reason="user_update", actor="user",
                        clear_assignee=True)
    return bead_view(conn, town_id, bead_id)


async def patch_bead(request: web.Request) -> web.Response:
    body = await read_model(request, PatchBead)
    bead = await request.app[DB].run(_patch_tx, _town(request), path_id(request, "b"), body, now_ms(request))
    arm_new_work(request.app, _town(request))
    return web.json_response(bead)


async def delete_bead(request: web.Request) -> web.Response:
    bead_id = path_id(request, "b")
    if not await request.app[DB].run(bx.delete_bead, _town(request), bead_id):
        raise bx.not_found("bead", bead_id)
    log.info("bead.deleted", town=_town(request), bead_id=bead_id)
    return web.json_response({"deleted": True})


# ---------------------------------------------------------------- sling and convoys


def _sling_tx(conn: Conn, town_id: str, body: Sling, now: int) -> dict[str, Any]:
    _require_rig(conn, town_id, body.rig_id)
    bead = bx.create_bead(conn, town_id, type="issue", title=body.title, body=body.body, rig_id=body.rig_id,
                          priority=body.priority, metadata=_check_metadata(body.metadata), created_by="sling",
                          now_ms=now)
    events.insert_event(conn, town_id, "bead_created", bead_id=bead["bead_id"], now_ms=now)
    return bead


async def sling(request: web.Request) -> web.Response:
    body = await read_model(request, Sling)
    bead = await request.app[DB].run(_sling_tx, _town(request), body, now_ms(request))
    arm_new_work(request.app, _town(request))
    log.info("sling", town=_town(request), bead_id=bead["bead_id"], rig_id=body.rig_id)
    return web.json_response({"bead_id": bead["bead_id"], "status": bead["status"]}, status=201)


def _create_convoy_tx(conn: Conn, town_id: str, body: CreateConvoy, now: int) -> dict[str, Any]:
    _require_rig(conn, town_id, body.rig_id)
    n = len(body.beads)
    edges = []
    for i, b in enumerate(body.beads):
        for j in b.depends_on:
            if j >= n or j == i:
                raise ApiError(400, "INVALID_REQUEST", f"beads[{i}].depends_on: {j} is not another bead's index")
            edges.append((i, j))
    if bx.find_cycle(edges, range(n)):
        raise ApiError(409, "DEPENDENCY_CYCLE", "depends_on forms a cycle")
    convoy = bx.create_bead(conn, town_id, type="convoy", title=body.title, rig_id=body.rig_id, now_ms=now,
                            status="open" if body.staged else "in_progress", labels=["gt:convoy"], created_by="user")
    cid = convoy["bead_id"]
    feature = feature_branch(body.title, cid) if body.merge_mode == "review-then-land" else None
    conn.execute("INSERT INTO convoy_metadata (town_id, bead_id, total_beads, feature_branch, merge_mode, staged)"
                 " VALUES (?, ?, ?, ?, ?, ?)", (town_id, cid, n, feature, body.merge_mode, int(body.staged)))
    ids = []
    for b in body.beads:
        bead = bx.create_bead(conn, town_id, type="issue", title=b.title, body=b.body, rig_id=body.rig_id,
                              metadata={"convoy_id": cid}, parent_bead_id=cid, created_by="convoy", now_ms=now)
        bx.add_dependency(conn, town_id, bead["bead_id"], cid, "tracks")
        ids.append(bead["bead_id"])
    for i, j in edges:
        bx.add_dependency(conn, town_id, ids[i], ids[j], "blocks")
    return {"convoy_id": cid, "bead_ids": ids}


async def create_convoy(request: web.Request) -> web.Response:
    body = await read_model(request, CreateConvoy)
    out = await request.app[DB].run(_create_convoy_tx, _town(request), body, now_ms(request))
    if not body.staged:
        arm_new_work(request.app, _town(request))
    log.info("convoy.created", town=_town(request), convoy_id=out["convoy_id"], beads=len(out["bead_ids"]))
    return web.json_response(out, status=201)


def convoy_view(conn: Conn, town_id: str, convoy_id: str, *, with_beads: bool = True) -> dict[str, Any]:
    convoy = bx.require_bead(conn, town_id, convoy_id)
    if convoy["type"] != "convoy":
        raise bx.not_found("convoy", convoy_id)
    meta = bx.get_convoy_meta(conn, town_id, convoy_id) or {}
    tracked = [bx.get_bead(conn, town_id, b) for b in bx.dependents(conn, town_id, convoy_id, "tracks")]
    beads = [b for b in tracked if b is not None and b["type"] == "issue"]
    closed = sum(1 for b in beads if b["status"] == "closed")
    failed = sum(1 for b in beads if b["status"] == "failed")
    convoy.update(merge_mode=meta.get("merge_mode"), staged=bool(meta.get("staged")),
                  feature_branch=meta.get("feature_branch"), landing_attempts=meta.get("landing_attempts", 0),
                  landed_at=meta.get("landed_at"),
                  progress={"total": len(beads), "closed": closed, "failed": failed,
                            "open": len(beads) - closed - failed})
    if with_beads:
        convoy["beads"] = [{k: b[k] for k in ("bead_id", "title", "status", "assignee_agent_id", "dispatch_attempts")}
                           | {"blocked_by": bx.dependencies(conn, town_id, b["bead_id"], "blocks")} for b in beads]
    return convoy


def _list_convoys_tx(conn: Conn, town_id: str) -> list[dict[str, Any]]:
    return [convoy_view(conn, town_id, c["bead_id"], with_beads=False)
            for c in bx.list_beads(conn, town_id, type="convoy", limit=1000)]


async def list_convoys(request: web.Request) -> web.Response:
    convoys = await request.app[DB].run(_list_convoys_tx, _town(request), write=False)
    return web.json_response({"convoys": convoys})


async def get_convoy(request: web.Request) -> web.Response:
    convoy = await request.app[DB].run(convoy_view, _town(request), path_id(request, "c"), write=False)
    return web.json_response(convoy)


def _start_convoy_tx(conn: Conn, town_id: str, convoy_id: str, now: int) -> dict[str, Any]:
    convoy = convoy_view(conn, town_id, convoy_id, with_beads=False)
    if convoy["status"] in bx.TERMINAL:
        raise ApiError(409, "CONVOY_FINISHED", f"convoy {convoy_id} is {convoy['status']}")
    if convoy["staged"]:
        events.insert_event(conn, town_id, "convoy_started", bead_id=convoy_id, now_ms=now)
        bx.update_convoy_meta(conn, town_id, convoy_id, staged=0)  # visible at once; the event does the rest
        if convoy["status"] == "open":
            bx.set_status(conn, town_id, convoy_id, "in_progress", now, reason="started", actor="user")
    return convoy_view(conn, town_id, convoy_id)


async def start_convoy(request: web.Request) -> web.Response:
    convoy = await request.app[DB].run(_start_convoy_tx, _town(request), path_id(request, "c"), now_ms(request))
    arm_new_work(request.app, _town(request))
    return web.json_response(convoy)


def _close_convoy_tx(conn: Conn, town_id: str, convoy_id: str, now: int) -> dict[str, Any]:
    convoy_view(conn, town_id, convoy_id, with_beads=False)
    finish_convoy(conn, town_id, convoy_id, "closed", now, reason="closed_by_user")
    return convoy_view(conn, town_id, convoy_id)


async def close_convoy(request: web.Request) -> web.Response:
    convoy = await request.app[DB].run(_close_convoy_tx, _town(request), path_id(request, "c"), now_ms(request))
    return web.json_response(convoy)


# ---------------------------------------------------------------- status and invariants


def _status_tx(conn: Conn, town_id: str, now: int) -> dict[str, Any]:
    def grouped(sql: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in conn.execute(sql, (town_id,))}

    return {
        "town_id": town_id,
        "draining": drain.is_draining(conn, town_id, now, clear_expired=False),  # a read-only transaction
        "beads": {"by_status": grouped("SELECT status, COUNT(*) FROM town_beads WHERE town_id = ? GROUP BY 1"),
                  "by_type": grouped("SELECT type, COUNT(*) FROM town_beads WHERE town_id = ? GROUP BY 1")},
        "agents": {"by_status": grouped("SELECT status, COUNT(*) FROM agents WHERE town_id = ? GROUP BY 1"),
                   "by_role": grouped("SELECT role, COUNT(*) FROM agents WHERE town_id = ? GROUP BY 1")},
        "convoys": {"by_status": grouped("SELECT status, COUNT(*) FROM town_beads WHERE town_id = ? AND type = 'convoy'"
                                         " GROUP BY 1")},
        "pending_events": conn.execute("SELECT COUNT(*) FROM town_events WHERE town_id = ? AND processed_at IS NULL",
                                       (town_id,)).fetchone()[0],
    }


async def town_status(request: web.Request) -> web.Response:
    status = await request.app[DB].run(_status_tx, _town(request), now_ms(request), write=False)
    service = request.app.get(RECONCILER)
    loop = service.loops.get(_town(request)) if service is not None else None
    owner = await request.app[DB].run(leases.owner_tx, _town(request), now_ms(request), write=False)
    # ``replica``: which worker replica reconciles the town now; ``ticks``: counted by that replica
    # (0 when another one answers the request).
    status["reconciler"] = {"running": loop is not None or owner is not None, "ticks": loop.ticks if loop else 0,
                            "replica": owner}
    return web.json_response(status)


async def invariants(request: web.Request) -> web.Response:
    violations = await request.app[DB].run(check_invariants, _town(request), write=False)
    return web.json_response({"violations": violations})

