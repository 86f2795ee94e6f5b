"""Several `gastown worker` processes on one real PostgreSQL: beads slung through any replica are
dispatched exactly once, and when a replica is killed with -9 mid-run the survivors take its towns
over within the lease's time and nothing is lost or dispatched twice.

The towns' containers are one lightweight fake speaking the control API (tests/replicas.py), which
counts the start requests: the dispatch count is what the containers saw."""
from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.pgserver import PgServer
from tests.test_worker_api_support import ADMIN_TOKEN
from tests.replicas import FakeContainers, Replica, admin_call, create_towns, holders
from tests.townproc import until

TOWNS = 20
BEADS_PER_TOWN = 10   # MAX_ACTIVE_POLECATS: every bead of a town can be dispatched at once


@pytest.mark.timeout(420)
@pytest.mark.parametrize("replicas", [2, 3])
async def test_beads_through_any_replica_are_dispatched_once_and_a_killed_replicas_towns_go_on(
        pg_server: PgServer, tmp_path: Path, replicas: int) -> None:
    url = pg_server.new_database("replicas")
    fake = FakeContainers()
    await fake.start()
    workers = [Replica(i, url, tmp_path / f"worker-{i}.log") for i in range(replicas)]
    try:
        async with aiohttp.ClientSession() as http:
            for w in workers:
                await w.wait_up(http)
            towns = await create_towns(http, fake, workers, TOWNS)  # through every replica in turn

            fake.heartbeat([w.url for w in workers])

            async def sling(i: int, via: list[Replica]) -> None:
                n, k = i % TOWNS, i // TOWNS
                w = via[i % len(via)]
                code, bead = await admin_call(http, "POST", f"{w.url}/api/towns/{towns[n]}/sling",
                                              {"rig_id": "r1", "title": f"bead-{n:02d}-{k}"})
                assert code == 201, (w.name, bead)

            async def started(count: int) -> bool:
                return len(fake.starts) >= count

            half = TOWNS * BEADS_PER_TOWN // 2
            for i in range(half):
                await sling(i, workers)
            await until(lambda: started(half), 120, "the first wave's dispatch")
            held = await holders(http, workers[-1], towns)
            assert all(held.values()), held  # every town reconciled by some replica
            by_replica = Counter(held.values())
            assert len(by_replica) == replicas, by_replica  # the towns were shared out
            victim_id, _ = by_replica.most_common(1)[0]
            victim = next(w for w in workers if w.owns(victim_id))
            survivors = [w for w in workers if w is not victim]

            # The second wave: a quarter through every replica, then the busiest one killed -9,
            # then the last quarter through the others.
            for i in range(half, half + half // 2):
                await sling(i, workers)
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            killed_at = time.monotonic()
            for i in range(half + half // 2, 2 * half):
                await sling(i, survivors)

            async def taken_over() -> bool:
                now = await holders(http, survivors[0], towns)
                return all(h is not None and h != victim_id for h in now.values())
            await until(taken_over, 60, "the victim's towns taken over", every=0.25)
            takeover_s = time.monotonic() - killed_at
            await until(lambda: started(2 * half), 120, "every bead dispatched")
            await asyncio.sleep(8)  # a double dispatch would show within a tick or two

        per_title = Counter(title for _, _, title in fake.starts)
        expected = {f"bead-{n:02d}-{k}" for n in range(TOWNS) for k in range(BEADS_PER_TOWN)}
        assert set(per_title) == expected, sorted(set(per_title) ^ expected)[:10]
        twice = {t: [s for s in fake.starts if s[2] == t] for t, c in per_title.items() if c != 1}
        assert twice == {}, f"dispatched more than once (victim {victim_id}): {twice}"
        assert len(fake.starts) == TOWNS * BEADS_PER_TOWN and fake.bad_auth == 0 and fake.beats > 0
        assert takeover_s < 20, f"takeover took {takeover_s:.1f} s (lease TTL 10 s + renew 3 s)"
        print(f"replicas={replicas} takeover_s={takeover_s:.1f}")
        for w in survivors:
            assert w.stop() == 0, w.log.read_text()[-3000:]
        for w in workers:
            text = w.log.read_text()
            assert pg_server.password not in text, f"the database password in {w.name}'s log"
            assert "Traceback" not in text or w is victim, text[-3000:]
    finally:
        for w in workers:
            w.kill()
        await fake.close()


@pytest.mark.timeout(120)
async def test_a_live_stream_on_one_replica_gets_the_events_another_replica_stored(pg_server: PgServer,
                                                                                tmp_path: Path) -> None:
    """A container's events reach whichever replica its request lands on; a user's stream may be held
    by another. Without the bus that stream saw them only at its next poll (15 s)."""
    url = pg_server.new_database("stream")
    fake = FakeContainers()
    await fake.start()
    a, b = Replica(0, url, tmp_path / "a.log"), Replica(1, url, tmp_path / "b.log")
    try:
        async with aiohttp.ClientSession() as http:
            await a.wait_up(http)
            await b.wait_up(http)
            [town] = await create_towns(http, fake, [a], 1)
            _, container_token = fake.towns["0"]
            got: asyncio.Queue[tuple[float, str]] = asyncio.Queue()

            async def listen() -> None:
                async with http.get(f"{b.url}/api/towns/{town}/events/stream", headers={
                        "Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
                    assert resp.status == 200
                    async for line in resp.content:
                        if line.startswith(b"data:"):
                            await got.put((time.monotonic(), json.loads(line[5:])["type"]))
            listener = asyncio.create_task(listen())
            await asyncio.sleep(1.5)  # the stream is open and waiting on replica b
            lags = []
            for i in range(3):
                sent = time.monotonic()
                async with http.post(f"{a.url}/api/towns/{town}/agent-events", json={"events": [
                        {"agent_id": "mayor", "id": i + 1, "type": f"probe.{i}", "data": {}, "ts": 1_700_000_000_000 + i}]},
                        headers={"Authorization": f"Bearer {container_token}"}) as resp:
                    assert resp.status == 200, await resp.text()
                at, kind = await asyncio.wait_for(got.get(), 20)
                assert kind == f"probe.{i}"
                lags.append(at - sent)
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        assert max(lags) < 3, lags  # a NOTIFY away, not the stream's 15 s poll
    finally:
        for w in (a, b):
            w.kill()
        await fake.close()
