"""Every worker route, declared once (``gastown.core.api``): the router, the auth policy the
middleware enforces and ``/openapi.json`` all come from :data:`ROUTES`.

Auth policies (``worker_api.auth``): ``public`` (none), ``admin`` (GASTOWN_ADMIN_TOKEN), ``town``
(admin token or a runtime or agent token of the path town), ``runtime`` (admin or the runtime's
token), ``self`` (like town, an agent token only for itself), ``refresh`` (like town, but the token may
be expired), ``user`` (admin or a user token; on a town, its owner), ``member`` (town or user),
``mayor`` (member, of the agents only the mayor): ``worker_api.auth``. A route without a declaration
does not exist; the middleware fails closed.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gastown.core.api import Document, Reply, Route, mount
from gastown.contract.container_api import SSE_EVENT
from gastown.core.ids import ID_PATTERN
from worker_api import answers as a
from worker_api import beads as bx
from worker_api import metrics, models as m
from worker_api import routes_container as rc
from worker_api import routes_settings as rs
from worker_api import settings as st
from worker_api import snapshot_access as snap
from worker_api import snapshot_seals as seals
from worker_api import routes_tools as tools
from worker_api import routes_towns as towns
from worker_api import routes_user as user
from worker_api.appkeys import AUTH_POLICIES
from worker_api.auth import ADMIN, MAYOR, MEMBER, PUBLIC, REFRESH, RUNTIME, SELF, TOWN_ACCESS, USER
from worker_api.front import answers as fa
from worker_api.front import archive, mayor, terminal
from worker_api.front import routes as front
from worker_api.scm import credentials
from worker_api.scm import routes as scm

OPENAPI_PATH = "/openapi.json"
T, A = "/api/towns/{t}", "/api/towns/{t}/agents/{a}"

ERRORS = {
    400: "Invalid request: bad JSON, a body failing validation, a bad path id or query value",
    401: "Missing or invalid bearer token (UNAUTHORIZED)",
    403: "The token may not use this route or town (FORBIDDEN, ROLE_FORBIDDEN)",
    404: "Unknown town, agent, bead, rig, convoy or nudge (*_NOT_FOUND)",
    409: "Conflict (e.g. *_EXISTS, INVALID_TRANSITION, DEPENDENCY_CYCLE, AGENT_BUSY, CONVOY_FINISHED)",
    413: "Body too large (PAYLOAD_TOO_LARGE)",
    503: "A service behind the worker did not answer (STORE_UNAVAILABLE: the snapshot store)",
}
Q_BEADS = (
    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(bx.BEAD_STATUSES)}},
    {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(bx.BEAD_TYPES)}},
    {"name": "rig_id", "in": "query", "schema": {"type": "string", "pattern": ID_PATTERN}},
)
Q_AFTER = ({"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**15 - 1}},)
Q_SIZE = tuple({"name": k, "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
               for k in ("cols", "rows"))
Q_STREAM = (*Q_AFTER, {"name": "agent_id", "in": "query", "schema": {"type": "string", "pattern": ID_PATTERN}},
            {"name": "follow", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]},
             "description": "false: send what is archived, then end the stream"})


def route(method: str, path: str, handler: Any, op_id: str, auth: str, status: int,
          answer: type[BaseModel] | Reply, *, body: type[BaseModel] | None = None, body_required: bool = True,
          errors: tuple[int, ...] = (), query: tuple[dict[str, Any], ...] = (), summary: str = "") -> Route:
    """A declaration whose error statuses follow from its shape: a token (401/403), path ids
    (400/404), a body (400/413), a query (400), plus the route's own (e.g. 409)."""
    codes = set(errors)
    if auth != PUBLIC:
        codes |= {401, 403}
    if "{" in path:
        codes |= {400, 404}
    if body is not None:
        codes |= {400, 413}
    if query:
        codes.add(400)
    reply = answer if isinstance(answer, Reply) else Reply("Success", answer)
    return Route(method.upper(), path, handler, op_id, {status: reply}, summary=summary, request=body,
                 request_required=body_required, errors=tuple(sorted(codes)), auth=auth, query=query)


DOCUMENT = Document(lambda: ROUTES, title="gastown worker API", bearer_description="GASTOWN_ADMIN_TOKEN or a container JWT",
                    description="Towns, agents, beads and the container-facing routes (docs/contract.md §6). Errors "
                    'are {"error": {"code", "message"}}. Auth per operation in x-gastown-auth: public (none), admin '
                    "(GASTOWN_ADMIN_TOKEN), runtime (the town's runtime token), town (also an agent token of the path town), "
                    "self (an agent token only for its own agent), mayor (of the agents only the mayor), refresh "
                    "(like town, but the container token may be expired).", error_descriptions=ERRORS)


