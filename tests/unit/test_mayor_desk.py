"""The mayor's desk decisions that need no kilo: what goes next, and that a working mayor whose turn
is over is seen as waiting (the delivery itself runs end to end in tests/e2e/test_front_door_kilo.py)."""
from __future__ import annotations

from tests.test_worker_api_support import ADMIN_TOKEN, Worker, clock, town, worker  # noqa: F401
from worker_api import lifecycle as lc
from worker_api import store
from worker_api.front.desk import _pending_tx, _working_tx, enqueue_tx


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
