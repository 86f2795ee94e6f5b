"""The invariant checker itself: every invariant has a state that must be reported.

The 10k-step simulation and the tick tests assert ``check_invariants(...) == []``; with the checker
returning ``[]`` unconditionally they all stayed green. Here each rule is broken by hand (raw SQL,
bypassing the rules that keep it) and must show up, and the clean town reports nothing.
"""
from __future__ import annotations

import sqlite3

from tests.test_reconciler_support import Harness, h  # noqa: F401 (fixture)
from worker_api.reconciler.invariants import check_invariants

T = "town-1"


def _bead(conn: sqlite3.Connection, bead_id: str, type_: str, status: str, rig: str | None = "rig-1") -> None:
    conn.execute("INSERT INTO town_beads (town_id, bead_id, type, status, title, rig_id, created_at, updated_at)"
                 " VALUES (?, ?, ?, ?, 't', ?, 0, 0)", (T, bead_id, type_, status, rig))


def _agent(conn: sqlite3.Connection, agent_id: str, status: str, hook: str | None, role: str = "polecat") -> None:
    conn.execute("INSERT INTO agents (town_id, agent_id, role, name, rig_id, status, current_hook_bead_id, created_at)"
                 " VALUES (?, ?, ?, ?, 'rig-1', ?, ?, 0)", (T, agent_id, role, agent_id, status, hook))


def _track(conn: sqlite3.Connection, mr: str, source: str) -> None:
    conn.execute("INSERT INTO bead_dependencies (town_id, bead_id, depends_on_bead_id, dep_type) VALUES (?, ?, ?, 'tracks')",
                 (T, mr, source))


def _rules(h: Harness, setup) -> list[str]:
    h.sync(setup)
    return sorted(v["rule"] for v in h.sync(check_invariants, T, write=False))


def test_a_clean_town_reports_nothing(h):
    def clean(conn):
        _bead(conn, "b-1", "issue", "in_review")
        _bead(conn, "mr-1", "merge_request", "open")
        _track(conn, "mr-1", "b-1")
        _bead(conn, "b-2", "issue", "in_progress")
        _agent(conn, "pc-1", "working", "b-2")
        _bead(conn, "c-1", "convoy", "open", rig=None)
    assert _rules(h, clean) == []


def test_two_in_progress_mrs_in_one_rig(h):
    assert _rules(h, lambda c: (_bead(c, "mr-1", "merge_request", "in_progress"),
                                _bead(c, "mr-2", "merge_request", "in_progress"))) == ["one_in_progress_mr_per_rig"]


def test_in_review_bead_without_a_live_mr(h):
    def setup(c):
        _bead(c, "b-1", "issue", "in_review")
        _bead(c, "mr-1", "merge_request", "closed")
        _track(c, "mr-1", "b-1")
    assert _rules(h, setup) == ["in_review_has_live_mr"]


def test_convoy_with_an_unknown_status(h):
    assert _rules(h, lambda c: _bead(c, "c-1", "convoy", "lost", rig=None)) == ["valid_convoy_status"]


def test_two_agents_hooked_to_one_bead(h):
    def setup(c):
        _bead(c, "b-1", "issue", "in_progress")
        _agent(c, "pc-1", "working", "b-1")
        _agent(c, "pc-2", "working", "b-1")
    assert _rules(h, setup) == ["one_agent_per_bead_hook"]


def test_working_agent_without_a_hook(h):
    assert _rules(h, lambda c: _agent(c, "pc-1", "working", None)) == ["working_agent_has_hook"]


def test_working_agent_on_a_closed_bead(h):
    def setup(c):
        _bead(c, "b-1", "issue", "closed")
        _agent(c, "pc-1", "working", "b-1")
    assert _rules(h, setup) == ["no_working_agent_on_terminal_bead"]


def test_an_mr_waiting_on_its_pr_beside_one_under_review_is_fine(h):
    def setup(c):
        _bead(c, "mr-1", "merge_request", "in_progress")
        _bead(c, "mr-2", "merge_request", "in_progress")
        c.execute("INSERT INTO review_metadata (town_id, bead_id, pr_url) VALUES ('town-1', 'mr-1', 'https://gh/pr/1')")
    assert _rules(h, setup) == []