ROUTES: tuple[Route, ...] = (
    route("get", "/alive", towns.alive, "alive", PUBLIC, 200, a.WorkerAlive),
    route("get", OPENAPI_PATH, DOCUMENT.handler, "openapi", PUBLIC, 200,
          Reply("OpenAPI document", schema={"type": "object"}), summary="This document"),
    route("get", "/metrics", metrics.metrics, "metrics", ADMIN, 200,
          Reply("Prometheus text exposition", schema={"type": "string"}, media="text/plain"),
          summary="Prometheus metrics of every town, read from the store at scrape time"),
    # towns
    route("post", "/api/towns", towns.create_town, "createTown", USER, 201, a.TownCreated, body=m.CreateTown,
          errors=(409,), summary="A user's town is its own (owner_user_id); the admin's has no owner"),
    route("get", "/api/towns", front.list_towns, "listTowns", USER, 200, fa.TownList,
          summary="The caller's towns (the admin sees every town)"),
    route("post", f"{T}/agent-events", archive.ingest, "ingestAgentEvents", RUNTIME, 200, fa.Ingested,
          body=archive.IngestBatch, summary="The container forwards its agents' events to the archive"),
    route("get", f"{A}/events", archive.agent_history, "agentEventHistory", MEMBER, 200, fa.ArchivedEvents,
          query=Q_AFTER, summary="An agent's archived events after ?after=N (they outlive its container)"),
    route("get", f"{T}/events/stream", archive.stream, "eventStream", USER, 200,
          Reply("Server-Sent Events: `id` the archive sequence, `event: agent_event`, data {agent_id, type, data, ts}",
                schema=SSE_EVENT, media="text/event-stream"), query=Q_STREAM,
          summary="Every agent event of the town, live; resumable with Last-Event-ID"),
    route("post", f"{T}/mayor/messages", mayor.post_message, "postMayorMessage", USER, 202, fa.MayorAccepted,
          body=mayor.MayorMessage, summary="A user turn for the mayor: starts it when it is not running, delivers in order"),
    route("get", f"{T}/mayor/messages", mayor.get_messages, "getMayorMessages", USER, 200, fa.Conversation,
          query=Q_AFTER, summary="The conversation with the mayor (text only), from the event archive"),
    route("get", f"{T}/mayor", mayor.get_mayor, "getMayor", USER, 200, fa.MayorView, errors=(404,)),
    route("get", f"{A}/pty", terminal.agent_pty, "agentTerminal", USER, 101,
          Reply("Switching to a WebSocket: the agent's terminal", schema={"type": "string"},
                media="application/octet-stream"), query=Q_SIZE,
          summary="A shell in the agent's workspace, relayed from the town's container; input and output as text "
          'frames, {"type": "resize", "cols", "rows"} resizes; the close code and reason say why it ended'),
    route("post", "/api/users", front.create_user, "createUser", ADMIN, 201, fa.UserCreated, body=front.CreateUser,
          summary="A user and its token (shown once; only its hash is kept)"),
    route("get", T, towns.get_town, "getTown", MEMBER, 200, a.Town),
    route("post", f"{T}/agents", towns.create_agent, "createAgent", ADMIN, 201, a.Agent, body=m.CreateAgent,
          errors=(409,)),
    route("get", f"{T}/agents", towns.list_agents, "listAgents", MEMBER, 200, a.AgentList),
    route("get", f"{T}/container-registry", towns.get_registry, "getRegistry", RUNTIME, 200, a.RegistryAnswer),
    route("post", f"{T}/container-registry", towns.put_registry, "putRegistry", RUNTIME, 200, a.RegistryStored,
          body=m.Registry,
          summary="Replace the registry; secret-looking fields are dropped (their paths in `dropped`)"),
    route("get", f"{T}/prewarm-context", towns.prewarm_context, "prewarmContext", RUNTIME, 200,
          a.PrewarmContext),
    route("post", f"{T}/refresh-container-token", towns.refresh_container_token, "refreshContainerToken", REFRESH,
          200, a.NewToken, summary="A fresh 8 h token of the same scope and chain; the caller's may be expired "
          "(up to 7 days), never past the chain's maximum lifetime. The admin gets a new runtime chain"),
    route("post", f"{A}/token", towns.agent_token, "agentToken", RUNTIME, 200, a.NewToken,
          summary="The runtime asks for a token acting only as this agent (its plugin and git credential helper)"),
    route("post", f"{A}/snapshot-access", snap.access, "snapshotAccess", RUNTIME, 200, snap.Access,
          body=snap.AccessRequest, summary="One presigned request on one of the agent's snapshot keys (5 min): the "
          "container holds no store credentials"),
    route("get", f"{T}/snapshot-store", snap.store_info, "snapshotStore", RUNTIME, 200, snap.StoreInfo, errors=(503,),
          summary="Whether the brokered store honours conditional writes (fencing)"),
    route("post", f"{A}/snapshot-seal", seals.seal, "sealSnapshotManifest", RUNTIME, 200, seals.Sealed,
          body=seals.SealRequest, summary="The worker's HMAC over the agent's snapshot manifest (published with it)"),
    route("post", f"{A}/snapshot-verify", seals.verify, "verifySnapshotManifest", RUNTIME, 200, seals.Verified,
          body=seals.VerifyRequest, summary="Whether a manifest read back from the store carries the worker's seal"),
    route("post", f"{T}/rotate-tokens", towns.rotate_tokens, "rotateTokens", USER, 200, a.Rotated,
          summary="Revoke every token of the town; a new runtime token is pushed to the town's container"),
    # container-facing
    route("post", f"{A}/heartbeat", rc.heartbeat, "heartbeat", RUNTIME, 200, a.HeartbeatAck, body=m.Heartbeat,
          errors=(409,)),
    route("post", f"{A}/completed", rc.completed, "completed", RUNTIME, 200, a.CompletedAck, body=m.Completed),
    route("post", f"{A}/waiting", rc.waiting, "waiting", RUNTIME, 200, a.WaitingAck, body=m.Waiting),
    route("post", f"{A}/done", rc.done, "done", SELF, 200, a.DoneAck, body=m.Done),
    route("post", f"{A}/eviction-context", rc.eviction_context, "evictionContext", RUNTIME, 200, a.Recorded,
          body=m.EvictionContext),
    route("get", f"{A}/pending-nudges", rc.pending_nudges, "pendingNudges", RUNTIME, 200, a.PendingNudges),
    route("post", f"{A}/nudge-delivered", rc.nudge_delivered, "nudgeDelivered", RUNTIME, 200, a.Marked,
          body=m.NudgeDelivered),
    route("post", f"{A}/nudges", rc.enqueue_nudge, "enqueueNudge", TOWN_ACCESS, 201, a.Nudge, body=m.EnqueueNudge,
          errors=(409,)),
    route("post", f"{T}/container-events", rc.container_events, "containerEvents", RUNTIME, 202, a.Accepted,
          body=m.ContainerEvent),
    route("post", f"{T}/container-eviction", rc.container_eviction, "containerEviction", RUNTIME, 200,
          a.DrainNonce),
    route("get", f"{T}/drain-state", rc.get_drain_state, "drainState", RUNTIME, 200, fa.DrainState,
          summary="A booting container learns of an older one's drain and the nonce to acknowledge"),
    route("post", f"{T}/container-ready", rc.container_ready, "containerReady", RUNTIME, 200, a.Cleared,
          body=m.ContainerReady),
    # rigs, beads, convoys
    route("post", f"{T}/rigs", user.create_rig, "createRig", MAYOR, 201, a.Rig, body=user.CreateRig,
          errors=(409,)),
    route("get", f"{T}/rigs", user.list_rigs, "listRigs", MEMBER, 200, a.RigList),
    route("patch", f"{T}/rigs/{{r}}", rs.patch_rig, "patchRig", USER, 200, a.Rig, body=st.RigPatch,
          body_required=False, summary="The rig's overrides of the town settings (null: back to the town's value)"),
    route("get", f"{T}/settings", rs.get_settings, "getSettings", USER, 200, fa.TownSettings),
    route("patch", f"{T}/settings", rs.patch_settings, "patchSettings", USER, 200, fa.TownSettings,
          body=st.SettingsPatch, body_required=False,
          summary="Absent: unchanged; null: default; env_vars merge by key (null removes). A reserved env key is a 400"),
    route("put", f"{T}/rigs/{{r}}/scm", scm.put_scm, "putRigScm", ADMIN, 200, a.ScmView, body=scm.ScmConfig,
          summary="Set (or with null remove) the rig's GitHub token and auto-merge delay; absent fields unchanged"),
    route("get", f"{T}/rigs/{{r}}/scm", scm.get_scm, "getRigScm", MEMBER, 200, a.ScmView,
          summary="Whether a token is configured (never the token) and the auto-merge delay"),
    route("post", f"{T}/beads", user.create_bead, "createBead", MAYOR, 201, a.Bead, body=user.CreateBead),
    route("get", f"{T}/beads", user.list_beads, "listBeads", MEMBER, 200, a.BeadList, query=Q_BEADS),
    route("get", f"{T}/beads/{{b}}", user.get_bead, "getBead", MEMBER, 200, a.BeadView),
    route("patch", f"{T}/beads/{{b}}", user.patch_bead, "patchBead", MAYOR, 200, a.BeadView,
          body=user.PatchBead, errors=(409,)),
    route("delete", f"{T}/beads/{{b}}", user.delete_bead, "deleteBead", MAYOR, 200, a.Deleted),
    route("post", f"{T}/sling", user.sling, "sling", MAYOR, 201, a.Slung, body=user.Sling),
    route("post", f"{T}/convoys", user.create_convoy, "createConvoy", MAYOR, 201, a.ConvoyCreated,
          body=user.CreateConvoy, errors=(409,)),
    route("get", f"{T}/convoys", user.list_convoys, "listConvoys", MEMBER, 200, a.ConvoyList),
    route("get", f"{T}/convoys/{{c}}", user.get_convoy, "getConvoy", MEMBER, 200, a.Convoy),
    route("post", f"{T}/convoys/{{c}}/start", user.start_convoy, "startConvoy", MAYOR, 200, a.Convoy,
          errors=(409,)),
    route("post", f"{T}/convoys/{{c}}/close", user.close_convoy, "closeConvoy", MAYOR, 200, a.Convoy),
    route("get", f"{T}/status", user.town_status, "townStatus", MEMBER, 200, a.TownStatus),
    route("get", f"{T}/invariants", user.invariants, "invariants", MEMBER, 200, a.Violations),
    # agent tools and interventions
    route("post", f"{T}/beads/{{b}}/close", tools.close_bead, "closeBead", MEMBER, 200, a.BeadView,
          body=tools.CloseBead, body_required=False),
    route("post", f"{T}/beads/{{b}}/reassign", tools.reassign_bead, "reassignBead", MAYOR, 200, a.BeadView,
          body=tools.Reassign, body_required=False, errors=(409,)),
    route("get", f"{A}/git-credential", credentials.git_credential, "gitCredential", SELF, 200, a.GitCredential,
          query=({"name": "url", "in": "query", "required": True,
                  "schema": {"type": "string", "maxLength": 2048, "pattern": "^https?://[!-~]+$"}},),
          errors=(403,), summary="The agent's rig credential for the rig's repository (git's credential helper asks)"),
    route("post", f"{A}/reset", tools.reset_agent, "resetAgent", MAYOR, 200, a.Agent),
    route("get", f"{A}/prime", tools.prime, "prime", SELF, 200, a.Prime),
    route("post", f"{A}/request-changes", tools.request_changes, "requestChanges", SELF, 200,
          a.ChangesRequested, body=tools.RequestChanges),
    route("post", f"{T}/mail", tools.send_mail, "sendMail", TOWN_ACCESS, 201, a.MailMessage, body=tools.Mail),
    route("get", f"{A}/mail", tools.check_mail, "checkMail", SELF, 200, a.MailList),
    route("post", f"{T}/escalations", tools.escalate, "escalate", TOWN_ACCESS, 201, a.Escalated,
          body=tools.Escalation),
    route("post", f"{T}/escalations/{{e}}/acknowledge", tools.acknowledge, "acknowledgeEscalation", MAYOR, 200,
          a.BeadView, body=tools.Acknowledge, body_required=False, errors=(409,),
          summary="Seen and being handled: the escalation is not re-escalated (close it when resolved)"),
    route("post", f"{A}/checkpoint", tools.checkpoint, "checkpoint", SELF, 200, a.Saved,
          body=tools.Checkpoint),
)


def install(app: web.Application) -> None:
    """Mount :data:`ROUTES` and hand their policies to the auth middleware."""
    app[AUTH_POLICIES] = {r: decl.auth for r, decl in mount(app, ROUTES).items()}
    scm.install(app)
    archive.install(app)
    terminal.install(app)


def build_openapi() -> dict[str, Any]:
    """A fresh copy of the worker API's OpenAPI document, generated from :data:`ROUTES`."""
    return DOCUMENT.build()
