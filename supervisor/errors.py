"""Typed supervisor errors; the control server maps each to one HTTP status and error code."""
from __future__ import annotations


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


class ModelUpdateFailed(SupervisorError):
    code, status = "MODEL_UPDATE_FAILED", 502
