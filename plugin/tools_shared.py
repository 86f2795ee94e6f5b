"""Tools both tool sets carry: mail and nudges (the mayor and rig agents talk to each other)."""
from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from plugin.context import ToolContext, add_tools
from plugin.text import items, listing, mail_line, pick

AgentId = Annotated[str, Field(min_length=1, description="Target agent id, e.g. 'polecat-3f2a' (see gt_list_agents or gt_prime).")]
NudgeMode = Literal["wait-idle", "immediate", "queue"]


def register(server: MCPServer, ctx: ToolContext) -> None:
    async def gt_mail_send(
        to_agent_id: AgentId,
        subject: Annotated[str, Field(min_length=1, description="One-line subject.")],
        body: Annotated[str, Field(description="The message text.")],
    ) -> str:
        """Send mail to another agent in this town. It is delivered when the recipient next checks
        mail or is primed; use gt_nudge instead when it must act now."""
        data = await ctx.call(
            "gt_mail_send", "POST", f"{ctx.town}/mail",
            {"from_agent_id": ctx.ident.agent_id, "to_agent_id": to_agent_id, "subject": subject, "body": body},
        )
        mail_id = pick(data, "mail_id", "id")
        return f"mail sent to {to_agent_id}" + (f" (mail {mail_id})" if mail_id else "")

    async def gt_nudge(
        target_agent_id: AgentId,
        message: Annotated[str, Field(min_length=1, description="What the target agent should know or do.")],
        mode: Annotated[
            NudgeMode,
            Field(description="wait-idle (default): deliver when the target's current turn ends; "
                              "immediate: interrupt it now; queue: deliver at its next start."),
        ] = "wait-idle",
    ) -> str:
        """Send a short real-time message into another agent's session (it arrives as a prompt)."""
        data = await ctx.call(
            "gt_nudge", "POST", f"{ctx.agent_path(target_agent_id)}/nudges",
            {"message": message, "mode": mode, "source": ctx.ident.agent_id},
        )
        nudge_id = pick(data, "nudge_id", "id")
        return f"nudge queued for {target_agent_id} ({mode})" + (f", nudge {nudge_id}" if nudge_id else "")

    async def gt_mail_check() -> str:
        """Read mail sent to you that you have not seen yet."""
        data = await ctx.call("gt_mail_check", "GET", f"{ctx.agent_path()}/mail")
        return listing("message", items(data, "mail"), mail_line)

    add_tools(server, ctx, gt_mail_send, gt_mail_check, gt_nudge)
