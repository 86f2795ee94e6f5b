"""One reconciler tick for one town (docs/original-system.md §5.7), network outside transactions.

1. pre-phase: ask the container about every working/stalled agent; a dead one becomes a
   ``container_status`` event (so its handling goes through the same queue as everything else);
2. one write transaction: drain events → load state → ``reconcile`` → ``apply_action`` each;
3. run the collected side effects concurrently (each with its own timeout), then record results;
4. check invariants; housekeeping (prune old events); idle container stop.

With a container provider (``deps.containers``), a town whose work needs its container gets it
started first (worker_api/containers/service.py), and an idle one is stopped.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gastown.contract.agents import DEAD_STATUSES
from gastown.core.jsonlog import get_logger
from worker_api import beads as bx
from worker_api import events as ev
from worker_api import nudges, store
from worker_api.db import Conn, Database, to_json
from worker_api.containers.service import TownContainers, touch_activity
from worker_api.dispatch import ContainerClient, StartResult, Target, town_target
from worker_api.reconciler.apply import ApplyContext, Effect, apply_actions
from worker_api.reconciler.constants import (
    EVENT_RETENTION_MS,
    EVENTS_PER_TICK,
    HOUR,
)
from worker_api.reconciler.events_apply import drain_events
from worker_api.reconciler.invariants import check_invariants
from worker_api.reconciler.reconcile import has_active_work, reconcile
from worker_api.reconciler.state import load_state
from worker_api.scm.base import ScmProvider
from worker_api.scm.gitmerge import Merger, merge_branch
from worker_api.scm.land import run_land_effect
from worker_api.scm.pr_sync import run_pr_effect

log = get_logger("worker_api.reconciler")

K_LAST_IDLE_STOP = "container:last_idle_stop_at"
K_LAST_PRUNE = "reconciler:last_prune_at"
CONTAINER_EFFECTS = frozenset({"start", "message"})  # effects that need the town's container up


@dataclass
class TickDeps:
    container: ContainerClient
    containers: TownContainers | None = None  # None: containers are started and stopped by others
    scm: ScmProvider | None = None   # None: PR-based merge requests are neither polled nor merged
    ids: bx.IdFactory = bx.new_id
    merger: Merger = merge_branch    # the direct strategy's merge through git


@dataclass
class TickResult:
    active: bool
    events: int = 0
    actions: int = 0
    effects: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    duration_ms: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)


def _prepare_tx(conn: Conn, town_id: str) -> tuple[Target, list[str]] | None:
    target = town_target(conn, town_id)
    if target is None:
        return None
    agents = [r[0] for r in conn.execute("SELECT agent_id FROM agents WHERE town_id = ? AND role != 'mayor' AND"
                                         " status IN ('working', 'stalled') ORDER BY agent_id", (town_id,))]
    return target, agents


def _record_statuses_tx(conn: Conn, town_id: str, statuses: dict[str, str], now: int) -> None:
    """One pending ``container_status`` event per agent: a repeat only bumps its time (no flood)."""
    for agent_id, status in statuses.items():
        cur = conn.execute("UPDATE town_events SET created_at = ?, payload = ? WHERE town_id = ? AND agent_id = ?"
                           " AND event_type = 'container_status' AND processed_at IS NULL",
                           (now, to_json({"status": status}), town_id, agent_id))
        if cur.rowcount == 0:
            ev.insert_event(conn, town_id, "container_status", agent_id=agent_id, payload={"status": status},
                            now_ms=now)


def _main_tx(conn: Conn, town_id: str, now: int, ids: bx.IdFactory,
             guard: Callable[[Conn], None] | None = None) -> tuple[TickResult, list[Effect], Any]:
    if guard is not None:
        guard(conn)  # e.g. this replica still holds the town's lease (worker_api/leases.py): else nothing commits
    ctx = ApplyContext(town_id, now, ids)
    applied, bad = drain_events(conn, ctx)
    state = load_state(conn, town_id, now)
    actions = reconcile(state)
    apply_actions(conn, ctx, actions)
    kinds: dict[str, int] = {}
    for a in actions:
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    active = has_active_work(state) or bool(actions) or applied + bad >= EVENTS_PER_TICK
    if active:
        touch_activity(conn, town_id, now)  # work keeps the town's container up (idle stop)
    mayor = next((a for a in state.agents.values() if a.role == "mayor"), None)
    return TickResult(active, applied + bad, len(actions), len(ctx.effects), kinds=kinds), ctx.effects, (state.draining, mayor)


def _start_result_tx(conn: Conn, town_id: str, eff: Effect, res: StartResult, now: int) -> None:
    if res.started:
        if eff.data.get("role") != "refinery":  # a refinery keeps its counter (#1342)
            conn.execute("UPDATE agents SET dispatch_attempts = 0 WHERE town_id = ? AND agent_id = ?",
                         (town_id, eff.agent_id))
        bx.record(conn, town_id, eff.bead_id or "-", "agent_spawned", now, eff.agent_id)
    else:
        # Leave the agent working (#1358): the container may have started it; heartbeats decide.
        bx.record(conn, town_id, eff.bead_id or "-", "dispatch_failed", now, eff.agent_id, outcome=res.outcome,
                  status=res.status, detail=res.detail)


async def run_tick(db: Database, town_id: str, deps: TickDeps, clock_ms: Callable[[], int],
                   guard: Callable[[Conn], None] | None = None) -> TickResult | None:
    """Run one tick; None when the town no longer exists (its loop should stop). ``guard`` runs
    first in the tick's write transaction and may raise to commit nothing."""
    t0 = time.perf_counter()
    prep = await db.run(_prepare_tx, town_id, write=False)
    if prep is None:
        return None
    target, working = prep
    if working and deps.containers is not None:  # agents at work: their container must run (restart it)
        target = await deps.containers.ensure_running(town_id) or target
    if working:
        statuses = await deps.container.agent_statuses(target, working)
        dead = {a: s for a, s in statuses.items() if s in DEAD_STATUSES}
        if dead:
            await db.run(_record_statuses_tx, town_id, dead, clock_ms())
    result, effects, (draining, mayor) = await db.run(_main_tx, town_id, clock_ms(), deps.ids, guard)
    if deps.containers is not None and any(e.kind in CONTAINER_EFFECTS for e in effects):
        target = await deps.containers.ensure_running(town_id) or target
    if effects:
        await asyncio.gather(*(_run_effect(db, town_id, target, deps, e, clock_ms) for e in effects))
    result.violations = await db.run(check_invariants, town_id, write=False)
    if result.violations:
        log.warning("invariants.violated", town=town_id, violations=result.violations[:20])
    await _housekeeping(db, town_id, clock_ms())
    if not result.active and not draining and deps.containers is not None:
        if guard is not None:
            await db.run(guard)  # a replica that lost the town stops no container of it
        await _maybe_stop_container(db, town_id, deps.containers, mayor, clock_ms())
    result.duration_ms = (time.perf_counter() - t0) * 1000
    log.debug("reconciler.tick", town=town_id, events=result.events, actions=result.actions,
              effects=result.effects, ms=round(result.duration_ms, 2))
    return result


