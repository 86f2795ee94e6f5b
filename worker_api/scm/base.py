"""What the reconciler needs from a code host, independent of GitHub.

Why an interface: the reconciler must run (and be tested) without a network; ``create_app`` takes
any ``ScmProvider`` (``None`` keeps PR polling and merging off). Tokens are passed per call, never
stored on the provider, so one provider serves every rig of every town with that rig's token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Error kinds that can never succeed on a retry: the merge request fails at once.
PERMANENT_KINDS = frozenset({"no_token", "unrecognized_url", "host_mismatch", "not_found"})
# Consecutive failures tolerated before the merge request fails (docs/original-system.md §5.8, PR polling).
FAILURE_LIMITS = {"invalid_response": 3, "http": 3}
TRANSIENT_LIMIT = 10


class ScmError(Exception):
    """A failed code-host call. ``kind`` decides what the reconciler does with it; ``detail`` is
    safe to log and store (it never contains the token)."""

    def __init__(self, kind: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail[:300]
        self.status = status

    @property
    def permanent(self) -> bool:
        return self.kind in PERMANENT_KINDS

    def limit(self) -> int:
        return 1 if self.permanent else FAILURE_LIMITS.get(self.kind, TRANSIENT_LIMIT)


@dataclass(frozen=True)
class PrStatus:
    """One snapshot of a pull request. Enum values keep GitHub's spelling (``REVIEW_REQUIRED``,
    ``BLOCKED``, ...) so what we store matches what a human sees in the GitHub API."""

    state: str                              # open | merged | closed
    is_draft: bool = False
    review_decision: str | None = None      # APPROVED | CHANGES_REQUESTED | REVIEW_REQUIRED | None
    merge_state_status: str | None = None   # CLEAN | BLOCKED | BEHIND | DIRTY | UNSTABLE | HAS_HOOKS | DRAFT | UNKNOWN
    mergeable: str | None = None            # MERGEABLE | CONFLICTING | UNKNOWN
    checks: str = "none"                    # success | pending | failure | none (no checks reported)
    head_sha: str | None = None
    unresolved_threads: int = 0
    failing_checks: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class MergeResult:
    merged: bool
    method: str | None = None               # the method that merged (squash | merge | rebase)
    sha: str | None = None
    detail: str = ""
    tried: tuple[str, ...] = ()


class ScmProvider(Protocol):
    async def open_pr(self, git_url: str, token: str, *, head: str, base: str, title: str, body: str) -> str:
        """The URL of the open PR from ``head`` into ``base``: a new one, or the one already open
        (a retry after a lost answer must not open a second)."""
        ...

    async def pr_status(self, pr_url: str, token: str) -> PrStatus: ...

    async def merge(self, pr_url: str, token: str, *, head_sha: str | None = None) -> MergeResult: ...

    async def aclose(self) -> None: ...
