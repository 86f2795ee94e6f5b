"""Test doubles and a harness for reconciler tests: a fake container, a fake clock, a town in a
real SQLite store, and helpers that record events exactly as the container routes do."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from worker_api import beads as bx
from worker_api import events as ev
from worker_api import store
from worker_api.db import Database
from worker_api.dispatch import StartResult, Target
from worker_api.reconciler.tick import TickDeps, TickResult, run_tick

T0_MS = 1_800_000_000_000
CONTROL = "control-token-for-reconciler-tests"


class FakeClock:
    def __init__(self, ms: int = T0_MS) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


class FakeContainer:
    """Records every call. ``outcomes`` is consumed per start (default ``started``); ``statuses``
    answers ``agent_statuses`` (default ``running``)."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.stops: list[str] = []
        self.messages: list[tuple[str, str]] = []
        self.outcomes: list[str] = []
        self.statuses: dict[str, str] = {}
        self.targets: list[Target] = []

    async def start_agent(self, target: Target, request: dict[str, Any]) -> StartResult:
        self.targets.append(target)
        self.starts.append(request)
        outcome = self.outcomes.pop(0) if self.outcomes else "started"
        return StartResult(outcome, 201 if outcome == "started" else None)

    async def agent_statuses(self, target: Target, agent_ids: list[str]) -> dict[str, str]:
        return {a: self.statuses.get(a, "running") for a in agent_ids}

    async def stop_agent(self, target: Target, agent_id: str) -> bool:
        self.stops.append(agent_id)
        return True

    async def send_message(self, target: Target, agent_id: str, prompt: str) -> bool:
        self.messages.append((agent_id, prompt))
        return True


def seeded_ids(seed: int):  # noqa: ANN201
    rnd = random.Random(seed)
    return lambda prefix: f"{prefix}-{rnd.getrandbits(48):012x}"


@dataclass
class Harness:
    db: Database
    clock: FakeClock
    container: FakeContainer
    town_id: str = "town-1"
    deps: TickDeps = field(init=False)

    def __post_init__(self) -> None:
        self.deps = TickDeps(container=self.container, ids=seeded_ids(1))

    def sync(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self.db.run_sync(fn, *args, **kw)

    def setup_town(self, town_id: str | None = None, rig_id: str = "rig-1", mayor: bool = False) -> str:
        town_id = town_id or self.town_id
        now = self.clock.ms
        self.sync(store.create_town, town_id=town_id, name="T", container_url="http://127.0.0.1:1", control_token=CONTROL,
                  default_model="fake/m1", small_model=None, organization_id=None, now_ms=now)
        self.sync(bx.create_rig, town_id, rig_id=rig_id, name="Repo", git_url="https://github.com/acme/widgets.git",
                  default_branch="main", now_ms=now)
        if mayor:
            self.sync(store.create_agent, town_id, agent_id="mayor-1", role="mayor", name="Mayor", rig_id=None,
                      now_ms=now)
        return town_id

    def sling(self, title: str = "Fix it", town_id: str | None = None, rig_id: str = "rig-1", **kw: Any) -> str:
        bead = self.sync(bx.create_bead, town_id or self.town_id, type="issue", title=title, rig_id=rig_id,
                         now_ms=self.clock.ms, **kw)
        return str(bead["bead_id"])

    async def tick(self, town_id: str | None = None) -> TickResult:
        result = await run_tick(self.db, town_id or self.town_id, self.deps, lambda: self.clock.ms)
        assert result is not None
        return result

    def event(self, event_type: str, agent_id: str | None = None, bead_id: str | None = None,
              town_id: str | None = None, **payload: Any) -> int:
        return int(self.sync(ev.insert_event, town_id or self.town_id, event_type, agent_id=agent_id, bead_id=bead_id,
                             payload=payload, now_ms=self.clock.ms))

    def heartbeat(self, agent_id: str, town_id: str | None = None, status: str = "running") -> None:
        self.sync(store.touch_agent_heartbeat, town_id or self.town_id, agent_id, container_status=status,
                  last_event_type=None, last_event_at=None, active_tools=[], message_count=0,
                  container_instance_id=None, now_ms=self.clock.ms)

    def bead(self, bead_id: str, town_id: str | None = None) -> dict[str, Any]:
        return self.sync(bx.get_bead, town_id or self.town_id, bead_id)

    def agent(self, agent_id: str, town_id: str | None = None) -> dict[str, Any]:
        return self.sync(store.get_agent, town_id or self.town_id, agent_id)

    def beads(self, town_id: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        return self.sync(bx.list_beads, town_id or self.town_id, limit=100000, **kw)


@pytest.fixture
def h(store_url: str) -> Iterator[Harness]:
    """A town with a rig and a mayor in a real store (SQLite, then PostgreSQL), on a fake clock and container."""
    db = Database(store_url)
    harness = Harness(db, FakeClock(), FakeContainer())
    harness.setup_town(mayor=True)
    yield harness
    db.close()