async def _run_effect(db: Database, town_id: str, target: Target, deps: TickDeps, e: Effect,
                      clock_ms: Callable[[], int]) -> None:
    """Never raises: one failed call must not stop the others nor the loop."""
    try:
        if e.kind == "start":
            res = await deps.container.start_agent(target, e.data["request"])
            log.info("dispatch.result", town=town_id, agent_id=e.agent_id, bead_id=e.bead_id, outcome=res.outcome,
                     status=res.status)
            await db.run(_start_result_tx, town_id, e, res, clock_ms())
        elif e.kind == "stop":
            await deps.container.stop_agent(target, e.agent_id or "")
        elif e.kind == "message":
            if await deps.container.send_message(target, e.agent_id or "", e.data["prompt"]):
                await db.run(nudges.mark_nudge_delivered, town_id, e.agent_id, e.data["nudge_id"], clock_ms())
        elif e.kind in ("poll_pr", "merge_pr") and deps.scm is not None and e.bead_id:
            await run_pr_effect(db, town_id, deps.scm, e.kind, e.bead_id, e.data["pr_url"], clock_ms)
        elif e.kind in ("merge_branch", "open_pr") and e.bead_id:
            await run_land_effect(db, town_id, deps.scm, e.kind, e.bead_id, clock_ms, deps.merger)
    except Exception as exc:  # noqa: BLE001
        log.error("effect.failed", town=town_id, kind=e.kind, agent_id=e.agent_id, error=repr(exc))


def _prune_tx(conn: Conn, town_id: str, now: int) -> None:
    last = store.kv_get(conn, town_id, K_LAST_PRUNE, 0)
    if now - int(last or 0) >= HOUR:
        ev.prune_processed_events(conn, town_id, now - EVENT_RETENTION_MS)
        store.kv_set(conn, town_id, K_LAST_PRUNE, now)


async def _housekeeping(db: Database, town_id: str, now: int) -> None:
    await db.run(_prune_tx, town_id, now)


async def _maybe_stop_container(db: Database, town_id: str, containers: TownContainers, mayor: Any, now: int) -> None:
    """Stop an idle town's container (docs/original-system.md §5.6); the throttle is recorded only on success."""
    last = int(await db.run(store.kv_get, town_id, K_LAST_IDLE_STOP, 0, write=False) or 0)
    busy = mayor is not None and mayor.status in ("working", "stalled")
    if await containers.stop_if_idle(town_id, now, active=False, mayor_busy=busy, last_stop_at=last):
        await db.run(store.kv_set, town_id, K_LAST_IDLE_STOP, now)
        log.info("container.idle_stop", town=town_id)
