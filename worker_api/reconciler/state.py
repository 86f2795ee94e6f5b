"""The snapshot ``reconcile()`` reads: plain dataclasses loaded in one read.

Why a snapshot of *live* work only: a town accumulates closed beads for ever, but the rules only act
on open/in_progress/in_review beads, agents, and counts. Loading live rows plus aggregated counts
keeps a tick proportional to the active work, not to the history (see ``bench/reconciler_bench.py``).
Anything not in ``beads`` is therefore "missing or terminal" to the rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker_api import drain, store
from worker_api.db import Conn, Row, from_json
from worker_api.reconciler.constants import (
    CIRCUIT_BREAKER_WINDOW_MS,
    MAX_ACTIVE_POLECATS,
    MAX_DISPATCH_ATTEMPTS,
)


@dataclass
class Bead:
    bead_id: str
    type: str
    status: str
    title: str
    rig_id: str | None
    assignee: str | None
    priority: str
    labels: tuple[str, ...]
    metadata: dict[str, Any]
    dispatch_attempts: int
    last_dispatch_attempt_at: int | None
    created_at: int
    updated_at: int


@dataclass
class Agent:
    agent_id: str
    role: str
    name: str
    rig_id: str | None
    status: str
    hook: str | None
    dispatch_attempts: int
    last_activity_at: int | None
    last_event_at: int | None
    active_tools: list[str]
    stalled_at: int | None
    working_since: int | None
    created_at: int
    gupp_fired: dict[str, int] = field(default_factory=dict)


@dataclass
class Review:
    bead_id: str
    branch: str | None
    target_branch: str
    pr_url: str | None
    retry_count: int
    last_poll_at: int | None


@dataclass
class Convoy:
    bead_id: str
    status: str
    merge_mode: str
    staged: bool
    feature_branch: str | None
    total: int
    closed: int
    failed: int
    live: int
    ready_to_land: bool
    landing_attempts: int
    last_landing_attempt_at: int | None
    landing_live: bool       # a landing MR is open/in_progress
    landing_awaiting: bool   # the last landing MR failed while awaiting approval: do not respawn
    stored: tuple[int, int, int] = (0, 0, 0)  # (total, closed, failed) last written to convoy_metadata


@dataclass
class Escalation:
    bead_id: str
    title: str
    severity: str
    rounds: int                  # re-escalations so far
    last_escalated_at: int
    acknowledged: bool
    subject_status: str | None   # the status of the bead it is about (None: none, or deleted)
    told_at: int | None = None   # when the mayor was last given its notice (None: not yet, or never queued)


@dataclass
class Rig:
    rig_id: str
    default_branch: str
    max_attempts: int


@dataclass
class TownState:
    town_id: str
    now: int
    draining: bool
    rigs: dict[str, Rig]
    agents: dict[str, Agent]
    beads: dict[str, Bead]                       # live beads only (open / in_progress / in_review)
    blockers: dict[str, list[tuple[str, str]]]   # live bead -> [(blocker id, blocker status)] (blocks edges)
    mrs_of_source: dict[str, list[tuple[str, str]]]  # in_review bead -> [(mr id, mr status)]
    reviews: dict[str, Review]                   # live MR beads
    convoys: dict[str, Convoy]                   # live convoys
    failing_beads: int                           # circuit breaker count
    max_polecats: int = MAX_ACTIVE_POLECATS
    escalations: list[Escalation] = field(default_factory=list)  # open escalation beads

    def max_attempts(self, rig_id: str | None) -> int:
        rig = self.rigs.get(rig_id or "")
        return rig.max_attempts if rig else MAX_DISPATCH_ATTEMPTS

    def breaker_open(self) -> bool:
        from worker_api.reconciler.constants import CIRCUIT_BREAKER_BEADS

        return self.failing_beads >= CIRCUIT_BREAKER_BEADS


# What the rules read (not the body, which may be long): a tick loads every live bead.
BEAD_COLUMNS = ("bead_id, type, status, title, rig_id, assignee_agent_id, priority, labels, metadata,"
                " dispatch_attempts, last_dispatch_attempt_at, created_at, updated_at")


def _bead(r: Row) -> Bead:
    return Bead(r["bead_id"], r["type"], r["status"], r["title"], r["rig_id"], r["assignee_agent_id"],
                r["priority"], tuple(from_json(r["labels"], [])), from_json(r["metadata"], {}),
                r["dispatch_attempts"], r["last_dispatch_attempt_at"], r["created_at"], r["updated_at"])


def _agent(r: Row) -> Agent:
    return Agent(r["agent_id"], r["role"], r["name"], r["rig_id"], r["status"], r["current_hook_bead_id"],
                 r["dispatch_attempts"], r["last_activity_at"], r["last_event_at"],
                 from_json(r["active_tools"], []), r["stalled_at"], r["working_since"], r["created_at"],
                 from_json(r["gupp_fired"], {}))


def load_state(conn: Conn, town_id: str, now: int) -> TownState:
    """Read everything the rules need for one tick (inside the tick's transaction)."""
    q = conn.execute
    rigs = {}
    for r in q("SELECT rig_id, default_branch, config FROM rigs WHERE town_id = ?", (town_id,)):
        cfg = from_json(r["config"], {})
        rigs[r["rig_id"]] = Rig(r["rig_id"], r["default_branch"],
                                int(cfg.get("max_dispatch_attempts") or MAX_DISPATCH_ATTEMPTS))
    agents = {r["agent_id"]: _agent(r) for r in q("SELECT * FROM agents WHERE town_id = ? ORDER BY agent_id",
                                                  (town_id,))}
    beads = {r["bead_id"]: _bead(r) for r in q(
        f"SELECT {BEAD_COLUMNS} FROM town_beads WHERE town_id = ? AND status IN ('open','in_progress','in_review')"
        " AND type IN ('issue','merge_request','convoy') ORDER BY created_at, bead_id", (town_id,))}
    blockers: dict[str, list[tuple[str, str]]] = {}
    for r in q("SELECT d.bead_id, d.depends_on_bead_id, COALESCE(b.status, 'deleted') AS st"
               " FROM town_beads s JOIN bead_dependencies d ON d.town_id = s.town_id AND d.bead_id = s.bead_id"
               " AND d.dep_type = 'blocks' LEFT JOIN town_beads b ON b.town_id = d.town_id AND b.bead_id ="
               " d.depends_on_bead_id WHERE s.town_id = ? AND s.status = 'open'", (town_id,)):
        blockers.setdefault(r[0], []).append((r[1], r[2]))
    mrs: dict[str, list[tuple[str, str]]] = {}
    for r in q("SELECT d.depends_on_bead_id, m.bead_id, m.status FROM town_beads s JOIN bead_dependencies d"
               " ON d.town_id = s.town_id AND d.depends_on_bead_id = s.bead_id AND d.dep_type = 'tracks'"
               " JOIN town_beads m ON m.town_id = d.town_id AND m.bead_id = d.bead_id AND m.type = 'merge_request'"
               " WHERE s.town_id = ? AND s.status = 'in_review'", (town_id,)):
        mrs.setdefault(r[0], []).append((r[1], r[2]))
    reviews = {r["bead_id"]: Review(r["bead_id"], r["branch"], r["target_branch"], r["pr_url"], r["retry_count"],
                                    r["last_poll_at"])
               for r in q("SELECT v.* FROM review_metadata v JOIN town_beads b ON b.town_id = v.town_id AND"
                          " b.bead_id = v.bead_id WHERE v.town_id = ? AND b.status IN ('open','in_progress')",
                          (town_id,))}
    convoys = _load_convoys(conn, town_id, beads)
    failing = q("SELECT COUNT(*) FROM town_beads WHERE town_id = ? AND status IN ('open','in_progress')"
                " AND dispatch_attempts >= 2 AND last_dispatch_attempt_at >= ?",
                (town_id, now - CIRCUIT_BREAKER_WINDOW_MS)).fetchone()[0]
    max_polecats = store.kv_get(conn, town_id, "town:max_polecats", MAX_ACTIVE_POLECATS)
    return TownState(town_id, now, drain.is_draining(conn, town_id, now), rigs, agents, beads, blockers, mrs,
                     reviews, convoys, int(failing), int(max_polecats), _load_escalations(conn, town_id))


def _load_escalations(conn: Conn, town_id: str) -> list[Escalation]:
    out = []
    for r in conn.execute("SELECT e.bead_id, e.title, e.metadata, e.created_at, s.status, n.delivered_at"
                          " FROM town_beads e LEFT JOIN town_beads s ON s.town_id = e.town_id AND s.bead_id ="
                          " json_extract(e.metadata, '$.bead_id') LEFT JOIN nudges n ON n.town_id = e.town_id AND"
                          " n.nudge_id = json_extract(e.metadata, '$.notice_id') WHERE e.town_id = ? AND"
                          " e.type = 'escalation' AND e.status = 'open' ORDER BY e.created_at, e.bead_id", (town_id,)):
        meta = from_json(r["metadata"], {}) or {}
        out.append(Escalation(r["bead_id"], r["title"], str(meta.get("severity") or "medium"),
                              int(meta.get("re_escalations") or 0), int(meta.get("last_escalated_at") or r["created_at"]),
                              bool(meta.get("acknowledged_at")), r["status"], r["delivered_at"]))
    return out


def _load_convoys(conn: Conn, town_id: str, beads: dict[str, Bead]) -> dict[str, Convoy]:
    convoys: dict[str, Convoy] = {}
    live_ids = [b.bead_id for b in beads.values() if b.type == "convoy"]
    if not live_ids:
        return convoys
    counts: dict[str, dict[str, int]] = {}
    for r in conn.execute("SELECT d.depends_on_bead_id, b.status, COUNT(*) FROM bead_dependencies d JOIN town_beads c"
                          " ON c.town_id = d.town_id AND c.bead_id = d.depends_on_bead_id AND c.type = 'convoy'"
                          " AND c.status IN ('open','in_progress','in_review') JOIN town_beads b ON b.town_id ="
                          " d.town_id AND b.bead_id = d.bead_id AND b.type = 'issue' WHERE d.town_id = ? AND"
                          " d.dep_type = 'tracks' GROUP BY 1, 2", (town_id,)):
        counts.setdefault(r[0], {})[r[1]] = r[2]
    landing: dict[str, list[tuple[str, dict]]] = {}
    for r in conn.execute("SELECT d.depends_on_bead_id, b.status, b.metadata FROM bead_dependencies d JOIN town_beads b"
                          " ON b.town_id = d.town_id AND b.bead_id = d.bead_id AND b.type = 'merge_request'"
                          " JOIN town_beads c ON c.town_id = d.town_id AND c.bead_id = d.depends_on_bead_id AND"
                          " c.type = 'convoy' AND c.status IN ('open','in_progress','in_review')"
                          " WHERE d.town_id = ? AND d.dep_type = 'tracks' ORDER BY b.created_at", (town_id,)):
        landing.setdefault(r[0], []).append((r[1], from_json(r[2], {})))
    for r in conn.execute("SELECT m.* FROM convoy_metadata m JOIN town_beads c ON c.town_id = m.town_id AND"
                          " c.bead_id = m.bead_id WHERE m.town_id = ? AND c.status IN"
                          " ('open','in_progress','in_review')", (town_id,)):
        c = counts.get(r["bead_id"], {})
        mrs = landing.get(r["bead_id"], [])
        live_landing = any(st in ("open", "in_progress") for st, _ in mrs)
        awaiting = bool(mrs) and mrs[-1][0] == "failed" and bool(mrs[-1][1].get("awaiting_approval"))
        convoys[r["bead_id"]] = Convoy(
            r["bead_id"], beads[r["bead_id"]].status, r["merge_mode"], bool(r["staged"]), r["feature_branch"],
            sum(c.values()), c.get("closed", 0), c.get("failed", 0),
            sum(v for k, v in c.items() if k not in ("closed", "failed")), bool(r["ready_to_land"]),
            r["landing_attempts"], r["last_landing_attempt_at"], live_landing, awaiting,
            (r["total_beads"], r["closed_beads"], r["failed_beads"]))
    return convoys
