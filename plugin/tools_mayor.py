"""Mayor tools: plan and delegate town-wide (sling work to rigs, run convoys, fix stuck beads/agents).

The mayor never codes itself; these tools create beads the reconciler dispatches to polecats.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from plugin import tools_shared
from plugin.context import ToolContext, add_tools, drop_none, fail
from plugin.text import (
    agent_line,
    bead_line,
    convoy_line,
    items,
    join_ids,
    listing,
    pick,
    rig_line,
)

RigId = Annotated[str, Field(min_length=1, description="Rig id (see gt_list_rigs).")]
BeadId = Annotated[str, Field(min_length=1, description="Bead id, e.g. 'bd-1a2b'.")]
ConvoyId = Annotated[str, Field(min_length=1, description="Convoy id (see gt_list_convoys).")]
BeadStatus = Literal["open", "in_progress", "in_review", "closed", "failed"]
BeadType = Literal["issue", "message", "escalation", "merge_request", "convoy", "agent"]
# Only these are set by hand; in_progress/in_review belong to dispatch and review.
SettableStatus = Literal["open", "closed", "failed"]
Priority = Literal["low", "medium", "high", "critical"]
MergeMode = Literal["review-then-land", "review-and-merge"]


class BatchBead(BaseModel):
    title: Annotated[str, Field(min_length=1, description="One-line task title.")]
    body: Annotated[Optional[str], Field(description="Full task description for the polecat.")] = None
    depends_on: Annotated[
        Optional[list[int]],
        Field(description="0-based indexes of earlier beads in this batch that must land first."),
    ] = None


def check_depends_on(beads: list[BatchBead]) -> None:
    """Catch bad indexes here: the model gets a precise message instead of a generic 400."""
    for i, bead in enumerate(beads):
        for dep in bead.depends_on or ():
            if dep == i:
                raise fail("INVALID_ARGUMENT", f"beads[{i}] depends on itself")
            if not 0 <= dep < len(beads):
                raise fail("INVALID_ARGUMENT", f"beads[{i}].depends_on has {dep}, valid indexes are 0..{len(beads) - 1}")


def register(server: MCPServer, ctx: ToolContext) -> None:
    async def gt_sling(
        rig_id: RigId,
        title: Annotated[str, Field(min_length=1, description="One-line task title.")],
        body: Annotated[Optional[str], Field(description="Full task description for the polecat.")] = None,
        priority: Annotated[Optional[Priority], Field(description="Default medium.")] = None,
    ) -> str:
        """Create one task bead in a rig; the town dispatches a polecat to it."""
        data = await ctx.call("gt_sling", "POST", f"{ctx.town}/sling",
                              drop_none(rig_id=rig_id, title=title, body=body, priority=priority))
        return f"slung bead {pick(data, 'bead_id') or '?'} to rig {rig_id} [{pick(data, 'status') or '?'}]"

    async def gt_sling_batch(
        rig_id: RigId,
        title: Annotated[str, Field(min_length=1, description="Convoy title: the overall goal.")],
        beads: Annotated[list[BatchBead], Field(min_length=1, description="The tasks, in order.")],
        merge_mode: Annotated[
            Optional[MergeMode],
            Field(description="review-then-land: each bead merges into a convoy feature branch that lands "
                              "at the end; review-and-merge: each bead merges on its own."),
        ] = None,
        staged: Annotated[
            Optional[bool], Field(description="true: create the convoy but dispatch nothing until gt_convoy_start.")
        ] = None,
    ) -> str:
        """Create a convoy: several related task beads in one rig, with dependencies between them."""
        check_depends_on(beads)
        payload = drop_none(
            rig_id=rig_id, title=title, merge_mode=merge_mode, staged=staged,
            beads=[b.model_dump(exclude_none=True) for b in beads],
        )
        data = await ctx.call("gt_sling_batch", "POST", f"{ctx.town}/convoys", payload)
        ids = items(data, "bead_ids")
        return (f"convoy {pick(data, 'convoy_id') or '?'}{' (staged)' if staged else ''}: "
                f"{len(ids)} beads: {join_ids(ids)}")

    async def gt_list_rigs() -> str:
        """List the town's rigs (repositories agents work in)."""
        return listing("rig", items(await ctx.call("gt_list_rigs", "GET", f"{ctx.town}/rigs"), "rigs"), rig_line)

    async def gt_list_beads(
        status: Annotated[Optional[BeadStatus], Field(description="Only beads with this status.")] = None,
        rig_id: Annotated[Optional[str], Field(description="Only beads of this rig.")] = None,
        type: Annotated[Optional[BeadType], Field(description="Only beads of this type (issue = a task).")] = None,
    ) -> str:
        """List beads (tasks, merge requests, escalations…), optionally filtered."""
        data = await ctx.call("gt_list_beads", "GET", f"{ctx.town}/beads",
                              params=drop_none(status=status, rig_id=rig_id, type=type))
        return listing("bead", items(data, "beads"), bead_line)

    async def gt_list_agents() -> str:
        """List the town's agents with role, status and hooked bead."""
        return listing("agent", items(await ctx.call("gt_list_agents", "GET", f"{ctx.town}/agents"), "agents"), agent_line)

    async def gt_list_convoys() -> str:
        """List convoys with progress."""
        data = await ctx.call("gt_list_convoys", "GET", f"{ctx.town}/convoys")
        return listing("convoy", items(data, "convoys"), convoy_line)

    async def gt_convoy_status(convoy_id: ConvoyId) -> str:
        """Show one convoy and the status of each of its beads."""
        data = await ctx.call("gt_convoy_status", "GET", ctx.convoy_path(convoy_id))
        convoy = pick(data, "convoy") or data
        return convoy_line(convoy) + "\n" + listing("bead", items(data, "beads"), bead_line)

    async def gt_convoy_start(convoy_id: ConvoyId) -> str:
        """Start a staged convoy: its beads become dispatchable."""
        data = await ctx.call("gt_convoy_start", "POST", f"{ctx.convoy_path(convoy_id)}/start", {})
        return f"convoy {convoy_id} started" + (f" [{pick(data, 'status')}]" if pick(data, "status") else "")

    async def gt_convoy_close(convoy_id: ConvoyId) -> str:
        """Close a convoy (finished or abandoned)."""
        data = await ctx.call("gt_convoy_close", "POST", f"{ctx.convoy_path(convoy_id)}/close", {})
        return f"convoy {convoy_id} closed" + (f" [{pick(data, 'status')}]" if pick(data, "status") else "")

    async def gt_bead_update(
        bead_id: BeadId,
        title: Annotated[Optional[str], Field(description="New title.")] = None,
        body: Annotated[Optional[str], Field(description="New body (replaces the old one).")] = None,
        status: Annotated[
            Optional[SettableStatus], Field(description="open (reopen), closed (done) or failed (give up).")
        ] = None,
        priority: Annotated[Optional[Priority], Field(description="New priority.")] = None,
    ) -> str:
        """Edit a bead's title, body, status or priority (only the fields you pass change)."""
        changes = drop_none(title=title, body=body, status=status, priority=priority)
        if not changes:
            raise fail("INVALID_ARGUMENT", "pass at least one of title, body, status, priority")
        data = await ctx.call("gt_bead_update", "PATCH", ctx.bead_path(bead_id), changes)
        return f"updated bead {bead_id} ({', '.join(changes)})" + (f"\n{bead_line(data)}" if isinstance(data, dict) else "")

    async def gt_bead_reassign(
        bead_id: BeadId,
        agent_id: Annotated[
            Optional[str], Field(description="Agent to assign; omit to unassign so the town dispatches a fresh polecat.")
        ] = None,
    ) -> str:
        """Take a bead away from its current agent (e.g. a stuck one), optionally giving it to another."""
        await ctx.call("gt_bead_reassign", "POST", f"{ctx.bead_path(bead_id)}/reassign", drop_none(agent_id=agent_id))
        return f"bead {bead_id} " + (f"reassigned to {agent_id}" if agent_id else "unassigned")

    async def gt_escalation_ack(
        bead_id: Annotated[str, Field(min_length=1, description="The escalation's bead id, from its notice.")],
        note: Annotated[Optional[str], Field(description="What you are doing about it.")] = None,
    ) -> str:
        """Acknowledge an escalation you are handling so it is not escalated again (close it once resolved)."""
        data = await ctx.call("gt_escalation_ack", "POST", f"{ctx.town}/escalations/{bead_id}/acknowledge",
                              drop_none(agent_id=ctx.ident.agent_id, note=note))
        return f"acknowledged escalation {bead_id}" + (f" [{pick(data, 'status')}]" if pick(data, "status") else "")

    async def gt_agent_reset(
        agent_id: Annotated[str, Field(min_length=1, description="The agent to reset (see gt_list_agents).")],
    ) -> str:
        """Reset a stuck or dead agent to idle, releasing its hooked bead."""
        await ctx.call("gt_agent_reset", "POST", f"{ctx.agent_path(agent_id)}/reset", {})
        return f"agent {agent_id} reset"

    add_tools(server, ctx, gt_sling, gt_sling_batch, gt_list_rigs, gt_list_beads, gt_list_agents, gt_list_convoys,
              gt_convoy_status, gt_convoy_start, gt_convoy_close, gt_bead_update, gt_bead_reassign,
              gt_escalation_ack, gt_agent_reset)
    tools_shared.register(server, ctx)

