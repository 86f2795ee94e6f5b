"""Liveness of each kilo child and in-place recovery.

* Wedge: a server whose port is open but which stops answering ``/global/health`` for
  ``failures`` consecutive probes is recycled: killed, its DB snapshotted, restarted on the same
  data dir, and the same session resumed (no prompt replayed). Each recycle buys a grace period
  that doubles (a kilo that keeps wedging is given longer to boot); a wedge loop — too many
  recycles within the window — fails the agent and reports it, rather than recycling forever.
* Crash of the mayor: restarted in place, at once when it had been serving for the policy's start
  window, else after its backoff; a crash loop ends in FATAL (reported to the worker) until it
  decays or a new start clears it (``supervisor/crashloop.py``).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from gastown.contract.agents import Role
from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.bringup import BringUp, Session
from supervisor.crashloop import CrashPolicy
from supervisor.kilo_process import KiloProcess
from supervisor.runtime_view import RuntimeView
from supervisor.states import AgentState, Change, Transition
from supervisor.tasks import Sleep

log = get_logger("supervisor.health")

RECYCLE_GRACE_S = 30.0
RECYCLE_GRACE_MAX_S = 300.0
WEDGE_LOOP_MAX = 5  # recycles of one agent within WEDGE_LOOP_WINDOW_S before it is failed
WEDGE_LOOP_WINDOW_S = 3600.0


class HealthMonitor:
    def __init__(self, runtime: RuntimeView, *, failures: int = 3, probe_timeout_s: float = 2.0,
                 policy: CrashPolicy | None = None, recycle_grace_s: float = RECYCLE_GRACE_S,
                 wedge_policy: CrashPolicy | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.rt = runtime
        self.sup = runtime.supervisor
        self.failures = failures
        self.probe_timeout_s = probe_timeout_s
        self.policy = policy or CrashPolicy()
        self.recycle_grace_s = recycle_grace_s
        self.clock = clock
        self.sleep = sleep
        self.wedge_policy = wedge_policy or CrashPolicy(
            max_crashes=WEDGE_LOOP_MAX, window_s=WEDGE_LOOP_WINDOW_S, base_delay_s=1.0,
            max_delay_s=RECYCLE_GRACE_MAX_S / RECYCLE_GRACE_S, clock=lambda: self.clock())
        self.recycled = 0
        self.sup.change_hooks.append(self._on_change)
        self.sup.transition_hooks.append(self._on_transition)

    def _on_transition(self, rec: AgentRecord, t: Transition) -> None:
        if t.new == AgentState.running:
            rec.liveness.running_since = self.clock()

    # -- wedge ----------------------------------------------------------------------------------
    async def probe_all(self) -> None:
        running = [a for a in self.sup.agents.values() if a.state == AgentState.running and a.client is not None]
        await asyncio.gather(*(self._probe(a) for a in running))

    async def _probe(self, rec: AgentRecord) -> None:
        proc = rec.process
        if proc is None or not proc.running:
            return
        life = rec.liveness
        grace = life.grace_s if life.grace_s is not None else self.recycle_grace_s
        if life.recycled_at is not None and self.clock() - life.recycled_at < grace:
            return  # a kilo just recycled is busy booting its instance: give it time, no recycle loop
        if await rec.client.health(timeout=self.probe_timeout_s):
            life.misses = 0
            return
        life.misses += 1
        log.warning("agent.health_miss", agent_id=rec.agent_id, misses=life.misses, threshold=self.failures)
        if life.misses >= self.failures and rec.process is proc:
            life.misses = 0
            factor = self.wedge_policy.record_crash(rec.agent_id)
            if factor is None:
                await self.give_up(rec, proc)
                return
            life.grace_s = self.recycle_grace_s * factor
            await self.recycle(rec, "wedged: /global/health unanswered")

    async def give_up(self, rec: AgentRecord, proc: KiloProcess) -> None:
        """A wedge loop: recycling has not helped, so the agent fails and the worker is told why."""
        async with self.sup.lock(rec.agent_id):
            if rec.state != AgentState.running or rec.process is not proc:
                return
            count = self.wedge_policy.crash_count(rec.agent_id)
            self.wedge_policy.clear(rec.agent_id)
            rec.liveness.grace_s = None
            reason = f"wedge loop: {count} wedges within {int(self.wedge_policy.window_s)} s; not recycled again"
            log.error("agent.wedge_loop", agent_id=rec.agent_id, run_id=rec.run_id, wedges=count)
            await self.sup.kill_agent_process(rec)
            rec.fail(reason)
            if self.rt.persistence is not None:
                await self.rt.persistence.snapshot(rec, "wedge_loop")
        await self.rt.worker.completed(rec.agent_id, "failed", reason)
        await self.sup.notify(rec, Change.failed)

    async def recycle(self, rec: AgentRecord, reason: str) -> None:
        """Replace the agent's kilo with a new one on the same data dir and resume its session."""
        async with self.sup.lock(rec.agent_id):
            if rec.state != AgentState.running or self.sup.agents.get(rec.agent_id) is not rec:
                return
            old_proc, old_client = rec.process, rec.client
            log.error("agent.recycling", agent_id=rec.agent_id, run_id=rec.run_id, reason=reason, pid=old_proc.pid)
            if rec.event_task is not None:
                rec.event_task.cancel()
            await old_proc.stop(timeout=1.0)
            await old_client.close()
            rec.last_exit = {**old_proc.exit_info.as_dict(), "oom_suspected": False} if old_proc.exit_info else None
            rec.transition(AgentState.recycling, reason)  # no process until the new one answers
            if self.rt.persistence is not None:  # its copy is taken before the new kilo spawns
                self.rt.persistence.schedule(rec, "recycle")
            try:
                async with BringUp(self.sup, rec) as up:
                    new = await up.spawn()
                    await up.settle(Session.resume)
                    await up.swap_in()
                rec.transition(AgentState.running, "recycled")
            except Exception as e:
                failed_here = rec.fail(f"recycle failed: {e}")  # else the exit watcher already did (and reported)
                log.error("agent.recycle_failed", agent_id=rec.agent_id, error=str(e))
                await self.sup.kill_agent_process(rec)
                if failed_here:
                    await self.rt.worker.completed(rec.agent_id, "failed", rec.exit_reason)
                return
            self.recycled += 1
            rec.liveness.recycled_at = self.clock()
            log.info("agent.recycled", agent_id=rec.agent_id, old_pid=old_proc.pid, new_pid=new.proc.pid,
                     session_id=rec.session_id)
        await self.sup.notify(rec, Change.recycled)

    # -- crash loop -----------------------------------------------------------------------------
    def _on_change(self, rec: AgentRecord, what: Change) -> None:
        if what == Change.started and rec.restarts == 0:
            self.policy.clear(rec.agent_id)  # a start from the API clears FATAL and the wedge count
            self.wedge_policy.clear(rec.agent_id)
        if what == Change.crashed and rec.request.role == Role.mayor:
            self._crashed(rec)

    def _crashed(self, rec: AgentRecord) -> None:
        """One more crash of the mayor: BACKOFF and a restart after the delay, or FATAL after a crash
        loop. Once per process life: a kilo killed mid-start is seen both exiting and failing its start."""
        if self.rt.draining or rec.liveness.crash_counted:
            return
        rec.liveness.crash_counted = True
        since = rec.liveness.running_since
        ran_s = self.clock() - since if since is not None else 0.0
        delay = self.policy.record_crash(rec.agent_id, ran_s)
        crashes = self.policy.crash_count(rec.agent_id)
        if delay is None:
            rec.transition(AgentState.fatal, f"crash loop: {crashes} crashes; FATAL until cleared")
            log.error("agent.fatal", agent_id=rec.agent_id, crashes=crashes, decay_s=self.policy.decay_s)
            self.rt.tasks.spawn(self.rt.worker.completed(rec.agent_id, "failed", rec.exit_reason), f"fatal:{rec.agent_id}")
            self.rt.tasks.spawn(self._decay_later(rec), f"decay:{rec.agent_id}")
            return
        rec.transition(AgentState.backoff, f"restart in {delay:g}s")
        log.warning("agent.restart_scheduled", agent_id=rec.agent_id, delay_s=delay, crashes=crashes,
                    ran_s=round(ran_s, 3))
        self.rt.tasks.spawn(self._restart_later(rec, delay), f"restart:{rec.agent_id}")

    def _still(self, rec: AgentRecord, state: AgentState) -> bool:
        return not self.rt.draining and self.sup.agents.get(rec.agent_id) is rec and rec.state == state

    async def _restart_later(self, rec: AgentRecord, delay: float) -> None:
        if delay > 0:
            await self.sleep(delay)
        if self._still(rec, AgentState.backoff):
            await self._restart(rec)

    async def _decay_later(self, rec: AgentRecord) -> None:
        """FATAL decays: after the quiet period the crash history is forgotten and the agent gets a
        fresh start (supervisord would wait for an operator; a town's mayor should come back)."""
        await self.sleep(self.policy.decay_s)
        if self._still(rec, AgentState.fatal) and not self.policy.is_fatal(rec.agent_id):
            log.info("agent.fatal_decayed", agent_id=rec.agent_id, decay_s=self.policy.decay_s)
            await self._restart(rec)

    async def _restart(self, rec: AgentRecord) -> None:
        t0 = time.monotonic()
        try:
            new, _ = await self.sup.start(rec.request, restart_of=rec)
            log.info("agent.restarted_in_place", agent_id=rec.agent_id, new_pid=new.process.pid if new.process else None,
                     duration_ms=int((time.monotonic() - t0) * 1000))
        except Exception as e:
            log.error("agent.restart_failed", agent_id=rec.agent_id, error=str(e))
            again = self.sup.agents.get(rec.agent_id)
            if again is not None and again is not rec and again.state == AgentState.failed:
                self._crashed(again)  # a restart that fails counts toward the loop: retried or FATAL
