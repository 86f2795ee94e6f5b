"""Fixtures for the SCM tests: a fake GitHub on a real port, a provider pointed at it, and a
reconciler harness whose rig has a GitHub token and an auto-merge delay."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.fakes.fake_github import DEFAULT_TOKEN, FakeGitHub, FakePr
from tests.test_reconciler_support import FakeClock, FakeContainer, Harness
from worker_api.db import Database
from worker_api.scm import tokens
from worker_api.scm.github import GitHubProvider

DELAY_MIN = 5


@pytest.fixture
async def gh() -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def provider(gh: FakeGitHub) -> AsyncIterator[GitHubProvider]:
    p = GitHubProvider(gh.url, timeout_s=5.0)  # generous: a loaded CI box must not turn answers into timeouts
    yield p
    await p.aclose()


@pytest.fixture
def h(store_url: str, provider: GitHubProvider) -> Iterator[Harness]:
    db = Database(store_url)
    harness = Harness(db, FakeClock(), FakeContainer())
    harness.setup_town(mayor=True)
    harness.deps.scm = provider
    harness.sync(tokens.set_rig_token, harness.town_id, "rig-1", DEFAULT_TOKEN)
    harness.sync(tokens.set_auto_merge_delay, harness.town_id, "rig-1", DELAY_MIN)
    yield harness
    db.close()


async def open_pr_mr(h: Harness, pr_url: str) -> tuple[str, str]:
    """Sling → polecat done → MR → refinery done with ``pr_url``; the same tick polls the PR once.
    Returns (source bead id, MR bead id)."""
    bead_id = h.sling()
    await h.tick()
    polecat = h.bead(bead_id)["assignee_agent_id"]
    h.clock.advance(30)
    h.event("agent_done", polecat, branch="gt/polecat/1")
    await h.tick()
    [mr] = h.beads(type="merge_request")
    h.clock.advance(30)
    h.event("agent_done", mr["assignee_agent_id"], branch="gt/polecat/1", pr_url=pr_url)
    await h.tick()
    return bead_id, mr["bead_id"]


async def minutes(h: Harness, n: int, step_s: int = 60) -> None:
    """Tick once per ``step_s`` for ``n`` minutes of fake time."""
    for _ in range(n * 60 // step_s):
        h.clock.advance(step_s)
        await h.tick()


def short_timeout(provider: GitHubProvider, gh: FakeGitHub) -> None:
    """Make the fake answer later than the provider waits."""
    provider.timeout = aiohttp.ClientTimeout(total=0.2)
    gh.delay_s = 0.6


def meta(h: Harness, bead_id: str) -> dict:
    return h.bead(bead_id)["metadata"]


def history(h: Harness, bead_id: str, event_type: str) -> list[dict]:
    from worker_api import beads as bx

    return [e for e in h.sync(bx.bead_history, h.town_id, bead_id) if e["event_type"] == event_type]


__all__ = ["DEFAULT_TOKEN", "DELAY_MIN", "FakeGitHub", "FakePr", "gh", "h", "history", "meta", "minutes",
           "open_pr_mr", "provider", "short_timeout"]
