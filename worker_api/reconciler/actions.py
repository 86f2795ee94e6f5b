"""What the rules decide: a tagged union of frozen dataclasses (the ``kind`` is the tag).

Why data and not calls: ``reconcile()`` stays a pure function of the snapshot, so every rule is
tested as "state in → actions out" with no database and no clock; ``apply.apply_action`` is the
only place that turns them into SQL and side effects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union


@dataclass(frozen=True)
class TransitionBead:
    kind: ClassVar[str] = "transition_bead"
    bead_id: str
    from_status: str          # applied only if the bead is still in this status
    to: str
    reason: str
    clear_assignee: bool = False


@dataclass(frozen=True)
class ClearBeadAssignee:
    kind: ClassVar[str] = "clear_bead_assignee"
    bead_id: str
    reason: str


@dataclass(frozen=True)
class TransitionAgent:
    kind: ClassVar[str] = "transition_agent"
    agent_id: str
    to: str
    reason: str


@dataclass(frozen=True)
class UnhookAgent:
    kind: ClassVar[str] = "unhook_agent"
    agent_id: str
    reason: str
    clear_checkpoint: bool = False


@dataclass(frozen=True)
class ResetAgentDispatchAttempts:
    kind: ClassVar[str] = "reset_agent_dispatch_attempts"
    agent_id: str


@dataclass(frozen=True)
class DeleteAgent:
    kind: ClassVar[str] = "delete_agent"
    agent_id: str
    reason: str


@dataclass(frozen=True)
class DispatchAgent:
    """Hook an agent to the bead and start it. ``agent_id=None``: reuse an idle agent of the rig
    with ``role`` or create one, at apply time (the rules cannot mint ids)."""

    kind: ClassVar[str] = "dispatch_agent"
    bead_id: str
    rig_id: str | None
    role: str = "polecat"
    agent_id: str | None = None


@dataclass(frozen=True)
class StopAgent:
    kind: ClassVar[str] = "stop_agent"
    agent_id: str
    reason: str


@dataclass(frozen=True)
class SendNudge:
    kind: ClassVar[str] = "send_nudge"
    agent_id: str
    tier: str                 # warn | escalate | force_stop
    message: str


@dataclass(frozen=True)
class CreateEscalation:
    kind: ClassVar[str] = "create_escalation"
    title: str
    body: str
    agent_id: str | None = None
    bead_id: str | None = None
    severity: str = "medium"


@dataclass(frozen=True)
class ReEscalate:
    kind: ClassVar[str] = "re_escalate"
    bead_id: str
    severity: str
    round: int


@dataclass(frozen=True)
class NotifyMayor:
    kind: ClassVar[str] = "notify_mayor"
    message: str


@dataclass(frozen=True)
class PollPr:
    kind: ClassVar[str] = "poll_pr"
    bead_id: str
    pr_url: str


@dataclass(frozen=True)
class MergePr:
    kind: ClassVar[str] = "merge_pr"
    bead_id: str
    pr_url: str


@dataclass(frozen=True)
class MergeBranch:
    """Direct strategy: the worker merges an approved MR's branch into its target through git."""

    kind: ClassVar[str] = "merge_branch"
    bead_id: str


@dataclass(frozen=True)
class OpenPr:
    """PR strategy: the worker opens the approved MR's pull request through the SCM adapter."""

    kind: ClassVar[str] = "open_pr"
    bead_id: str


@dataclass(frozen=True)
class UpdateConvoyProgress:
    kind: ClassVar[str] = "update_convoy_progress"
    convoy_id: str
    total: int
    closed: int
    failed: int


@dataclass(frozen=True)
class SetConvoyReadyToLand:
    kind: ClassVar[str] = "set_convoy_ready_to_land"
    convoy_id: str


@dataclass(frozen=True)
class CreateLandingMr:
    kind: ClassVar[str] = "create_landing_mr"
    convoy_id: str


@dataclass(frozen=True)
class CloseConvoy:
    kind: ClassVar[str] = "close_convoy"
    convoy_id: str
    reason: str


@dataclass(frozen=True)
class FailConvoy:
    kind: ClassVar[str] = "fail_convoy"
    convoy_id: str
    reason: str


Action = Union[
    TransitionBead, ClearBeadAssignee, TransitionAgent, UnhookAgent, ResetAgentDispatchAttempts, DeleteAgent,
    DispatchAgent, StopAgent, SendNudge, CreateEscalation, ReEscalate, NotifyMayor, PollPr, MergePr, MergeBranch, OpenPr,
    UpdateConvoyProgress,
    SetConvoyReadyToLand, CreateLandingMr, CloseConvoy, FailConvoy,
]
