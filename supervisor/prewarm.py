"""Mayor prewarm: a kilo server started (and its session settled) before anyone asks for it.

Hydration warms the mayor when the registry holds none, so the first ``/agents/start`` of the
mayor adopts a server that already answers. Adoption is safe only when the env the start builds is
byte-identical to the one the warm server was spawned with (same config, identity, tokens);
anything else replaces it, so a prewarmed mayor can never run with stale tools or credentials.
"""
from __future__ import annotations

from gastown.core.jsonlog import get_logger
from supervisor.agent import AgentRecord
from supervisor.bringup import BringUp, Host, Server, Session
from supervisor.kilo_client import KiloApiError, KiloClient
from supervisor.kilo_process import KiloProcess
from supervisor.models import StartAgentRequest

log = get_logger("supervisor")


class PrewarmPool:
    def __init__(self, supervisor: Host) -> None:
        self.sup = supervisor
        self.entries: dict[str, tuple[AgentRecord, KiloProcess, KiloClient]] = {}

    async def warm(self, req: StartAgentRequest) -> None:
        """Start ``req``'s kilo server and settle its session (no prompt), for a later start to adopt."""
        sup = self.sup
        async with sup.lock(req.agent_id):
            current = sup.agents.get(req.agent_id)
            if req.agent_id in self.entries or (current is not None and current.active):
                return
            rec = sup.new_record(req)
            await sup.prepare_workspace(rec)
            async with BringUp(sup, rec) as up:
                server = await up.spawn()
                try:
                    # Pays kilo's lazy directory-instance boot now, and settles the session the start
                    # will use off its path: the latest (resumed when it has messages), or a new one.
                    await up.settle(Session.open)
                except KiloApiError as e:
                    log.warning("mayor.prewarm_warmup_failed", agent_id=req.agent_id, error=str(e))
            self.entries[req.agent_id] = (rec, server.proc, server.client)

    async def adopt(self, rec: AgentRecord) -> Server | None:
        """The warm server for the starting ``rec`` when its env matches (its session settled on
        ``rec``); otherwise it is stopped and the start spawns its own."""
        entry = self.entries.pop(rec.agent_id, None)
        if entry is None:
            return None
        pre, proc, client = entry
        env = self.sup.build_launch(rec, pre.child_env.get("KILO_SERVER_PASSWORD", ""))
        if proc.running and env == pre.child_env:
            rec.child_env, rec.prewarmed, rec.restored = env, True, pre.restored
            rec.session_id, rec.resumed = pre.session_id, pre.resumed
            rec.last_snapshot = pre.last_snapshot
            log.info("mayor.prewarm_reused", agent_id=rec.agent_id, pid=proc.pid)
            return Server(proc, client)
        diff = sorted(k for k in set(env) | set(pre.child_env) if env.get(k) != pre.child_env.get(k))
        log.info("mayor.prewarm_replaced", agent_id=rec.agent_id, differing_keys=diff)
        await Server(proc, client).close()
        return None

    async def close(self) -> None:
        """Stop every warm server nobody adopted (container shutdown)."""
        for agent_id, (_, proc, client) in list(self.entries.items()):
            self.entries.pop(agent_id, None)
            await Server(proc, client).close()
