"""AgentRecord details that need no kilo: the RSS cache keeps status calls cheap."""
from __future__ import annotations

from pathlib import Path

from supervisor.agent import AgentRecord
from supervisor.kilo_env import AgentPaths
from supervisor.models import StartAgentRequest
from tests.conftest import start_body


class CountingProcess:
    """Stands in for a KiloProcess: counts the (expensive) process-tree walks."""

    def __init__(self, pid: int) -> None:
        self.pid, self.running, self.walks = pid, True, 0

    def rss_bytes(self) -> int:
        self.walks += 1
        return 123_000_000


def test_status_polling_walks_the_process_tree_at_most_once_per_second(tmp_path: Path):
    rec = AgentRecord(request=StartAgentRequest.model_validate(start_body()), paths=AgentPaths.for_agent(tmp_path, "polecat-1"))
    proc = CountingProcess(4242)
    rec.process = proc
    assert [rec.rss_bytes() for _ in range(100)] == [123_000_000] * 100
    assert proc.walks == 1
    assert rec.rss_bytes(max_age_s=0) == 123_000_000 and proc.walks == 2
    other = CountingProcess(4343)
    rec.process = other  # a new kilo (hot swap) never reuses the old process's figure
    rec.rss_bytes()
    assert other.walks == 1
