"""Who this plugin acts for, read once from the environment kilo gave us at spawn.

Kilo passes no session id to MCP tools (docs/kilo-serve.md §9), so the agent identity must come
from env. A missing variable must never make the agent silently tool-less (docs/original-system.md bug 5: the
prewarmed mayor lost all its tools): we record what is missing and every tool reports it instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from gastown.contract.agents import Role
from gastown.contract.identity import AGENT_ID, API_URL, RIG_ID, ROLE, TOKEN, TOKEN_FILE, TOWN_ID

# The mayor works town-wide, so only rig agents need a rig id. The token: TOKEN or TOKEN_FILE.
_ALWAYS = (ROLE, AGENT_ID, TOWN_ID, API_URL)
MAX_TOKEN_BYTES = 8192


def read_token_file(path: str) -> str:
    """The agent's token as the runtime last wrote it ('' when absent or unreadable): read at call
    time, so a renewed or re-issued token is used by the next call without a restart."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_TOKEN_BYTES).decode("ascii", "replace").strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Identity:
    role: str
    agent_id: str
    town_id: str
    rig_id: str
    api_url: str
    token: str = field(repr=False)
    missing: tuple[str, ...] = ()
    token_file: str = ""

    def current_token(self) -> str:
        """The token file's content when there is one (it is renewed), else the token given."""
        return read_token_file(self.token_file) or self.token

    @property
    def is_mayor(self) -> bool:
        return self.role == Role.mayor.value

    @property
    def ok(self) -> bool:
        return not self.missing

    def missing_message(self) -> str:
        names = ", ".join(self.missing)
        return (
            f"the gastown plugin is not configured: missing environment variable(s) {names}. "
            "The container must pass them to the gastown MCP server; tell a human or escalate."
        )


def load_identity(env: Mapping[str, str] | None = None) -> Identity:
    """Read the identity; blank values count as missing. Never raises."""
    src = os.environ if env is None else env

    def get(name: str) -> str:
        return (src.get(name) or "").strip()

    role = get(ROLE)
    required = _ALWAYS if role == Role.mayor.value else (*_ALWAYS, RIG_ID)
    missing = tuple(name for name in required if not get(name))
    if not get(TOKEN) and not get(TOKEN_FILE):
        missing += (f"{TOKEN} or {TOKEN_FILE}",)
    return Identity(
        role=role,
        agent_id=get(AGENT_ID),
        town_id=get(TOWN_ID),
        rig_id=get(RIG_ID),
        api_url=get(API_URL).rstrip("/"),
        token=get(TOKEN),
        missing=missing,
        token_file=get(TOKEN_FILE),
    )
