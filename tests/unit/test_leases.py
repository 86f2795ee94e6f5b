"""Which replica reconciles which town (worker_api/leases.py), on SQLite and on PostgreSQL: each town
held by exactly one replica, shared fairly, taken over when its holder stops renewing, and a tick
under a lost lease commits nothing."""
from __future__ import annotations

import asyncio

import pytest

from tests.test_reconciler_support import Harness, h  # noqa: F401
from tests.test_worker_api_support import ADMIN_TOKEN, Worker, clock, town, worker  # noqa: F401
from worker_api import drain, leases, store
from worker_api.leases import LEASE_TTL_MS, LeaseLost
from worker_api.reconciler.tick import run_tick


def _towns(h: Harness, n: int) -> list[str]:
    """The harness's town and n - 1 more."""
    return sorted([h.town_id, *(h.setup_town(f"town-{i:02d}") for i in range(n - 1))])


def _holders(h: Harness) -> dict[str, str]:
    return dict(h.sync(lambda c: [(r[0], r[1]) for r in c.execute("SELECT town_id, owner FROM town_leases"
                                                                    " WHERE expires_at >= ?", (h.clock.ms,))]))


def test_two_replicas_share_the_towns_and_each_town_has_one_holder(h: Harness) -> None:
    towns = _towns(h, 6)
    a = h.sync(leases.sync_tx, "ra", h.clock.ms)
    assert sorted(a.mine) == towns  # alone: every town
    b = h.sync(leases.sync_tx, "rb", h.clock.ms)
    assert b.mine == {} and b.replicas == 2  # all held live by ra
    for _ in range(3):  # ra hands back past its share + 1; rb claims up to its share
        a = h.sync(leases.sync_tx, "ra", h.clock.ms)
        b = h.sync(leases.sync_tx, "rb", h.clock.ms)
    assert not set(a.mine) & set(b.mine)
    assert len(a.mine) + len(b.mine) == 6 and 2 <= len(b.mine) <= 4
    assert sorted(_holders(h)) == towns


def test_a_replica_that_stops_renewing_loses_its_towns_to_another_with_a_new_fence(h: Harness) -> None:
    """A replica killed with -9 renews nothing: once its leases expire the survivor takes every town."""
    towns = _towns(h, 4)
    a = h.sync(leases.sync_tx, "ra", h.clock.ms)
    h.clock.advance(LEASE_TTL_MS / 1000 / 2)
    assert h.sync(leases.sync_tx, "rb", h.clock.ms).mine == {}  # still live
    h.clock.advance(LEASE_TTL_MS / 1000)
    b = h.sync(leases.sync_tx, "rb", h.clock.ms)
    assert sorted(b.mine) == towns and b.replicas == 1
    assert all(b.mine[t] == a.mine[t] + 1 for t in towns)  # a new holder, a new fence
    with pytest.raises(LeaseLost):
        h.sync(leases.check, towns[0], "ra", a.mine[towns[0]])
    h.sync(leases.check, towns[0], "rb", b.mine[towns[0]])


def test_a_stopping_replica_hands_its_towns_back_at_once(h: Harness) -> None:
    towns = _towns(h, 3)
    h.sync(leases.sync_tx, "ra", h.clock.ms)
    h.sync(leases.sync_tx, "rb", h.clock.ms)
    h.sync(leases.release_tx, "ra")
    assert sorted(h.sync(leases.sync_tx, "rb", h.clock.ms).mine) == towns  # no TTL to wait out


def test_claiming_a_town_someone_holds_live_fails_and_a_deleted_town_is_not_claimed(h: Harness) -> None:
    [town] = _towns(h, 1)
    assert h.sync(leases.claim_tx, town, "ra", h.clock.ms) == 1
    assert h.sync(leases.claim_tx, town, "rb", h.clock.ms) is None
    assert h.sync(leases.claim_tx, town, "ra", h.clock.ms) == 1  # its own: unchanged
    assert h.sync(leases.claim_tx, "town-gone", "ra", h.clock.ms) is None


async def test_a_tick_under_a_lost_lease_commits_nothing(h: Harness) -> None:
    """A replica that stalled past its lease (a GC pause, a frozen VM) wakes up mid-tick: its
    decisions must not land over those of the replica that took the town meanwhile."""
    old = h.sync(leases.claim_tx, h.town_id, "ra", h.clock.ms)
    bead = h.sling("Fix it")
    h.clock.advance(LEASE_TTL_MS / 1000 + 1)
    new = h.sync(leases.claim_tx, h.town_id, "rb", h.clock.ms)
    assert new == old + 1

    def stale(conn: object) -> None:
        leases.check(conn, h.town_id, "ra", old)
    with pytest.raises(LeaseLost):
        await run_tick(h.db, h.town_id, h.deps, lambda: h.clock.ms, stale)
    assert h.bead(bead)["status"] == "open" and h.container.starts == []

    def current(conn: object) -> None:
        leases.check(conn, h.town_id, "rb", new)
    await run_tick(h.db, h.town_id, h.deps, lambda: h.clock.ms, current)
    assert h.bead(bead)["status"] == "in_progress" and len(h.container.starts) == 1


async def test_replicas_racing_for_the_same_towns_never_both_hold_one(h: Harness) -> None:
    """Many syncs at once from three replicas (serializable transactions on PostgreSQL, one writer on
    SQLite): whoever wins, a town has one holder and each replica's view agrees with the table."""
    towns = _towns(h, 9)
    results = await asyncio.gather(*(h.db.run(leases.sync_tx, f"r{i % 3}", h.clock.ms) for i in range(12)))
    final = {f"r{i}": h.sync(leases.sync_tx, f"r{i}", h.clock.ms) for i in range(3)}
    held = [t for r in final.values() for t in r.mine]
    assert len(held) == len(set(held)) and set(held) <= set(towns)
    assert results and _holders(h) == {t: r for r, hold in final.items() for t in hold.mine}


async def test_town_status_after_a_drain_timed_out_is_not_a_500_on_a_read_only_transaction(
        worker: Worker, town: tuple[str, str]) -> None:
    """The status route reads in a read-only transaction, and reading an expired drain deleted it:
    SQLite let the write through, PostgreSQL refused it (a 500 until the next tick cleared it)."""
    town_id, _ = town

    def expired(conn: object) -> None:
        store.kv_set(conn, town_id, drain.K_DRAINING, True)
        store.kv_set(conn, town_id, drain.K_NONCE, "n")
        store.kv_set(conn, town_id, drain.K_STARTED_AT, worker.clock.ms - drain.DRAIN_TIMEOUT_MS - 1)
    await worker.db.run(expired)
    code, body = await worker.call("GET", f"/api/towns/{town_id}/status", token=ADMIN_TOKEN)
    assert code == 200 and body["draining"] is False, body
