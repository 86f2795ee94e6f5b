"""The StartAgentRequest (docs/contract.md §4) for a dispatch: who, where (repo, branch) and what (prompt).

Branches follow the original system (docs/original-system.md): ``gt/<slug(name)>/<bead8>``; a review-then-land convoy bead works on
``convoy/<slug>/<id8>/gt/<slug>/<bead8>``, a *sibling* of the feature branch
``convoy/<slug>/<id8>/head`` (git refs are files: a ref at X blocks refs under X/). The request
carries no secret: the container holds its own tokens.
"""
from __future__ import annotations

import re
from typing import Any

from worker_api.beads import short_id
from worker_api.settings import Effective, effective

DEFAULT_MODEL = "kilo/anthropic/claude-sonnet-4"

POLECAT_SYSTEM = (
    "You are a polecat, a coding agent of Gas Town. Work only on your hooked bead. Commit your work on "
    "your branch and push it. When finished call gt_done with your branch (and pr_url if you opened one). "
    "If you are blocked, call gt_escalate. Save progress notes with gt_checkpoint."
)
REFINERY_SYSTEM = (
    "You are the refinery of this rig: you review. Your workspace is on the merge request's branch; review "
    "it against its target (git diff origin/<target>...HEAD, run the tests). If it is good, call gt_done "
    "with the branch: the town then merges exactly that branch itself, so do not merge or push it yourself. "
    "If it needs work, call gt_request_changes with precise feedback instead."
)


def slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:limit].strip("-")) or "agent"


def feature_branch(convoy_title: str, convoy_id: str) -> str:
    return f"convoy/{slug(convoy_title)}/{short_id(convoy_id)}/head"


def work_branch(agent_name: str, bead: dict[str, Any], convoy: dict[str, Any] | None) -> str:
    base = f"gt/{slug(agent_name)}/{short_id(bead['bead_id'])}"
    if convoy and convoy.get("merge_mode") == "review-then-land" and convoy.get("feature_branch"):
        return convoy["feature_branch"].rsplit("/", 1)[0] + "/" + base
    return base


def coauthor_note(agent: dict[str, Any], eff: Effective) -> str:
    """With the town's own commit identity, the agent is credited in a trailer unless that is turned off."""
    if not (eff.git_author_name or eff.git_author_email) or eff.disable_ai_coauthor:
        return ""
    return (f" End each commit message with the trailer `Co-authored-by: {agent['name']} (gastown) "
            f"<{agent['agent_id']}@gastown.local>`.")


def build_start_request(*, town: dict[str, Any], rig: dict[str, Any] | None, agent: dict[str, Any],
                        bead: dict[str, Any], review: dict[str, Any] | None, convoy: dict[str, Any] | None,
                        checkpoint: Any = None, eff: Effective | None = None) -> dict[str, Any]:
    role = agent["role"]
    eff = eff or effective(town, rig)
    req: dict[str, Any] = {
        "agent_id": agent["agent_id"],
        "town_id": town["town_id"],
        "rig_id": bead.get("rig_id") or agent.get("rig_id") or "default",
        "role": role,
        "name": agent["name"],
        "model": eff.model or DEFAULT_MODEL,
        "identity": f"{agent['name']} ({role})",
        **eff.start_fields(),
    }
    if town.get("organization_id"):
        req["organization_id"] = town["organization_id"]
    default_branch = (rig or {}).get("default_branch") or "main"
    if rig:
        req["git_url"] = rig["git_url"]
    if role == "refinery" and review is not None:
        target = review.get("target_branch") or default_branch
        req.update(branch=review.get("branch") or target, default_branch=target,
                   system_prompt=REFINERY_SYSTEM + coauthor_note(agent, eff))
        req["prompt"] = (f"Review merge request {bead['bead_id']}: {bead['title']}\n\n"
                         f"Branch `{req['branch']}` into `{target}`.\n\n{bead.get('body') or ''}").strip()
        return req
    branch = bead["metadata"].get("branch") or work_branch(agent["name"], bead, convoy)
    req.update(branch=branch, default_branch=default_branch, system_prompt=POLECAT_SYSTEM + coauthor_note(agent, eff))
    if convoy and convoy.get("merge_mode") == "review-then-land" and convoy.get("feature_branch"):
        req["start_point"] = f"origin/{convoy['feature_branch']}"
        req["create_start_point"] = True  # the first polecat of the convoy creates it from the default branch
    parts = [f"# {bead['title']}", bead.get("body") or "", f"Bead: {bead['bead_id']}. Your branch: `{branch}`."]
    if checkpoint:
        parts.append(f"Resume from checkpoint: {checkpoint}")
    req["prompt"] = "\n\n".join(p for p in parts if p)
    return req
