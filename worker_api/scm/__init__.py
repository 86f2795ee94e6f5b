"""Code-host adapters (GitHub first) behind the ``ScmProvider`` interface the reconciler uses."""
from worker_api.scm.base import MergeResult, PrStatus, ScmError, ScmProvider
from worker_api.scm.github import GitHubProvider

__all__ = ["GitHubProvider", "MergeResult", "PrStatus", "ScmError", "ScmProvider"]
