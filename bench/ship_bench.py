"""Sling to merged: one bead through a whole town of real processes (forge, ``gastown worker``,
``gastown container``, SeaweedFS, real kilo on the scripted model): a polecat writes a file, commits
and pushes it, calls gt_done; the refinery reads it and approves; the worker merges the branch on the
forge. Phases come from the bead's status as the worker reports it (polled every 50 ms).

Baseline, measured in the same run: the same change made by hand with git against the same forge
(clone, commit, push the branch, the worker's own merge function), i.e. the git floor without agents.
The ratio says what a town costs over that floor; kilo's boots (one per agent start) dominate it.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import emit, log, machine
from gastown.local.s3servers import start_seaweedfs
from gastown.local.scripted_model import FakeLLM
from tests.townproc import FORGE_TOKEN, TownProcs, script, tool
from worker_api.scm.gitmerge import merge_branch

RUNS = int(os.environ.get("BENCH_SHIP_RUNS", "3"))


def bead_script(n: int) -> str:
    name = f"bench{n}.txt"
    review = script(tool("bash", command=f"cat {name}", description="read"),
                    tool("gastown_gt_done", branch="{{branch}}", summary="approved"))
    return script(tool("bash", command=f"echo {n} > {name} && git add {name} && git commit -qm 'add {name}'"
                                       " && git push -q -u origin HEAD", description="commit and push"),
                  tool("gastown_gt_done", branch="{{branch}}", summary=f"Added {name}. {review}"))


def by_hand(town: TownProcs, n: int, tmp: Path) -> float:
    """The same change without a town: clone, commit, push, merge (blocking)."""
    t0 = time.perf_counter()
    work = town.clone(tmp / f"hand-{n}")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x", "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {FORGE_TOKEN}"}
    (work / f"hand{n}.txt").write_text(f"{n}\n")
    for args in (["checkout", "-qb", f"hand/{n}"], ["add", "."], ["commit", "-qm", f"hand {n}"],
                 ["push", "-q", "origin", "HEAD"]):
        subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True, timeout=60)
    res = merge_branch(town.repo_url, FORGE_TOKEN, branch=f"hand/{n}", target="main", message=f"Merge hand/{n}")
    assert res.outcome == "merged", res
    return time.perf_counter() - t0


async def one_bead(town: TownProcs, n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    code, slung = await town.api("POST", f"/api/towns/{town.town_id}/sling",
                                 {"rig_id": town.rig_id, "title": f"Bench {n}", "body": bead_script(n)})
    assert code == 201, slung
    seen: dict[str, float] = {}
    deadline = t0 + 300
    while "closed" not in seen:
        bead = await town.town(f"/beads/{slung['bead_id']}")
        seen.setdefault(bead["status"], time.perf_counter() - t0)
        if bead["status"] == "failed" or time.perf_counter() > deadline:
            raise AssertionError(f"bead {n} ended {bead['status']}: {town.logs()}")
        await asyncio.sleep(0.05)
    return {"dispatched_s": seen.get("in_progress", 0.0), "in_review_s": seen.get("in_review", 0.0),
            "merged_s": seen["closed"]}


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ship-") as td:
        tmp = Path(td)
        s3 = start_seaweedfs(tmp / "s3")
        try:
            async with FakeLLM() as llm:
                (tmp / "town").mkdir()
                town = TownProcs(tmp / "town", llm, s3)  # its forge makes a directory in it at once
                try:
                    await town.start()
                    runs, hands = [], []
                    for n in range(RUNS):
                        runs.append(await one_bead(town, n))
                        hands.append(await asyncio.to_thread(by_hand, town, n, tmp))
                        log(f"bead {n}: {runs[-1]}, by hand {hands[-1]:.2f} s")
                finally:
                    await town.close()
        finally:
            s3.stop()
    town_med = statistics.median(r["merged_s"] for r in runs)
    hand_med = statistics.median(hands)
    emit({"benchmark": "sling_to_merged", "runs": RUNS, "town_ms_median": round(town_med * 1000),
          "phases_ms_median": {k: round(statistics.median(r[k] for r in runs) * 1000) for k in runs[0]},
          "baseline": "same change by hand: clone + commit + push + the worker's git merge, same forge, same run",
          "baseline_ms_median": round(hand_med * 1000), "ratio": round(town_med / hand_med, 1),
          "machine": machine()})


if __name__ == "__main__":
    asyncio.run(main())
