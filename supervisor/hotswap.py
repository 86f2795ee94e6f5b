"""Hot swaps: restart a running agent's kilo with a new config and resume the same session.

A child's env and config are frozen at spawn, so a new model or a new worker token needs a new
process. The new server starts beside the old one (same data dir: kilo shares its DB between
processes), is verified, and only then replaces it; on any failure the old process keeps serving.
A spawn that outlives its timeout is reaped when it finishes, so a swap never leaks a kilo.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.errors import AgentNotRunning, ModelUpdateFailed
from supervisor.kilo_client import KiloClient
from supervisor.kilo_process import KiloProcess
from supervisor.states import AgentState, Change
from supervisor.supervisor import Supervisor

log = get_logger("supervisor.hotswap")

DEFAULT_SWAP_TIMEOUT_S = 20.0
STARTUP_CALL_TIMEOUT_S = 30.0  # first calls on a fresh kilo boot its directory instance; slow under load


class ModelRejected(ModelUpdateFailed):
    code, status = "MODEL_NOT_AVAILABLE", 422


async def _reap_when_done(spawn: asyncio.Task, agent_id: str) -> None:
    """Stop the server a timed-out spawn produces once it finally arrives. Cancelling this reaper
    (shutdown) cancels the spawn too, and ``launch_server`` stops its half-started child."""
    try:
        proc, client = await spawn
    except asyncio.CancelledError:
        raise
    except Exception:
        return
    log.warning("hotswap.orphan_reaped", agent_id=agent_id, pid=proc.pid)
    await _close(proc, client)


async def _close(proc: KiloProcess, client: KiloClient) -> None:
    await client.close()
    await proc.stop(timeout=3.0)


async def _provider_lists_model(client: KiloClient, provider: str, model_id: str) -> bool:
    body = await client.providers(timeout=STARTUP_CALL_TIMEOUT_S)
    for p in body.get("all", []):
        if p.get("id") == provider:
            return model_id in (p.get("models") or {})
    return False


async def hot_swap(sup: Supervisor, agent_id: str, *, reason: str, timeout: float = DEFAULT_SWAP_TIMEOUT_S,
                   model: str | None = None, small_model: str | None = None, organization_id: str | None = None) -> AgentRecord:
    rec = sup.get(agent_id)
    async with sup.lock(agent_id):
        if rec.state != AgentState.running or sup.agents.get(agent_id) is not rec:
            raise AgentNotRunning(f"agent {agent_id} is {rec.state.value}, not running")
        saved = (rec.request, rec.model, rec.small_model, rec.config_json, rec.child_env)
        if model is not None:
            rec.model, rec.small_model = model, small_model or rec.small_model
            update: dict[str, Any] = {"model": model, "small_model": rec.small_model}
            if organization_id is not None:
                update["organization_id"] = organization_id
            rec.request = rec.request.model_copy(update=update)
        t0 = time.monotonic()
        spawn = asyncio.create_task(sup.launch_server(rec), name=f"{agent_id}:hotswap-spawn")
        done, _ = await asyncio.wait({spawn}, timeout=timeout)
        if not done:
            sup.background.spawn(_reap_when_done(spawn, agent_id), f"reap:{agent_id}")
            rec.request, rec.model, rec.small_model, rec.config_json, rec.child_env = saved
            raise ModelUpdateFailed(f"new kilo server for {agent_id} did not start within {timeout:.0f}s", phase="spawn")
        try:
            proc, client = spawn.result()
        except Exception as e:
            rec.request, rec.model, rec.small_model, rec.config_json, rec.child_env = saved
            raise ModelUpdateFailed(f"new kilo server for {agent_id} failed: {e}", phase="spawn") from e
        old_proc, old_client = rec.process, rec.client
        adopted = False
        try:
            await client.get_session(rec.session_id, timeout=STARTUP_CALL_TIMEOUT_S)
            if model is not None:
                provider, model_id = sup.model_ref(model)
                if not await _provider_lists_model(client, provider, model_id):
                    raise ModelRejected(f"provider {provider} does not offer model {model_id}")
                # Sets the session's model without running a turn (no replayed startup prompt).
                await client.prompt_async(rec.session_id, "", model=(provider, model_id), no_reply=True)
            sup.adopt_server(rec, proc, client)
            adopted = True
            await sup.follow_events(rec)
        except Exception as e:
            rec.process, rec.client = old_proc, old_client
            rec.request, rec.model, rec.small_model, rec.config_json, rec.child_env = saved
            await _close(proc, client)
            if adopted:
                await sup.follow_events(rec)
            log.warning("hotswap.rolled_back", agent_id=agent_id, reason=reason, error=str(e))
            if isinstance(e, ModelUpdateFailed):
                raise
            raise ModelUpdateFailed(f"hot swap of {agent_id} failed: {e}", phase="resume") from e
        if old_client is not None:
            await old_client.close()
        if old_proc is not None:
            await old_proc.stop(timeout=5.0)
        log.info("hotswap.completed", agent_id=agent_id, reason=reason, old_pid=old_proc.pid if old_proc else None,
                 new_pid=proc.pid, session_id=rec.session_id, duration_ms=int((time.monotonic() - t0) * 1000))
    await sup.notify(rec, Change.swapped)
    return rec


async def refresh_all(sup: Supervisor, *, timeout: float = DEFAULT_SWAP_TIMEOUT_S) -> list[dict[str, Any]]:
    """Restart every running agent with the worker token now held, in parallel."""

    async def one(rec: AgentRecord) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            await hot_swap(sup, rec.agent_id, reason="token refresh", timeout=timeout)
            return {"agent_id": rec.agent_id, "success": True, "duration_ms": int((time.monotonic() - t0) * 1000)}
        except Exception as e:
            return {"agent_id": rec.agent_id, "success": False, "duration_ms": int((time.monotonic() - t0) * 1000),
                    "error": str(e)}

    running = [a for a in sup.agents.values() if a.state == AgentState.running]
    return list(await asyncio.gather(*(one(r) for r in running)))
