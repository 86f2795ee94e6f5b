"""Prometheus metrics of one runtime (its own registry, so several runtimes can share a process).

Counters move on supervisor changes; gauges (agents by state, RSS) are read at scrape time so they
are never stale.
"""
from __future__ import annotations

import time
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from supervisor.agent import AgentRecord
from supervisor.runtime_view import RuntimeView
from supervisor.states import AgentState, Change, Transition
from supervisor.telemetry import runtime_rss_bytes

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Live(Collector):
    def __init__(self, rt: RuntimeView) -> None:
        self.rt = rt

    def collect(self) -> Iterable[GaugeMetricFamily]:
        sup = self.rt.supervisor
        states = GaugeMetricFamily("gastown_agents", "Agents by state", labels=["state"])
        for state in AgentState:
            states.add_metric([state.value], sum(1 for a in sup.agents.values() if a.state == state))
        yield states
        rss = GaugeMetricFamily("gastown_agent_rss_bytes", "RSS of each live agent's kilo process tree", labels=["agent_id"])
        for a in sup.active_agents():
            rss.add_metric([a.agent_id], a.rss_bytes())
        yield rss
        yield GaugeMetricFamily("gastown_runtime_rss_bytes", "RSS of the runtime process", value=runtime_rss_bytes())
        yield GaugeMetricFamily("gastown_draining", "1 while the container drains", value=1 if self.rt.draining else 0)
        persistence = self.rt.persistence
        if persistence is not None:
            yield GaugeMetricFamily("gastown_snapshots_pending", "Snapshots scheduled, not finished",
                                    value=len(persistence.tasks.pending()))


class Metrics:
    def __init__(self, rt: RuntimeView) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.starts = Counter("gastown_agent_starts_total", "Agent starts", ["role"], registry=r)
        self.start_seconds = Histogram("gastown_agent_start_seconds", "Start request to session ready",
                                       buckets=(0.05, 0.5, 1, 2, 4, 6, 8, 12, 20, 30, 60), registry=r)
        self.crashes = Counter("gastown_agent_crashes_total", "Unexpected kilo exits", ["role"], registry=r)
        self.restarts = Counter("gastown_agent_restarts_total", "In-place restarts and swaps", ["reason"], registry=r)
        self.stops = Counter("gastown_agent_stops_total", "Agent stops", ["reason"], registry=r)
        self.transitions = Counter("gastown_agent_transitions_total", "Agent state changes", ["from", "to"], registry=r)
        self.snapshot_bytes = Counter("gastown_snapshot_bytes_total", "Bytes of kilo.db snapshots uploaded", registry=r)
        self.snapshot_seconds = Histogram("gastown_snapshot_seconds", "Snapshot + upload duration", registry=r)
        self.snapshot_failures = Counter("gastown_snapshot_failures_total", "Snapshots that failed", registry=r)
        r.register(_Live(rt))
        rt.supervisor.change_hooks.append(self._on_change)
        rt.supervisor.transition_hooks.append(self._on_transition)

    def _on_transition(self, rec: AgentRecord, t: Transition) -> None:
        self.transitions.labels(t.old.value, t.new.value).inc()

    def _on_change(self, rec: AgentRecord, what: Change) -> None:
        role = rec.request.role.value
        if what == Change.started:
            self.starts.labels(role).inc()
            self.start_seconds.observe(max(0.0, time.time() - rec.started_at))
            if rec.restarts:
                self.restarts.labels("crash").inc()
        elif what == Change.crashed:
            self.crashes.labels(role).inc()
        elif what in (Change.swapped, Change.recycled):
            self.restarts.labels(what).inc()
        elif what == Change.stopped:
            self.stops.labels(rec.exit_reason or "stopped").inc()

    def snapshot_done(self, ok: bool, nbytes: int, seconds: float) -> None:
        if ok:
            self.snapshot_bytes.inc(nbytes)
            self.snapshot_seconds.observe(seconds)
        else:
            self.snapshot_failures.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
