"""The container-provider interface and what a start is given.

A provider knows how to run ``gastown container`` somewhere (a local process, a container engine, a
cluster) and nothing about towns beyond their id: the worker builds the environment (tokens
included) and hands it over in a :class:`Launch`. Providers never log or label the environment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# What ``state`` answers. ``healthy`` is ``running`` with a passing engine health check.
RUNNING_STATES = frozenset({"running", "healthy"})
STATES = RUNNING_STATES | {"starting", "stopping", "stopped", "unknown"}

# The runtime drains for up to 300 s on SIGTERM (GASTOWN_DRAIN_TIMEOUT_S, docs/contract.md §2); every
# provider gives it that plus a margin before a SIGKILL.
DRAIN_S = 300
DRAIN_GRACE_S = DRAIN_S + 30


def container_name(town_id: str) -> str:
    """A town's container (or Pod) name, the same under every provider and for ``gastown up --image``."""
    return f"gastown-town-{town_id}"


# What the runtime, root in its container, needs and nothing more: setpriv to each agent's uid
# (SETUID, SETGID), the agents' trees made theirs (CHOWN, FOWNER), their kilo.db read for snapshots
# (DAC_OVERRIDE, DAC_READ_SEARCH), their processes signalled (KILL). Every provider drops the rest.
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "KILL", "SETGID", "SETUID")


class ProviderError(Exception):
    """A start or stop the provider could not do (engine unreachable, image missing, …)."""


@dataclass(frozen=True)
class Launch:
    """One start of a town's container. ``env`` holds secrets: repr shows its keys only."""

    town_id: str
    env: dict[str, str] = field(repr=False)

    def __repr__(self) -> str:
        return f"Launch(town_id={self.town_id!r}, env_keys={sorted(self.env)!r})"


class ContainerProvider(Protocol):
    """Lifecycle of a town's container (docs/original-system.md §5.6)."""

    async def start(self, launch: Launch) -> str: ...   # the control-server URL; raises ProviderError
    async def state(self, town_id: str) -> str: ...     # one of STATES
    async def stop(self, town_id: str) -> None: ...     # drains (SIGTERM + grace); raises ProviderError
    async def aclose(self) -> None: ...
