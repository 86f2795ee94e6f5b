"""The mayor's desk decisions that need no kilo: what goes next, and that a working mayor whose turn
is over is seen as waiting (the delivery itself runs end to end in tests/e2e/test_front_door_kilo.py)."""
from __future__ import annotations

import asyncio
from typing import Any

from tests.test_worker_api_support import ADMIN_TOKEN, Worker, clock, town, worker  # noqa: F401
from worker_api import lifecycle as lc
from worker_api import store
from worker_api.dispatch import Target
from worker_api.front import desk as desk_mod
from worker_api.front.desk import MayorDesk, _pending_tx, _working_tx, enqueue_tx


async def test_a_users_message_goes_before_older_notices(worker: Worker, town: tuple[str, str]) -> None:
    """Notices queued overnight (one turn each) held a user's message back for as many turns."""
    town_id, _ = town
    db = worker.db
    await db.run(enqueue_tx, town_id, "first words", worker.clock.ms)  # makes the mayor
    await db.run(lc.notify_mayor, town_id, "Merged: a", worker.clock.ms)
    await db.run(lc.notify_mayor, town_id, "Merged: b", worker.clock.ms + 1)
    await db.run(enqueue_tx, town_id, "and now?", worker.clock.ms + 2)
    _, _, mayor_id, turns = await db.run(_pending_tx, town_id, worker.clock.ms + 3)
    assert mayor_id == "mayor"
    assert [(t.kind, t.text) for t in turns] == [("message", "first words"), ("message", "and now?"),
                                                 ("notice", "Merged: a"), ("notice", "Merged: b")]


async def test_a_working_mayor_whose_heartbeat_shows_its_turn_over_is_waiting(worker: Worker,
                                                                              town: tuple[str, str]) -> None:
    """Only the idle callback of a turn flipped the mayor back; a turn that ended before it was
    marked working, or a kilo that died mid-turn, left it working for good (and its container never
    idle-stopped)."""
    town_id, token = town
    await worker.db.run(enqueue_tx, town_id, "hi", worker.clock.ms)
    since = worker.clock.ms
    await worker.db.run(_working_tx, town_id, "mayor", since)
    hb = {"status": "running", "last_event_type": "session.idle", "last_event_at": since - 5, "active_tools": [],
          "message_count": 2}
    path = f"/api/towns/{town_id}/agents/mayor/heartbeat"
    assert (await worker.call("POST", path, token=token, json=hb))[0] == 200
    assert (await worker.db.run(store.get_agent, town_id, "mayor"))["status"] == "working"  # an older idle
    assert (await worker.call("POST", path, token=token, json={**hb, "last_event_at": since + 5}))[0] == 200
    assert (await worker.db.run(store.get_agent, town_id, "mayor"))["status"] == "waiting"
    await worker.db.run(_working_tx, town_id, "mayor", since + 10)
    dead = {**hb, "status": "fatal", "last_event_type": "message.part.delta", "last_event_at": since + 11}
    assert (await worker.call("POST", path, token=token, json=dead))[0] == 200
    assert (await worker.db.run(store.get_agent, town_id, "mayor"))["status"] == "waiting"


class SwapClient:
    """A container whose first hot swaps fail (the new kilo server slow to boot: the container
    rolls back and answers 502), then succeed; the mayor runs and is idle throughout."""

    def __init__(self, answers: list[int | None]) -> None:
        self.answers = answers
        self.pushed: list[str] = []

    async def agent_statuses(self, target: Target, agent_ids: list[str]) -> dict[str, str]:
        return dict.fromkeys(agent_ids, "running")

    async def agent_status(self, target: Target, agent_id: str) -> dict[str, Any]:
        return {"status": "running", "started_at": 0, "message_count": 0}

    async def patch_model(self, target: Target, agent_id: str, model: str, small_model: str | None) -> int | None:
        self.pushed.append(model)
        return self.answers.pop(0) if self.answers else 200

    async def aclose(self) -> None:
        pass


