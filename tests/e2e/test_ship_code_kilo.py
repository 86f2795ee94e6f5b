"""A town that ships code, end to end (issue 11): real ``gastown worker``, ``gastown container`` and
forge processes, real kilo on the scripted model, SeaweedFS for snapshots. Each bead's text is the
script its polecat's model follows, and the polecat's gt_done summary is the script its refinery
follows, so the agents act only through their real tools (bash, git over HTTP with the credential
helper, gt_done)."""
from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import psutil
import pytest

from gastown.local.scripted_model import Reply, ToolCall
from tests.s3servers import seaweedfs  # noqa: F401 - fixture
from tests.townproc import FORGE_TOKEN, TownProcs, script, tool, until

pytestmark = pytest.mark.kilo


def polecat_script(name: str, text: str) -> str:
    """Write ``name``, commit, push the branch, gt_done with a summary that scripts the review."""
    review = script(tool("bash", command=f"cat {name}", description="read the change"),
                    tool("gastown_gt_done", branch="{{branch}}", summary="approved"))
    return script(
        tool("bash", command=f"printf '{text}\\n' > {name} && git add {name} && git commit -qm 'add {name}'"
                             " && git push -q -u origin HEAD", description="commit and push"),
        tool("gastown_gt_done", branch="{{branch}}", summary=f"Added {name}. {review}"))


async def test_a_convoy_of_two_beads_is_written_reviewed_and_merged_on_the_forge(fake_llm, seaweedfs, tmp_path: Path):
    town = TownProcs(tmp_path, fake_llm, seaweedfs)
    try:
        await town.start()
        code, convoy = await town.api("POST", f"/api/towns/{town.town_id}/convoys", {
            "rig_id": town.rig_id, "title": "Two files",
            "beads": [{"title": "Add one", "body": polecat_script("one.txt", "first")},
                      {"title": "Add two", "body": polecat_script("two.txt", "second")}]})
        assert code == 201, convoy
        sampler = asyncio.create_task(sample_kilo_processes(seen_procs := []))

        async def landed():
            c = await town.town(f"/convoys/{convoy['convoy_id']}")
            return c if c["status"] in ("closed", "failed") else None

        try:
            final = await until(landed, 420, "the convoy to land", every=1.0)
        except AssertionError:
            raise AssertionError(town.logs()) from None
        assert final["status"] == "closed", final
        for bead_id in convoy["bead_ids"]:
            assert (await town.town(f"/beads/{bead_id}"))["status"] == "closed"
        mrs = (await town.town("/beads?type=merge_request"))["beads"]
        assert len(mrs) == 2 and all(m["status"] == "closed" for m in mrs)
        # Merged on the forge: a fresh clone over HTTP has both files and both polecats' commits.
        work = await asyncio.to_thread(town.clone, tmp_path / "fresh")
        assert (work / "one.txt").read_text() == "first\n" and (work / "two.txt").read_text() == "second\n"
        log = subprocess.run(["git", "log", "--format=%s"], cwd=work, capture_output=True, text=True,
                             check=True).stdout.splitlines()
        assert {"add one.txt", "add two.txt"} <= set(log), log  # both polecats' own commits are on main
        # Each MR was reviewed on its own branch: the refinery's `cat` read that MR's file.
        reviews = [r for r in fake_llm.chat_requests() if r.has_tool_result and "Review merge request" in r.last_user_text]
        seen = {name for r in reviews for name, text in (("one.txt", "first"), ("two.txt", "second"))
                if f"cat {name}" in r.last_user_text and text in str(r.messages[-1].get("content"))}
        assert seen == {"one.txt", "two.txt"}
        sampler.cancel()
        await no_token_anywhere(town, seen_procs, tmp_path)
    finally:
        await town.close()


async def sample_kilo_processes(out: list[str]) -> None:
    """Every kilo's argv and env while the town works (what an agent's ``ps`` or /proc shows)."""
    while True:
        for p in psutil.process_iter(["cmdline", "environ"]):
            try:
                cmd = p.info["cmdline"] or []
                if cmd and cmd[0].endswith("/kilo") and "serve" in cmd:  # kilo itself, not a command naming it
                    out.append(" ".join(p.info["cmdline"]) + json.dumps(p.info["environ"] or {}))
            except (psutil.Error, TypeError):
                pass
        await asyncio.sleep(0.5)


async def no_token_anywhere(town: TownProcs, kilo_procs: list[str], tmp_path: Path) -> None:
    """The rig's forge token never leaves the worker: not in any process log, registry entry,
    AgentStatus, agent event, kilo argv or env, nor in any git config on the container's disk."""
    assert kilo_procs and "GASTOWN_AGENT_ID" in kilo_procs[-1], "no kilo argv and env were sampled"
    assert town.container is not None
    places = {"kilo argv/env": "\n".join(kilo_procs), "logs": town.logs(full=True),
              "registry": json.dumps(await town.town("/container-registry"))}
    code, agents = await town.container.call("GET", "/agents")
    places["AgentStatus"] = json.dumps(agents)
    for a in agents["agents"]:
        places[f"events {a['agent_id']}"] = json.dumps(await town.container.call("GET", f"/agents/{a['agent_id']}/events?after=0"))
    for config in (tmp_path / "container").rglob("config"):
        if config.parent.name in (".git", "mirror.git"):
            places[str(config)] = config.read_text()
    assert len([k for k in places if k.startswith("events")]) >= 3  # two polecats and the refinery
    leaked = [name for name, text in places.items() if FORGE_TOKEN in text]
    assert leaked == []


