"""SIGTERM drain: finish what can finish, save what cannot, leave nothing behind.

1. ``draining``: ``/ready`` and ``/agents/start`` answer 503; the worker is told (``container-eviction``).
2. Idle timers shrink to 10 s: agents that already finished complete quickly instead of being frozen.
3. Wait (until the freeze reserve before the hard deadline) for non-mayor agents to finish.
4. Freeze the rest, mayor included: stop kilo, commit the workspace as WIP and push it to the rig's
   URL (``wipsave``: nothing of the workspace's git config runs), tell the worker where it is (``eviction-context``, before ``completed`` unhooks),
   report ``completed`` with reason ``container eviction``.
5. Snapshots (scheduled by every stop) are flushed, the registry is emptied (so the next container
   does not resurrect frozen agents). A second SIGTERM or the deadline cuts every wait short.
"""
from __future__ import annotations

import asyncio
import time

from gastown.contract.agents import Role
from gastown.contract.reports import EvictionContext
from gastown.contract.wire import epoch_ms
from gastown.core.gitops import GitError
from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.idle import DRAIN_IDLE_TIMEOUT_S
from supervisor.runtime_view import RuntimeView
from supervisor import wipsave

log = get_logger("supervisor.drain")

POLL_S = 0.5


def freeze_reserve(timeout: float) -> float:
    """Time kept back from waiting for the freeze phase (git push, snapshots)."""
    return min(60.0, max(5.0, 0.3 * timeout))


def save_workspace(rec: AgentRecord) -> str | None:
    """Commit everything as WIP and push it to the rig (``wipsave``: nothing of the workspace runs)."""
    return wipsave.save_workspace(rec.paths.workdir, git_url=rec.request.git_url, branch=rec.request.branch,
                                  child_env=rec.child_env)


class Drain:
    def __init__(self, runtime: RuntimeView) -> None:
        self.rt = runtime
        self.sup = runtime.supervisor
        self.hard_stop = asyncio.Event()
        self.started_at: float | None = None

    async def _wait(self, seconds: float) -> bool:
        """Sleep unless a hard stop arrives; True when cut short."""
        try:
            await asyncio.wait_for(self.hard_stop.wait(), timeout=max(0.0, seconds))
            return True
        except asyncio.TimeoutError:
            return False

    async def run(self, timeout: float) -> None:
        self.started_at = time.monotonic()
        deadline = self.started_at + timeout
        self.rt.draining = True
        log.info("drain.started", timeout_s=timeout, agents=len(self.sup.active_agents()))
        data = await self.rt.worker.try_call("POST", "/container-eviction", {}, timeout=10.0)
        log.info("drain.worker_notified", acknowledged=data is not None)
        self.rt.idle.shorten_all(DRAIN_IDLE_TIMEOUT_S)
        wait_until = deadline - freeze_reserve(timeout)
        while not self.hard_stop.is_set() and time.monotonic() < wait_until:
            working = [a for a in self.sup.active_agents() if a.request.role != Role.mayor]
            if not working:
                break
            await self._wait(min(POLL_S, wait_until - time.monotonic()))
        frozen = self.sup.active_agents()
        log.info("drain.freezing", agents=[a.agent_id for a in frozen], cut_short=self.hard_stop.is_set())
        remaining = max(1.0, deadline - time.monotonic())
        freezes = asyncio.ensure_future(asyncio.gather(*(self._freeze(a) for a in frozen), return_exceptions=True))
        cut = asyncio.ensure_future(self.hard_stop.wait())
        await asyncio.wait({freezes, cut}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
        if not freezes.done():
            freezes.cancel()  # hard stop or deadline: shutdown kills whatever is left
            await asyncio.gather(freezes, return_exceptions=True)
        if self.rt.persistence is not None:
            await self.rt.persistence.flush(timeout=max(1.0, deadline - time.monotonic()))
        log.info("drain.finished", duration_ms=int((time.monotonic() - self.started_at) * 1000))

    async def _freeze(self, rec: AgentRecord) -> None:
        agent_id = rec.agent_id
        self.rt.idle.cancel(agent_id)
        stopped = await self.sup.stop(agent_id, reason="container eviction")
        if not stopped:
            return
        branch = None
        if rec.paths.workdir.exists() and rec.request.role != Role.mayor:
            try:
                branch = await asyncio.to_thread(save_workspace, rec)
            except (GitError, ValueError) as e:  # ValueError: no valid branch to push to
                log.error("drain.save_failed", agent_id=agent_id, error=str(e))
        if branch and rec.request.role == Role.polecat:
            body = EvictionContext.model_construct(branch=branch, agent_name=rec.request.name,
                                                   saved_at=epoch_ms(time.time())).model_dump(mode="json")
            await self.rt.worker.try_call("POST", f"/agents/{agent_id}/eviction-context", body, timeout=5.0)
        if rec.request.role not in (Role.mayor, Role.triage):
            await self.rt.worker.completed(agent_id, "completed", "container eviction")
        log.info("drain.agent_frozen", agent_id=agent_id, branch=branch)
