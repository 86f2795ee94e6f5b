"""One time unit on the wire: integer epoch milliseconds, on both APIs (``gastown/contract/wire.py``).

The control server used to answer epoch seconds while the worker stored milliseconds and guessed
that any number below 1e11 was seconds."""
from __future__ import annotations

import time
from pathlib import Path

from gastown.contract.wire import epoch_ms
from supervisor.agent import AgentRecord
from supervisor.heartbeat import Heartbeats
from supervisor.kilo_env import AgentPaths
from supervisor.models import StartAgentRequest
from supervisor.persistence import status_snapshot
from tests.conftest import start_body
from worker_api.models import Heartbeat


def test_agent_status_and_heartbeat_times_are_epoch_ms(tmp_path: Path):
    before = int(time.time() * 1000)
    rec = AgentRecord(request=StartAgentRequest.model_validate(start_body()), paths=AgentPaths.for_agent(tmp_path, "polecat-1"))
    rec.last_event_at = rec.last_activity_at = time.time()
    st = rec.status()
    for field in ("started_at", "last_event_at", "last_activity_at"):
        assert isinstance(st[field], int) and before <= st[field] <= int(time.time() * 1000) + 1, (field, st[field])
    body = Heartbeats.body(None, rec)  # type: ignore[arg-type]  # the body needs only the record
    assert body["last_event_at"] == st["last_event_at"]
    assert Heartbeat.model_validate(body).last_event_at == st["last_event_at"]  # the worker keeps it as is


def test_snapshot_times_are_epoch_ms_whatever_the_manifest_holds():
    assert status_snapshot({"at": "2027-01-15T08:00:00Z"})["at"] == 1_800_000_000_000
    assert status_snapshot({"at": 1_799_985_600.5})["at"] == 1_799_985_600_500


def test_the_worker_keeps_ms_as_they_are_and_refuses_seconds():
    """An older container still sending seconds gets a 400, not its times stored as 1970 (which
    would make every working agent look decades quiet to the GUPP rule)."""
    import pytest
    from pydantic import ValidationError

    assert Heartbeat.model_validate({"status": "running", "last_event_at": 1_800_000_000_123}).last_event_at == 1_800_000_000_123
    with pytest.raises(ValidationError, match="looks like seconds"):
        Heartbeat.model_validate({"status": "running", "last_event_at": 1_800_000_000})
    assert epoch_ms(None) is None
