"""Snapshot manifests sealed by the worker (``worker_api/snapshot_seals.py``): the runtime cannot
forge a seal, so a manifest edited in the bucket is refused at restore. Called from the snapshot
threads through :class:`supervisor.worker_bridge.WorkerBridge`."""
from __future__ import annotations

from typing import Any, Protocol

from supervisor.worker_bridge import WorkerBridge
from supervisor.worker_client import WorkerError


class SealUnavailable(Exception):
    """The worker could not seal or check a manifest now (not configured, unreachable, refused)."""


class Sealer(Protocol):
    @property
    def active(self) -> bool: ...
    def seal(self, agent_id: str, manifest: dict[str, Any]) -> str: ...
    def verify(self, agent_id: str, manifest: dict[str, Any], seal: str) -> bool: ...


class WorkerSealer:
    def __init__(self, bridge: WorkerBridge) -> None:
        self.bridge = bridge

    @property
    def active(self) -> bool:
        """Sealing applies once the runtime talks to a worker (a store without one stays unsealed)."""
        return self.bridge.active

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            data = self.bridge.call("POST", path, body)
        except WorkerError as e:
            raise SealUnavailable(str(e)) from None
        if not isinstance(data, dict):
            raise SealUnavailable("the worker gave no answer")
        return data

    def seal(self, agent_id: str, manifest: dict[str, Any]) -> str:
        seal = self._call(f"/agents/{agent_id}/snapshot-seal", {"manifest": manifest}).get("seal")
        if not isinstance(seal, str) or not seal:
            raise SealUnavailable("the worker gave no seal")
        return seal

    def verify(self, agent_id: str, manifest: dict[str, Any], seal: str) -> bool:
        return self._call(f"/agents/{agent_id}/snapshot-verify", {"manifest": manifest, "seal": seal}).get("valid") is True
