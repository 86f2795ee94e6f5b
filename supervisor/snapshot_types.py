"""What snapshots and restores answer and raise (``supervisor/snapshots.py`` does the work)."""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SnapshotInfo:
    at: str
    bytes: int
    sha256: str
    generation: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LocalCopy:
    """A consistent private copy of a kilo.db, taken and not yet uploaded."""

    path: str
    directory: tempfile.TemporaryDirectory

    def discard(self) -> None:
        self.directory.cleanup()


@dataclass(frozen=True)
class RestoreResult:
    restored: bool
    generation: int | None
    reason: str


class SnapshotError(Exception):
    pass


class StaleWriter(SnapshotError):
    """Another writer (a newer container) published a generation this instance has not seen."""


class SnapshotFailed(SnapshotError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
