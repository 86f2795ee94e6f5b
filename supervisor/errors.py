"""Typed supervisor errors; the control server maps each to one HTTP status and error code."""
from __future__ import annotations

from supervisor.kilo_client import KiloApiError
from supervisor.kilo_process import KiloStartError
from supervisor.workspace import WorkspaceError


class SupervisorError(Exception):
    code = "SUPERVISOR_ERROR"
    status = 500

    def __init__(self, message: str, **detail: object) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class AgentNotFound(SupervisorError):
    code, status = "AGENT_NOT_FOUND", 404


class AgentNotRunning(SupervisorError):
    code, status = "AGENT_NOT_RUNNING", 409


class AgentUnreachable(SupervisorError):
    """The agent is running but its kilo refused or did not answer."""

    code, status = "AGENT_UNREACHABLE", 502


class TownMismatch(SupervisorError):
    code, status = "TOWN_MISMATCH", 409


class Draining(SupervisorError):
    code, status = "DRAINING", 503


class InsufficientMemory(SupervisorError):
    code, status = "INSUFFICIENT_MEMORY", 503


class StartFailed(SupervisorError):
    """kilo could not be brought up; ``detail`` carries phase, exit code and a scrubbed stderr tail."""

    code, status = "AGENT_START_FAILED", 502

    @classmethod
    def from_error(cls, e: BaseException) -> "StartFailed":
        """Which phase of a start failed, and why, for the 502 body and the worker."""
        if isinstance(e, KiloStartError):
            return cls(str(e), phase=e.phase, exit_code=e.exit_code, stderr_tail=e.stderr_tail[-2000:])
        if isinstance(e, WorkspaceError):
            return cls(str(e), phase="workspace")
        if isinstance(e, KiloApiError):
            return cls(str(e), phase="session", upstream_status=e.status)
        return cls(f"unexpected start failure: {e!r}", phase="unknown")


class ModelUpdateFailed(SupervisorError):
    code, status = "MODEL_UPDATE_FAILED", 502
