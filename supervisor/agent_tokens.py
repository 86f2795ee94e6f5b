"""Each agent's own worker token, in a file only that agent reads.

An agent runs hostile code, so it must never hold the runtime's token (registry, eviction, every
agent's heartbeat). The runtime asks the worker for a token that acts only as the agent
(``POST …/agents/{a}/token``) before each start (before its workspace is cloned) and renews it well before it expires; the plugin
and the git credential helper read the file at call time. Because nothing secret is frozen in
kilo's environment, a new runtime token (``/refresh-token``) re-issues the agents' files without
restarting any kilo.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from gastown.core.jsonlog import get_logger, register_secret
from supervisor.agent import AgentRecord
from supervisor.supervisor import Supervisor
from supervisor.worker_client import WorkerError

log = get_logger("supervisor.agent_tokens")

RENEW_INTERVAL_S = 3600.0  # tokens live 8 h: renewed hourly, a failed renewal has hours to succeed
ISSUE_TIMEOUT_S = 10.0


def write_token(path: Path, token: str, owner: tuple[int, int] | None) -> None:
    """Atomically (a reader never sees half a token), mode 0600, owned by the agent's user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path.parent, *owner)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, token.encode())
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class AgentTokens:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.issued = 0
        supervisor.prepare_hooks.append(self.issue)

    async def issue(self, rec: AgentRecord) -> bool:
        """Fetch and write ``rec``'s token; False (logged) when the worker is not configured or
        refuses: the agent still starts, its tools say they have no token until a renewal works."""
        worker = self.sup.worker
        if not worker.configured:
            return False
        try:
            data: Any = await worker.call("POST", f"/agents/{rec.agent_id}/token", {}, timeout=ISSUE_TIMEOUT_S)
        except WorkerError as e:
            log.warning("agent_token.issue_failed", agent_id=rec.agent_id, status=e.status)
            return False
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            log.warning("agent_token.issue_failed", agent_id=rec.agent_id, status=None)
            return False
        register_secret(token)
        await asyncio.to_thread(write_token, rec.paths.token_file, token, self.sup.owner_of(rec))
        self.issued += 1
        return True

    async def renew_all(self) -> list[dict[str, Any]]:
        """A fresh token for every live agent (hourly, and at once after a new runtime token)."""

        async def one(rec: AgentRecord) -> dict[str, Any]:
            t0 = time.monotonic()
            ok = await self.issue(rec)
            out: dict[str, Any] = {"agent_id": rec.agent_id, "success": ok,
                                   "duration_ms": int((time.monotonic() - t0) * 1000)}
            if not ok:
                out["error"] = "the worker did not issue the agent's token"
            return out

        return list(await asyncio.gather(*(one(r) for r in self.sup.active_agents())))
