"""A town that ships code, end to end (issue 11): real ``gastown worker``, ``gastown container`` and
forge processes, real kilo on the scripted model, SeaweedFS for snapshots. Each bead's text is the
script its polecat's model follows, and the polecat's gt_done summary is the script its refinery
follows, so the agents act only through their real tools (bash, git over HTTP with the credential
helper, gt_done)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.s3servers import seaweedfs  # noqa: F401 - fixture
from tests.townproc import TownProcs, script, tool, until

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
        # Each MR was reviewed on its own branch: the refinery's `cat` read that MR's file.
        reviews = [r for r in fake_llm.chat_requests() if r.has_tool_result and "Review merge request" in r.last_user_text]
        seen = {name for r in reviews for name, text in (("one.txt", "first"), ("two.txt", "second"))
                if f"cat {name}" in r.last_user_text and text in str(r.messages[-1].get("content"))}
        assert seen == {"one.txt", "two.txt"}
    finally:
        await town.close()
