"""Operator telemetry: the periodic ``container.memory_usage`` line (runtime RSS, every kilo child's
RSS, agent counts), so an external SIGKILL can be matched with memory growth."""
from __future__ import annotations

import os
import time

import psutil

from gastown.core.jsonlog import get_logger
from supervisor.supervisor import Supervisor

log = get_logger("container")

_MB = 2**20
STARTED_AT = time.time()


def runtime_rss_bytes() -> int:
    try:
        return psutil.Process(os.getpid()).memory_info().rss
    except psutil.Error:
        return 0


def memory_report(supervisor: Supervisor) -> dict:
    per_agent = {a.agent_id: a.rss_bytes() for a in supervisor.active_agents()}
    return {
        "rss_mb": round(runtime_rss_bytes() / _MB, 1),
        "children_rss_mb": round(sum(per_agent.values()) / _MB, 1),
        "agent_rss_mb": {k: round(v / _MB, 1) for k, v in per_agent.items()},
        "agents": len(supervisor.agents),
        "active_agents": len(per_agent),
        "available_mb": round(psutil.virtual_memory().available / _MB, 1),
        "uptime_ms": int((time.time() - STARTED_AT) * 1000),
    }


async def log_memory(supervisor: Supervisor) -> None:
    log.info("container.memory_usage", **memory_report(supervisor))
