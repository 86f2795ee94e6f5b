"""The env an agent's kilo (and so its gastown plugin) is given to know whom it acts for."""
from __future__ import annotations

ROLE = "GASTOWN_AGENT_ROLE"
AGENT_ID = "GASTOWN_AGENT_ID"
TOWN_ID = "GASTOWN_TOWN_ID"
RIG_ID = "GASTOWN_RIG_ID"
API_URL = "GASTOWN_API_URL"
TOKEN = "GASTOWN_CONTAINER_TOKEN"  # outside a container (``gastown plugin`` by hand): the token itself
TOKEN_FILE = "GASTOWN_AGENT_TOKEN_FILE"  # in a container: the agent's own token, read at call time
IDENTITY = "GASTOWN_AGENT_IDENTITY"  # how the agent is known to people (its session is titled so too)