async def test_pr_strategy_a_conflict_and_a_red_check_become_fix_up_beads_then_the_pr_merges(fake_llm, seaweedfs,
                                                                                            tmp_path: Path):
    """The worker opens the PR; a conflicting commit on main is a conflict bead (not a failed MR); a red
    check is a feedback bead; polecats on the PR branch push the fixes; green and approved, the PR
    merges after the auto-merge delay and the bead closes."""
    town = TownProcs(tmp_path, fake_llm, seaweedfs)
    try:
        await town.start(merge_strategy="pr", repo_settings={"require_review": True},
                         worker_env_extra={"GASTOWN_PR_POLL_INTERVAL_S": "1"})
        code, slung = await town.api("POST", f"/api/towns/{town.town_id}/sling", {
            "rig_id": town.rig_id, "title": "Add feature", "body": polecat_script("feature.txt", "ours")})
        assert code == 201, slung

        async def pr_opened():
            mrs = (await town.town("/beads?type=merge_request"))["beads"]
            return mrs[0] if mrs and mrs[0]["metadata"].get("pr_url") else None

        mr = await until(pr_opened, 300, "the worker to open the PR")
        assert mr["metadata"]["pr_url"] == f"{town.forge_url}/acme/app/pull/1"
        code, pr = await town.forge_api("GET", "/pulls/1")
        assert code == 200 and pr["state"] == "open" and pr["base"]["ref"] == "main"
        branch = pr["head"]["ref"]

        async def fix_up(label: str):
            beads = (await town.town("/beads?type=issue"))["beads"]
            return next((b for b in beads if label in b["labels"]), None)

        async def closed(bead_id: str):
            return (await town.town(f"/beads/{bead_id}"))["status"] == "closed"

        def polecat_pushes(command: str) -> None:
            fake_llm.enqueue(ToolCall("bash", {"command": command, "description": "fix the PR"}),
                             ToolCall("gastown_gt_done", {"branch": branch, "summary": "fixed"}), Reply("Fixed."))

        # A conflicting commit on main: a conflict bead blocks the MR, which stays in progress.
        polecat_pushes("git fetch -q origin && git merge -q -X ours -m 'merge main' origin/main && git push -q origin HEAD")
        await asyncio.to_thread(town.forge.commit, "acme/app", "main", {"feature.txt": "theirs\n"}, message="clash")
        conflict = await until(lambda: fix_up("gt:pr-conflict"), 120, "a conflict bead")
        assert conflict["metadata"]["branch"] == branch
        assert (await town.town(f"/beads/{mr['bead_id']}"))["status"] == "in_progress"
        await until(lambda: closed(conflict["bead_id"]), 240, "the conflict fix pushed and done")
        code, pr = await town.forge_api("GET", "/pulls/1")
        assert pr["mergeable"] is True

        # A red check: a feedback bead, fixed by a polecat on the PR branch.
        polecat_pushes("echo fixed > fix.txt && git add fix.txt && git commit -qm 'fix ci' && git push -q origin HEAD")
        red_head = pr["head"]["sha"]
        assert (await town.forge_api("POST", f"/statuses/{red_head}", {"state": "failure", "context": "ci"}))[0] == 201
        feedback = await until(lambda: fix_up("gt:pr-feedback"), 120, "a feedback bead")
        assert "ci" in feedback["body"]
        await until(lambda: closed(feedback["bead_id"]), 240, "the check fix pushed and done")
        code, pr = await town.forge_api("GET", "/pulls/1")
        assert pr["head"]["sha"] != red_head and pr["state"] == "open"

        # Green and approved: merged after the (zero) auto-merge delay; the bead closes.
        await town.forge_api("POST", f"/statuses/{pr['head']['sha']}", {"state": "success", "context": "ci"})
        assert (await town.forge_api("POST", "/pulls/1/reviews", {"event": "APPROVE"}))[0] == 200
        await until(lambda: closed(slung["bead_id"]), 120, "the PR merged and the bead closed")
        assert (await town.town(f"/beads/{mr['bead_id']}"))["status"] == "closed"
        code, pr = await town.forge_api("GET", "/pulls/1")
        assert pr["merged"] is True
        work = await asyncio.to_thread(town.clone, tmp_path / "fresh")
        assert (work / "feature.txt").read_text() == "ours\n" and (work / "fix.txt").read_text() == "fixed\n"
    except AssertionError as e:
        raise AssertionError(f"{e}\n{town.logs()}") from None
    finally:
        await town.close()
