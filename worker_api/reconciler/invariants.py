"""Invariants checked after every tick (reported, not enforced; docs/original-system.md §5.9 plus ours).

A violation means a rule or a route left the town in a state the rules do not expect; it is logged,
counted, and served by ``GET /api/towns/{t}/invariants`` so tests and operators see it at once.
"""
from __future__ import annotations

from typing import Any
from worker_api.db import Conn

CONVOY_STATUSES = ("open", "in_progress", "in_review", "closed", "failed")


def check_invariants(conn: Conn, town_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    q = conn.execute
    # One MR under review per rig; an MR whose PR is open waits on the forge and does not count.
    for rig, n in q("SELECT b.rig_id, COUNT(*) FROM town_beads b LEFT JOIN review_metadata r ON r.town_id ="
                    " b.town_id AND r.bead_id = b.bead_id WHERE b.town_id = ? AND b.type = 'merge_request'"
                    " AND b.status = 'in_progress' AND r.pr_url IS NULL GROUP BY b.rig_id HAVING COUNT(*) > 1",
                    (town_id,)):
        out.append({"invariant": 3, "rule": "one_in_progress_mr_per_rig", "rig_id": rig, "count": n})
    for (bead_id,) in q("SELECT s.bead_id FROM town_beads s WHERE s.town_id = ? AND s.type = 'issue' AND s.status ="
                        " 'in_review' AND NOT EXISTS (SELECT 1 FROM bead_dependencies d JOIN town_beads m ON"
                        " m.town_id = d.town_id AND m.bead_id = d.bead_id WHERE d.town_id = s.town_id AND"
                        " d.depends_on_bead_id = s.bead_id AND d.dep_type = 'tracks' AND m.type ="
                        " 'merge_request' AND m.status IN ('open', 'in_progress'))", (town_id,)):
        out.append({"invariant": 4, "rule": "in_review_has_live_mr", "bead_id": bead_id})
    placeholders = ",".join("?" * len(CONVOY_STATUSES))
    for bead_id, status in q(f"SELECT bead_id, status FROM town_beads WHERE town_id = ? AND type = 'convoy'"
                             f" AND status NOT IN ({placeholders})", (town_id, *CONVOY_STATUSES)):
        out.append({"invariant": 5, "rule": "valid_convoy_status", "bead_id": bead_id, "status": status})
    for bead_id, n in q("SELECT current_hook_bead_id, COUNT(*) FROM agents WHERE town_id = ? AND"
                        " current_hook_bead_id IS NOT NULL GROUP BY 1 HAVING COUNT(*) > 1", (town_id,)):
        out.append({"invariant": 6, "rule": "one_agent_per_bead_hook", "bead_id": bead_id, "count": n})
    for (agent_id,) in q("SELECT agent_id FROM agents WHERE town_id = ? AND role != 'mayor' AND status = 'working'"
                         " AND current_hook_bead_id IS NULL", (town_id,)):
        out.append({"invariant": 7, "rule": "working_agent_has_hook", "agent_id": agent_id})
    for (bead_id,) in q("SELECT bead_id FROM town_beads WHERE town_id = ? AND status IN ('closed','failed') AND bead_id"
                        " IN (SELECT current_hook_bead_id FROM agents WHERE town_id = ? AND status = 'working')",
                        (town_id, town_id)):
        out.append({"invariant": 8, "rule": "no_working_agent_on_terminal_bead", "bead_id": bead_id})
    return out
