"""Boot hydration: resume every agent the worker's registry lists, in parallel with a bound, then
prewarm the mayor when the registry has none.

The gate is per agent: a start for an agent being resumed waits for that agent only; a start for
any other agent proceeds at once instead of queueing behind unrelated spawns (the 60 s timeouts of
the system we re-imagine). ``/ready`` and ``/refresh-token`` still wait for the whole hydration.

Kilo boots are CPU-bound, so a start the worker asks for now also goes *first*: while one boots
(``foreground()``), no further resume begins (those in flight finish), and the mayor resumes
before the other agents. Foreground starts are few (the worker caps polecats), so resumes wait at
most for those.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Callable

import jwt

from gastown.contract.agents import Role
from gastown.core.jsonlog import get_logger
from supervisor.models import StartAgentRequest
from supervisor.supervisor import Supervisor
from supervisor.worker_client import WorkerError

log = get_logger("supervisor.hydration")
MAX_RESUMED = 100  # agents resumed at boot at most (the worker's registry holds no more)

REFRESH_IF_EXPIRES_WITHIN_S = 30 * 60
# What the worker's prewarm context may set of the mayor's start request (all of it but the prompt).
PREWARM_FIELDS = frozenset({"agent_id", "name", "identity", "model", "small_model", "organization_id", "system_prompt",
                            "env_vars", "git_author_name", "git_author_email", "disable_ai_coauthor"})


def mayor_rig_id(town_id: str) -> str:
    return f"mayor-{town_id}"[:64]


def token_expires_at(token: str) -> float | None:
    """``exp`` of a JWT, read without verifying (only the worker can verify; we only plan)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, (int, float)) else None


class Hydrator:
    def __init__(self, supervisor: Supervisor, *, concurrency: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.supervisor = supervisor
        self.clock = clock
        self.worker = supervisor.worker
        self.concurrency = concurrency or supervisor.cfg.hydration_concurrency
        self.registry_loaded = asyncio.Event()
        self.pending: dict[str, asyncio.Event] = {}
        self.results: dict[str, str] = {}
        self._foreground = 0
        self._no_foreground = asyncio.Event()
        self._no_foreground.set()

    @contextlib.asynccontextmanager
    async def foreground(self, agent_id: str, wait_s: float) -> AsyncIterator[None]:
        """A start the worker asked for. It counts at once, so resumes that have not begun hold back
        even while the registry is still loading. A start for an agent the registry resumes gives
        way and waits (at most ``wait_s``, else TimeoutError) for that resume instead: holding the
        others back for it would deadlock."""
        self._hold(+1)
        held = True
        try:
            async with asyncio.timeout(wait_s):
                await self.registry_loaded.wait()
                event = self.pending.get(agent_id)
                if event is not None and not event.is_set():
                    self._hold(-1)
                    held = False
                    await event.wait()
            yield
        finally:
            if held:
                self._hold(-1)

    def _hold(self, delta: int) -> None:
        self._foreground += delta
        if self._foreground:
            self._no_foreground.clear()
        else:
            self._no_foreground.set()

    async def wait_for_agent(self, agent_id: str) -> None:
        await self.registry_loaded.wait()
        event = self.pending.get(agent_id)
        if event is not None:
            await event.wait()

    async def run(self) -> None:
        try:
            entries = await self._load()
        finally:
            self.registry_loaded.set()
        if entries is None:
            return
        await self._resume_all(entries)
        if not any(r.role == Role.mayor for r in entries):
            await self.prewarm_mayor()

    async def _load(self) -> list[StartAgentRequest] | None:
        if not self.worker.configured:
            log.info("hydration.skipped", reason="no worker credentials")
            return None
        await self._refresh_if_near_expiry()
        try:
            data = await self.worker.call("GET", "/container-registry")
        except WorkerError as e:
            log.error("hydration.registry_fetch_failed", error=str(e))
            return None
        requests: list[StartAgentRequest] = []
        entries = data if isinstance(data, list) else []
        if len(entries) > MAX_RESUMED:  # the worker caps the registry too: a bigger answer is not to be trusted
            log.warning("hydration.registry_truncated", entries=len(entries), resumed=MAX_RESUMED)
        for entry in entries[:MAX_RESUMED]:
            try:
                req = StartAgentRequest.model_validate(entry.get("request") or {})
            except (ValueError, AttributeError) as e:
                log.warning("hydration.entry_skipped", error=str(e)[:300])
                continue
            if req.town_id == self.worker.town_id:
                requests.append(req)
                self.pending[req.agent_id] = asyncio.Event()
        log.info("hydration.registry_loaded", agents=len(requests))
        return requests

    async def _refresh_if_near_expiry(self) -> None:
        exp = token_expires_at(self.worker.token or "")
        if exp is not None and exp - self.clock() < REFRESH_IF_EXPIRES_WITHIN_S:
            log.info("token_refresh.boot_near_expiry", expires_in_s=int(exp - self.clock()))
            await self.worker.refresh_token()

    async def _resume_all(self, requests: list[StartAgentRequest]) -> None:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(req: StartAgentRequest) -> None:
            async with sem:
                if not self._no_foreground.is_set():
                    log.info("hydration.yield_to_start", agent_id=req.agent_id)
                    await self._no_foreground.wait()
                t0 = time.monotonic()
                try:
                    await self.supervisor.start(req)
                    self.results[req.agent_id] = "resumed"
                    log.info("hydration.agent_resumed", agent_id=req.agent_id, duration_ms=int((time.monotonic() - t0) * 1000))
                except Exception as e:
                    self.results[req.agent_id] = f"failed: {e}"
                    log.error("hydration.agent_failed", agent_id=req.agent_id, error=str(e))
                finally:
                    self.pending[req.agent_id].set()

        mayor_first = sorted(requests, key=lambda r: r.role != Role.mayor)
        await asyncio.gather(*(one(r) for r in mayor_first))

    async def prewarm_mayor(self) -> None:
        """Start the mayor's kilo ahead of its real start, with exactly the config that start builds."""
        try:
            ctx: Any = await self.worker.call("GET", "/prewarm-context")
        except WorkerError as e:
            log.warning("mayor.prewarm_skipped", reason=f"context fetch failed: {e}")
            return
        if not isinstance(ctx, dict) or not ctx.get("agent_id") or not ctx.get("model"):
            log.info("mayor.prewarm_skipped", reason="no mayor or no model")
            return
        town_id = self.worker.town_id or ""
        try:
            fields = {k: v for k, v in ctx.items() if k in PREWARM_FIELDS and v is not None}
            req = StartAgentRequest(**{"name": "Mayor", **fields}, town_id=town_id, rig_id=mayor_rig_id(town_id),
                                    role=Role.mayor, prompt="")
        except ValueError as e:
            log.warning("mayor.prewarm_skipped", reason=f"invalid context: {str(e)[:200]}")
            return
        t0 = time.monotonic()
        try:
            await self.supervisor.prewarm_pool.warm(req)
        except Exception as e:
            log.error("mayor.prewarm_failed", agent_id=req.agent_id, error=str(e))
            return
        duration_ms = int((time.monotonic() - t0) * 1000)
        log.info("mayor.prewarm_complete", agent_id=req.agent_id, duration_ms=duration_ms)
        await self.worker.container_event("mayor.prewarm_complete", agent_id=req.agent_id, duration_ms=duration_ms)
