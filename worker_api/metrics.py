"""``GET /metrics`` of the worker (admin token): read from the store at scrape time, so every figure
is current — invariant violations by rule (the reconciler checks them after each tick too),
unprocessed events (a growing backlog means a stuck loop), beads and agents by status."""
from __future__ import annotations


from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from worker_api.appkeys import DB
from worker_api.reconciler.invariants import check_invariants
from worker_api.db import Conn

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _families(conn: Conn) -> list[GaugeMetricFamily]:
    violations = GaugeMetricFamily("gastown_invariant_violations", "Invariant violations now", labels=["town_id", "rule"])
    backlog = GaugeMetricFamily("gastown_town_events_unprocessed", "Queued events not yet applied", labels=["town_id"])
    beads = GaugeMetricFamily("gastown_beads", "Beads by type and status", labels=["town_id", "type", "status"])
    agents = GaugeMetricFamily("gastown_worker_agents", "Agents by role and status", labels=["town_id", "role", "status"])
    towns = [r[0] for r in conn.execute("SELECT town_id FROM towns ORDER BY town_id")]
    for town_id in towns:
        counts: dict[str, int] = {}
        for v in check_invariants(conn, town_id):
            counts[v["rule"]] = counts.get(v["rule"], 0) + 1
        for rule, n in counts.items():
            violations.add_metric([town_id, rule], n)
        (n,) = conn.execute("SELECT COUNT(*) FROM town_events WHERE town_id = ? AND processed_at IS NULL", (town_id,)).fetchone()
        backlog.add_metric([town_id], n)
        for type_, status, n in conn.execute("SELECT type, status, COUNT(*) FROM town_beads WHERE town_id = ?"
                                             " GROUP BY type, status", (town_id,)):
            beads.add_metric([town_id, type_, status], n)
        for role, status, n in conn.execute("SELECT role, status, COUNT(*) FROM agents WHERE town_id = ?"
                                            " GROUP BY role, status", (town_id,)):
            agents.add_metric([town_id, role, status], n)
    return [violations, backlog, beads, agents]


class _Snapshot:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


async def metrics(request: web.Request) -> web.Response:
    families = await request.app[DB].run(_families, write=False)
    registry = CollectorRegistry()
    registry.register(_Snapshot(families))
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

