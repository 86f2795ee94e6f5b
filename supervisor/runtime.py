"""The container runtime: composes the supervisor with its reporters and owns every background task.

Lifecycle: ``start()`` begins serving at once and runs boot hydration in the background (the gate
``hydrated`` releases even when hydration fails); ``shutdown()`` stops every agent and cancels every
loop it started.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from gastown.contract.wire import epoch_ms
from gastown.core.jsonlog import get_logger, register_secret, set_town_id
from supervisor.agent import AgentRecord
from supervisor.agent_tokens import RENEW_INTERVAL_S, AgentTokens
from supervisor.config import RuntimeConfig
from supervisor.crashloop import CrashPolicy
from supervisor.drain import Drain
from supervisor.errors import Draining
from supervisor.health import HealthMonitor
from supervisor.heartbeat import CONTAINER_INSTANCE_ID, Heartbeats
from supervisor.hydration import Hydrator
from supervisor.idle import IdleManager
from supervisor.metrics import Metrics
from supervisor.models import StartAgentRequest
from supervisor.persistence import Persistence
from supervisor.registry import RegistrySync
from supervisor.states import AgentState, Change, Transition
from supervisor.supervisor import Supervisor
from supervisor.event_forward import EventForwarder
from supervisor.tasks import TaskOwner, every
from supervisor.telemetry import log_memory
from supervisor.worker_client import WorkerClient

log = get_logger("container")


class ContainerRuntime:
    def __init__(self, cfg: RuntimeConfig) -> None:
        self.cfg = cfg
        register_secret(cfg.control_token)
        register_secret(cfg.container_token)
        register_secret(cfg.kilocode_token)
        set_town_id(cfg.town_id)
        self.started_at = time.time()
        self.worker = WorkerClient(cfg.api_url, cfg.container_token, cfg.town_id)
        self.supervisor = Supervisor(cfg, self.worker)
        self.forwarder = EventForwarder(self.worker)
        self.supervisor.event_sink = self.forwarder.push
        self.heartbeats = Heartbeats(self.supervisor)
        self.heartbeats.on_drain_nonce = self._on_drain_nonce
        self._acked_nonce: str | None = None
        self.registry = RegistrySync(self.supervisor)
        self.agent_tokens = AgentTokens(self.supervisor)
        self.tasks = TaskOwner("runtime")
        self.hydrated = asyncio.Event()
        self.draining = False
        self._started = self._stopped = False
        self.hydration_steps: list[Callable[[], Awaitable[None]]] = []
        self.idle = IdleManager(self.supervisor, is_draining=lambda: self.draining)
        self.persistence = Persistence.from_url(self.supervisor, cfg.snapshot_url, CONTAINER_INSTANCE_ID, cfg.store_env)
        if self.persistence is not None:
            self.supervisor.stale_db_hooks.append(self.persistence.discard)
        self._drain: Drain | None = None
        self.health_monitor = HealthMonitor(self, failures=cfg.health_failures, probe_timeout_s=cfg.health_timeout_s,
                                            policy=CrashPolicy(max_crashes=cfg.crash_loop_max, base_delay_s=cfg.crash_backoff_s,
                                                              start_window_s=cfg.start_window_s))
        self.metrics = Metrics(self)
        if self.persistence is not None:
            self.persistence.observers.append(self.metrics.snapshot_done)
        self.hydrator = Hydrator(self.supervisor, concurrency=cfg.hydration_concurrency)
        self.hydration_steps.append(self.hydrator.run)
        self.supervisor.change_hooks.append(self._on_change)
        self.supervisor.transition_hooks.append(self._on_transition)

    async def _on_change(self, rec: AgentRecord, what: Change) -> None:
        self.registry.mark_dirty()  # a message or a swap changes no state but may change the request

    def _on_transition(self, rec: AgentRecord, t: Transition) -> None:
        """The registry follows every state change; the worker hears of a serving agent at once
        (a start, a restart in place, a recycled kilo) instead of at the next heartbeat tick."""
        self.registry.mark_dirty()
        if t.new == AgentState.running:
            self.tasks.spawn(self.heartbeats.beat(rec), f"heartbeat:{rec.agent_id}")

    def _on_drain_nonce(self, nonce: str) -> None:
        """The town drains (an older container of it is being evicted): once this container is
        ready, say so with the nonce, so dispatch resumes now instead of after the drain window.
        A draining container never acknowledges: it is the one going away."""
        if self.draining or nonce == self._acked_nonce:
            return
        self._acked_nonce = nonce
        self.tasks.spawn(self._ack_ready(nonce), "container-ready")

    async def _ack_ready(self, nonce: str) -> None:
        await self.hydrated.wait()
        if not self.draining:
            data = await self.worker.try_call("POST", "/container-ready", {"nonce": nonce})
            log.info("drain.ready_acknowledged", cleared=bool((data or {}).get("cleared")))

    async def start(self) -> None:
        """Begin serving: every loop below belongs to ``self.tasks``. Idempotent."""
        if self._started:
            return
        self._started = True
        log.info("container.cold_start", instance_id=CONTAINER_INSTANCE_ID, data_dir=str(self.cfg.data_dir),
                 kilo_bin=self.cfg.kilo_bin, worker_configured=self.worker.configured)
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.tasks.spawn(every(self.cfg.heartbeat_interval_s, self.heartbeats.beat_all, name="heartbeat"), "heartbeat")
        self.tasks.spawn(every(self.cfg.memory_log_interval_s, lambda: log_memory(self.supervisor), name="memory"), "memory")
        self.tasks.spawn(self.registry.run(), "registry")
        self.tasks.spawn(every(RENEW_INTERVAL_S, self._renew_agent_tokens, name="agent-tokens"), "agent-tokens")
        self.tasks.spawn(self.forwarder.run(), "event-forward")
        self.tasks.spawn(every(self.cfg.health_interval_s, self.health_monitor.probe_all, name="health"), "health")
        self.tasks.spawn(self._hydrate(), "hydration")

    async def _hydrate(self) -> None:
        t0 = time.monotonic()
        try:
            for step in self.hydration_steps:
                await step()
        except Exception:
            log.error("container.boot_hydration_failed", exc_info=True)
        finally:
            self.hydrated.set()
            log.info("container.hydrated", duration_ms=int((time.monotonic() - t0) * 1000))
        # Ready: if an older container of the town drains, acknowledge it (also with no agent to heartbeat).
        data = await self.worker.try_call("GET", "/drain-state")
        if isinstance(data, dict) and data.get("draining") and isinstance(data.get("drain_nonce"), str):
            self._on_drain_nonce(data["drain_nonce"])

    async def wait_hydrated(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.hydrated.wait(), timeout)

    async def wait_agent_hydrated(self, agent_id: str, timeout: float | None = None) -> None:
        """Per-agent gate: wait only while *this* agent is being resumed from the registry."""
        await asyncio.wait_for(self.hydrator.wait_for_agent(agent_id), timeout)

    async def start_agent(self, req: StartAgentRequest, hydration_wait_s: float) -> tuple[AgentRecord, bool]:
        """A start the worker asked for: it waits only if boot hydration resumes this very agent,
        and goes before resumes not yet begun (TimeoutError when the wait is too long)."""
        async with self.hydrator.foreground(req.agent_id, hydration_wait_s):
            if self.draining:
                raise Draining("container is draining; start refused")
            return await self.supervisor.start(req)

    def health(self) -> dict[str, Any]:
        sup = self.supervisor
        return {
            "status": "draining" if self.draining else "ok",
            "agents": len(sup.active_agents()),
            "servers": sum(1 for a in sup.agents.values() if a.process is not None and a.process.running)
            + len(sup.prewarm_pool.entries),
            "uptime_ms": int((time.time() - self.started_at) * 1000),
            "started_at": epoch_ms(self.started_at),
            "hydrated": self.hydrated.is_set(),
            "draining": self.draining,
            "mayor_ready_at": epoch_ms(sup.mayor_ready_at),
        }

    async def _renew_agent_tokens(self) -> None:
        await self.agent_tokens.renew_all()

    async def refresh_token(self, token: str, issued_at: float | None) -> dict[str, Any]:
        """Adopt a new runtime token (e.g. after the town's tokens were rotated) and re-issue every
        agent's own token with it. No kilo restarts: an agent reads its token from its file at call
        time (``agents_restarted`` stays 0; ``agents_failed`` counts tokens not re-issued). A token
        older than the one held is ignored, so a delayed refresh cannot roll back."""
        held = self.worker.token_issued_at
        if issued_at is not None and held is not None and issued_at < held:
            log.info("refresh_token.stale_ignored", issued_at=issued_at, held_issued_at=held)
            return {"refreshed": False, "agents_restarted": 0, "agents_failed": 0, "results": []}
        register_secret(token)
        self.worker.update(token=token, issued_at=issued_at)
        t0 = time.monotonic()
        results = await self.agent_tokens.renew_all() if self.worker.configured else []
        failed = sum(1 for r in results if not r["success"])
        log.info("refresh_token.completed", agents=len(results), failed=failed,
                 duration_ms=int((time.monotonic() - t0) * 1000))
        return {"refreshed": True, "agents_restarted": 0, "agents_failed": failed, "results": results}

    async def drain(self) -> None:
        """SIGTERM: drain within ``GASTOWN_DRAIN_TIMEOUT_S``; a second call cuts it short."""
        if self._drain is not None:
            self._drain.hard_stop.set()
            log.info("drain.hard_stop_requested")
            return
        self._drain = Drain(self)
        try:
            await self._drain.run(self.cfg.drain_timeout_s)
        except Exception:
            log.error("drain.failed", exc_info=True)

    async def shutdown(self, reason: str | None = None) -> None:
        """Stop every agent, then every owned task, in dependency order. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        reason = reason or ("container eviction" if self._drain is not None else "container shutdown")
        self.draining = True
        await self.supervisor.stop_all(reason)
        await self.supervisor.kill_all()
        await self.registry.sync_now()
        await self.forwarder.flush(timeout=5.0)
        await self.idle.owner.close()
        if self.persistence is not None:
            await self.persistence.flush(timeout=30.0)
            await self.persistence.close()
        await self.tasks.close()
        await self.worker.close()
        log.info("container.stopped", reason=reason)
