"""Hot swaps: restart a running agent's kilo with a new config and resume the same session.

A child's env and config are frozen at spawn, so a new model needs a new process. The new server
starts beside the old one (same data dir: kilo shares its DB between processes), is verified, and
only then replaces it; on any failure the old process keeps serving.
A spawn that outlives its timeout is reaped when it finishes, so a swap never leaks a kilo.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.bringup import STARTUP_CALL_TIMEOUT_S, BringUp, Session, SpawnTimeout
from supervisor.errors import AgentNotRunning, ModelUpdateFailed
from supervisor.kilo_client import KiloClient
from supervisor.states import AgentState, Change
from supervisor.supervisor import Supervisor

log = get_logger("supervisor.hotswap")

DEFAULT_SWAP_TIMEOUT_S = 60.0


class ModelRejected(ModelUpdateFailed):
    code, status = "MODEL_NOT_AVAILABLE", 422


def _model_check(sup: Supervisor, rec: AgentRecord, model: str):  # type: ignore[no-untyped-def]
    """The new server must offer the model; then the session is switched to it without running a
    turn (no replayed startup prompt)."""

    async def check(client: KiloClient) -> None:
        provider, model_id = sup.model_ref(model)
        body = await client.providers(timeout=STARTUP_CALL_TIMEOUT_S)
        offered = next((p.get("models") or {} for p in body.get("all", []) if p.get("id") == provider), {})
        if model_id not in offered:
            raise ModelRejected(f"provider {provider} does not offer model {model_id}")
        await client.prompt_async(rec.session_id, "", model=(provider, model_id), no_reply=True,
                                  system=rec.request.system_prompt)

    return check


async def hot_swap(sup: Supervisor, agent_id: str, *, reason: str, timeout: float = DEFAULT_SWAP_TIMEOUT_S,
                   model: str | None = None, small_model: str | None = None, organization_id: str | None = None) -> AgentRecord:
    rec = sup.get(agent_id)
    async with sup.lock(agent_id):
        if rec.state != AgentState.running or sup.agents.get(agent_id) is not rec:
            raise AgentNotRunning(f"agent {agent_id} is {rec.state.value}, not running")
        old = rec.process, rec.client
        t0 = time.monotonic()
        async with BringUp(sup, rec) as up:  # captures the record before the new model is set
            if model is not None:
                rec.model, rec.small_model = model, small_model or rec.small_model
                update: dict[str, Any] = {"model": model, "small_model": rec.small_model}
                if organization_id is not None:
                    update["organization_id"] = organization_id
                rec.request = rec.request.model_copy(update=update)
            try:
                new = await up.spawn(timeout)
            except SpawnTimeout as e:
                raise ModelUpdateFailed(f"new kilo server for {agent_id} did not start within {timeout:.0f}s",
                                        phase="spawn") from e
            except Exception as e:
                raise ModelUpdateFailed(f"new kilo server for {agent_id} failed: {e}", phase="spawn") from e
            try:
                await up.settle(Session.resume, _model_check(sup, rec, model) if model is not None else None)
                await up.swap_in()
            except ModelUpdateFailed as e:
                log.warning("hotswap.rolled_back", agent_id=agent_id, reason=reason, error=str(e))
                raise
            except Exception as e:
                log.warning("hotswap.rolled_back", agent_id=agent_id, reason=reason, error=str(e))
                raise ModelUpdateFailed(f"hot swap of {agent_id} failed: {e}", phase="resume") from e
        old_proc, old_client = old
        if old_client is not None:
            await old_client.close()
        if old_proc is not None:
            await old_proc.stop(timeout=5.0)
        log.info("hotswap.completed", agent_id=agent_id, reason=reason, old_pid=old_proc.pid if old_proc else None,
                 new_pid=new.proc.pid, session_id=rec.session_id, duration_ms=int((time.monotonic() - t0) * 1000))
    await sup.notify(rec, Change.swapped)
    return rec
