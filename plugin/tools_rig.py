"""Rig tools: what polecats, refineries (and every role but the mayor) use to work a bead.

Role limits (e.g. only a refinery may request changes) are enforced by the worker, not here: the
tool set is the same for every rig role, as in the system we re-imagine (docs/original-system.md §3.12).
"""
from __future__ import annotations

import json
from typing import Annotated, Literal, Optional

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from plugin import tools_shared
from plugin.context import ToolContext, add_tools, drop_none, fail
from plugin.text import (
    agent_line,
    bead_detail,
    bead_line,
    clip,
    items,
    listing,
    mail_line,
    pick,
)

BeadId = Annotated[str, Field(min_length=1, description="Bead id, e.g. 'bd-1a2b'.")]
Priority = Literal["low", "medium", "high", "critical"]
MAX_PRIME_MAIL = 10
MAX_CHECKPOINT_TEXT = 4000


def render_prime(data: object, fallback_agent: str) -> str:
    """The agent's working context: who it is, its saved checkpoint, its hooked bead (full body),
    mail, open beads."""
    agent = pick(data, "agent")
    lines = [f"agent: {agent_line(agent) if isinstance(agent, dict) else fallback_agent}"]
    checkpoint = pick(agent, "checkpoint")
    if checkpoint is not None:
        lines.append(f"checkpoint (saved by you earlier): {clip(json.dumps(checkpoint), MAX_CHECKPOINT_TEXT)}")
    hooked = pick(data, "hooked_bead")
    lines.append(f"hooked bead: {bead_detail(hooked)}" if hooked else "hooked bead: none")
    mail = items(data, "mail")
    lines.append(f"unread mail: {len(mail)}")
    lines.extend(f"- {mail_line(m)}" for m in mail[:MAX_PRIME_MAIL])
    if len(mail) > MAX_PRIME_MAIL:
        lines.append(f"… {len(mail) - MAX_PRIME_MAIL} more, use gt_mail_check")
    lines.append(listing("open bead", items(data, "open_beads"), bead_line))
    return "\n".join(lines)


def register(server: MCPServer, ctx: ToolContext) -> None:
    async def gt_prime() -> str:
        """Get your working context: identity, the bead hooked to you (your task), unread mail and
        the rig's open beads. Call it first, and again after a restart or compaction."""
        data = await ctx.call("gt_prime", "GET", f"{ctx.agent_path()}/prime")
        return render_prime(data, ctx.ident.agent_id)

    async def gt_bead_status(bead_id: BeadId) -> str:
        """Show one bead: status, title, assignee, priority and body."""
        return bead_detail(await ctx.call("gt_bead_status", "GET", ctx.bead_path(bead_id)))

    async def gt_bead_close(bead_id: BeadId) -> str:
        """Close a bead that is fully finished (not your hooked task after writing code: use gt_done)."""
        data = await ctx.call("gt_bead_close", "POST", f"{ctx.bead_path(bead_id)}/close",
                              {"agent_id": ctx.ident.agent_id})
        return f"closed bead {bead_id}" + (f" [{pick(data, 'status')}]" if pick(data, "status") else "")

    async def gt_done(
        branch: Annotated[str, Field(min_length=1, description="The git branch you pushed with the finished work.")],
        pr_url: Annotated[Optional[str], Field(description="URL of the pull request, if you opened one.")] = None,
        summary: Annotated[Optional[str], Field(description="A few lines on what you changed and how you tested it.")] = None,
    ) -> str:
        """Report that your hooked bead is finished and pushed. The town then opens review for the
        branch; after this call, stop working."""
        await ctx.call("gt_done", "POST", f"{ctx.agent_path()}/done",
                       drop_none(branch=branch, pr_url=pr_url, summary=summary))
        return f"done recorded for branch {branch}" + (f", PR {pr_url}" if pr_url else "") + ". You can stop now."

    async def gt_request_changes(
        feedback: Annotated[str, Field(min_length=1, description="What must change, specific enough to act on.")],
        files: Annotated[Optional[list[str]], Field(description="Files the feedback is about.")] = None,
    ) -> str:
        """Refinery only: reject the merge request you are reviewing and send it back for rework."""
        data = await ctx.call("gt_request_changes", "POST", f"{ctx.agent_path()}/request-changes",
                              drop_none(feedback=feedback, files=files))
        rework, mr_status = pick(data, "rework_bead_id"), pick(data, "mr_status")
        text = "changes requested" + (f": rework bead {rework}" if rework else "")
        return text + (f" (merge request now {mr_status})" if mr_status else "") + ". You can stop now."

    async def gt_escalate(
        title: Annotated[str, Field(min_length=1, description="One line: what is blocked or wrong.")],
        body: Annotated[Optional[str], Field(description="Details: what you tried, what you need.")] = None,
        priority: Annotated[Optional[Priority], Field(description="How urgent; default medium.")] = None,
    ) -> str:
        """Escalate a problem you cannot solve yourself to the mayor and humans."""
        data = await ctx.call("gt_escalate", "POST", f"{ctx.town}/escalations",
                              drop_none(agent_id=ctx.ident.agent_id, title=title, body=body, priority=priority))
        bead = pick(data, "bead_id", "id")
        return "escalated" + (f": bead {bead}" if bead else "")

    async def gt_checkpoint(
        data: Annotated[str, Field(description="A JSON document (as a string) with your progress so far.")],
    ) -> str:
        """Save progress so a restarted session of you can resume (read back via gt_prime)."""
        try:
            parsed = json.loads(data)
        except ValueError as e:
            raise fail("INVALID_ARGUMENT", f"data must be a JSON string: {clip(e, 120)}") from None
        await ctx.call("gt_checkpoint", "POST", f"{ctx.agent_path()}/checkpoint", {"data": parsed})
        return f"checkpoint saved ({len(data)} chars)"

    add_tools(server, ctx, gt_prime, gt_bead_status, gt_bead_close, gt_done, gt_request_changes,
              gt_escalate, gt_checkpoint)
    tools_shared.register(server, ctx)
