"""The local town's state file: what ``gastown up`` started, for a rerun and for the operator commands.

``<state dir>/town.json`` (mode 0600: it holds the admin and control tokens) records the ports, the
tokens and the town id. A second ``gastown up`` in the same directory reuses them, so the worker DB,
the bucket and the mayor's history carry over; ``gastown agents``/``logs``/``town status`` read it
when no URL or token is given by flag or environment.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path

DEFAULT_DIR = ".gastown/town"
STATE_FILE = "town.json"


def state_dir(flag: str | None = None) -> Path:
    return Path(flag or os.environ.get("GASTOWN_TOWN_DIR") or DEFAULT_DIR)


@dataclass
class TownState:
    worker_port: int
    container_port: int
    admin_token: str
    control_token: str
    jwt_secret: str
    town_id: str = ""
    s3_base_port: int | None = None
    forge_port: int | None = None  # kept: the rig's git_url names it
    forge_token: str = ""
    user_token: str = ""   # the local user ("local"): owns the town, talks to the mayor (gastown chat)

    @classmethod
    def new(cls, worker_port: int, container_port: int) -> "TownState":
        return cls(worker_port, container_port, secrets.token_urlsafe(24), secrets.token_urlsafe(24),
                   secrets.token_urlsafe(32), forge_token=secrets.token_urlsafe(24))

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_port}"

    @property
    def container_url(self) -> str:
        return f"http://127.0.0.1:{self.container_port}"

    @classmethod
    def load(cls, directory: Path) -> "TownState | None":
        """The saved state, or None when there is none or it cannot be read as one."""
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
            state = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        except (OSError, ValueError, TypeError):
            return None
        state.forge_token = state.forge_token or secrets.token_urlsafe(24)  # a state file from before the forge
        return state

    def save(self, directory: Path) -> None:
        """Written whole under a temporary name, then renamed: a reader never sees half a file."""
        tmp = directory / f".{STATE_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**asdict(self), "worker_url": self.worker_url, "container_url": self.container_url}, f, indent=1)
        os.replace(tmp, directory / STATE_FILE)