async def test_a_model_swap_that_failed_once_is_pushed_again(worker: Worker,
                                                             town: tuple[str, str]) -> None:
    """A swap whose new kilo outlasted the container's 20 s on a loaded CI box answered 502; the
    desk logged it and gave up, so the mayor kept the old model while the town said the new one."""
    town_id, _ = town
    await worker.db.run(enqueue_tx, town_id, "hi", worker.clock.ms)  # makes the mayor
    client = SwapClient([502, None, 200])
    desk = MayorDesk(worker.db, lambda: worker.clock.ms, client, backoff=_no_wait)  # type: ignore[arg-type]
    desk.push_model(town_id, "fake/m2", None)
    await desk._model_tasks[town_id]
    assert client.pushed == ["fake/m2"] * 3
    client2 = SwapClient([502] * 10)
    desk2 = MayorDesk(worker.db, lambda: worker.clock.ms, client2, backoff=_no_wait)  # type: ignore[arg-type]
    desk2.push_model(town_id, "fake/m3", None)
    await desk2._model_tasks[town_id]
    assert client2.pushed == ["fake/m3"] * desk_mod.MODEL_PUSH_ATTEMPTS  # bounded: a broken container is not pushed forever


async def _no_wait(delay: float) -> None:
    pass


class RunningOn(SwapClient):
    def __init__(self, model: str) -> None:
        super().__init__([])
        self.model = model

    async def agent_status(self, target: Target, agent_id: str) -> dict[str, Any]:
        return {"status": "running", "started_at": 0, "message_count": 0, "model": self.model}


async def test_a_replica_that_takes_a_town_over_finishes_the_model_push_its_holder_died_with(
        worker: Worker, town: tuple[str, str]) -> None:
    """A model push lives in a task of the replica holding the town; killed mid-push, its successor
    must see the running mayor on the old model and push the setting again."""
    town_id, _ = town
    await worker.db.run(enqueue_tx, town_id, "hi", worker.clock.ms)
    stale = RunningOn("fake/old")
    desk = MayorDesk(worker.db, lambda: worker.clock.ms, stale, backoff=_no_wait)  # type: ignore[arg-type]
    desk.adopted(town_id)
    await desk._model_tasks[town_id]
    await desk._model_tasks[town_id]  # the push the check started
    assert stale.pushed == ["kilo/anthropic/claude-sonnet-4"]  # the town's setting
    current = RunningOn("kilo/anthropic/claude-sonnet-4")
    desk2 = MayorDesk(worker.db, lambda: worker.clock.ms, current, backoff=_no_wait)  # type: ignore[arg-type]
    desk2.adopted(town_id)
    await desk2._model_tasks[town_id]
    assert current.pushed == []
    await desk.close()
    await desk2.close()


class HandedOver(SwapClient):
    """The mayor is busy with a turn; by the time it is idle the town belongs to another replica."""

    def __init__(self, holder: list[bool]) -> None:
        super().__init__([])
        self.holder = holder
        self.sent: list[str] = []

    async def agent_status(self, target: Target, agent_id: str) -> dict[str, Any]:
        self.holder[0] = False  # handed over while we waited for the turn to end
        return {"status": "running", "started_at": 0, "message_count": 0}

    async def send_message(self, target: Target, agent_id: str, prompt: str) -> bool:
        self.sent.append(prompt)
        return True


async def test_a_desk_whose_town_was_handed_over_mid_wait_does_not_send_the_turn(worker: Worker,
                                                                                 town: tuple[str, str]) -> None:
    """Two replicas' desks waited for the same mayor to go idle and both sent the queued message."""
    town_id, _ = town
    await worker.db.run(enqueue_tx, town_id, "hello", worker.clock.ms)
    holder = [True]
    client = HandedOver(holder)
    desk = MayorDesk(worker.db, lambda: worker.clock.ms, client, owns=lambda _t: holder[0])  # type: ignore[arg-type]
    desk.wake(town_id)
    await asyncio.wait_for(desk._tasks[town_id], 10)
    assert client.sent == [] and not holder[0]
    _, _, _, turns = await worker.db.run(_pending_tx, town_id, worker.clock.ms)
    assert [t.text for t in turns] == ["hello"]  # still queued, for the new holder
    await desk.close()
