"""Pull requests, reviews and commit statuses of the local forge, over real bare repositories.

Why real git: a PR's ``mergeable``, its head sha and every merge are computed from the branches
agents pushed (``git merge-tree``), so "merged" means the commits are on the base branch of the
forge, exactly as a fresh clone shows. The review decision and merge state follow GitHub's rules for
a branch protected by required status checks (every reported context) and, when the repo asks for
it, one approving review. State is kept in ``<root>/pulls.json`` so a restarted forge keeps its PRs.
Blocking (git): the HTTP side calls these in a thread, under one lock.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gastown.core import gitops

STATE_FILE = "pulls.json"
MERGE_METHODS = ("merge", "squash", "rebase")
STATUS_STATES = frozenset({"success", "failure", "error", "pending"})
REVIEW_EVENTS = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED", "COMMENT": "COMMENTED"}


class PullError(Exception):
    """A refusal with GitHub's status and message (405 not mergeable, 409 head moved, 422 invalid)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RepoSettings:
    private: bool = True
    default_branch: str = "main"
    require_review: bool = False
    merge_methods: list[str] = field(default_factory=lambda: list(MERGE_METHODS))


@dataclass
class Pull:
    repo: str
    number: int
    title: str
    head: str
    base: str
    body: str = ""
    draft: bool = False
    state: str = "open"                     # open | closed | merged
    reviews: list[dict[str, Any]] = field(default_factory=list)
    unresolved_threads: int = 0
    merge_commit: str | None = None
    merged_with: str | None = None
    created_at: int = 0


class PullStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.repos: dict[str, RepoSettings] = {}
        self.pulls: dict[str, list[Pull]] = {}
        self.statuses: dict[str, dict[str, dict[str, str]]] = {}   # "repo@sha" -> context -> {state, description}
        self.env = gitops.safe_env(root, protocols="file")
        try:
            data = json.loads((root / STATE_FILE).read_text())
            self.repos = {k: RepoSettings(**v) for k, v in data["repos"].items()}
            self.pulls = {k: [Pull(**p) for p in v] for k, v in data["pulls"].items()}
            self.statuses = data["statuses"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a new forge

    def save(self) -> None:
        data = {"repos": {k: asdict(v) for k, v in self.repos.items()},
                "pulls": {k: [asdict(p) for p in v] for k, v in self.pulls.items()}, "statuses": self.statuses}
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.root / STATE_FILE)

    def git_dir(self, repo: str) -> Path:
        return self.root / f"{repo}.git"

    def head_of(self, repo: str, branch: str) -> str | None:
        return gitops.rev(self.git_dir(repo), f"refs/heads/{branch}", self.env)

    # -- pulls ----------------------------------------------------------------------------------
    def get(self, repo: str, number: int) -> Pull | None:
        return next((p for p in self.pulls.get(repo, []) if p.number == number), None)

    def create(self, repo: str, *, title: str, head: str, base: str, body: str = "", draft: bool = False) -> Pull:
        head_sha, base_sha = self.head_of(repo, head), self.head_of(repo, base)
        if head_sha is None or base_sha is None:
            raise PullError(422, f"Validation Failed: {'head' if head_sha is None else 'base'} branch does not exist")
        if any(p.head == head and p.base == base and p.state == "open" for p in self.pulls.get(repo, [])):
            raise PullError(422, f"Validation Failed: A pull request already exists for {head}.")
        if gitops.is_ancestor(self.git_dir(repo), head_sha, base_sha, self.env):
            raise PullError(422, f"Validation Failed: No commits between {base} and {head}")
        pulls = self.pulls.setdefault(repo, [])
        pull = Pull(repo, len(pulls) + 1, title, head, base, body, draft, created_at=int(time.time()))
        pulls.append(pull)
        self.save()
        return pull

    def review(self, pull: Pull, user: str, event: str, body: str = "") -> dict[str, Any]:
        if event not in REVIEW_EVENTS:
            raise PullError(422, "Validation Failed: event must be APPROVE, REQUEST_CHANGES or COMMENT")
        review = {"id": sum(len(p.reviews) for p in self.pulls.get(pull.repo, [])) + 1, "user": user,
                  "state": REVIEW_EVENTS[event], "body": body, "commit_id": self.head_of(pull.repo, pull.head)}
        pull.reviews.append(review)
        self.save()
        return review

    def set_status(self, repo: str, sha: str, context: str, state: str, description: str = "") -> None:
        if state not in STATUS_STATES:
            raise PullError(422, "Validation Failed: state must be success, failure, error or pending")
        self.statuses.setdefault(f"{repo}@{sha}", {})[context] = {"state": state, "description": description}
        self.save()

    # -- what GitHub computes -------------------------------------------------------------------
    def checks(self, repo: str, sha: str | None) -> dict[str, dict[str, str]]:
        return dict(self.statuses.get(f"{repo}@{sha}", {})) if sha else {}

    def review_decision(self, pull: Pull) -> str | None:
        latest: dict[str, str] = {}
        for r in pull.reviews:
            if r["state"] != "COMMENTED":
                latest[r["user"]] = r["state"]
        if "CHANGES_REQUESTED" in latest.values():
            return "CHANGES_REQUESTED"
        if "APPROVED" in latest.values():
            return "APPROVED"
        return "REVIEW_REQUIRED" if self.repos.get(pull.repo, RepoSettings()).require_review else None

    def mergeable(self, pull: Pull) -> str:
        head, base = self.head_of(pull.repo, pull.head), self.head_of(pull.repo, pull.base)
        if pull.state != "open" or head is None or base is None:
            return "UNKNOWN"
        return "MERGEABLE" if gitops.merge_tree(self.git_dir(pull.repo), base, head, self.env).tree else "CONFLICTING"

    def merge_state(self, pull: Pull) -> str:
        if pull.draft:
            return "DRAFT"
        if self.mergeable(pull) == "CONFLICTING":
            return "DIRTY"
        states = {c["state"] for c in self.checks(pull.repo, self.head_of(pull.repo, pull.head)).values()}
        if self.review_decision(pull) in ("REVIEW_REQUIRED", "CHANGES_REQUESTED") or states - {"success"}:
            return "BLOCKED"
        return "CLEAN"

    # -- merging --------------------------------------------------------------------------------
    def merge(self, pull: Pull, method: str, sha: str | None = None) -> str:
        settings = self.repos.get(pull.repo, RepoSettings())
        if method not in settings.merge_methods:
            raise PullError(405, f"{method.capitalize()} merges are not allowed on this repository.")
        if pull.state != "open" or self.merge_state(pull) not in ("CLEAN", "HAS_HOOKS", "UNSTABLE"):
            raise PullError(405, "Pull Request is not mergeable")
        head, base = self.head_of(pull.repo, pull.head), self.head_of(pull.repo, pull.base)
        assert head is not None and base is not None  # merge_state checked both
        if sha and sha != head:
            raise PullError(409, "Head branch was modified. Review and try the merge again.")
        git_dir = self.git_dir(pull.repo)
        if method == "rebase":
            new = self._rebase(git_dir, base, head)
        else:
            tree = gitops.merge_tree(git_dir, base, head, self.env).tree
            assert tree is not None  # not DIRTY
            if method == "squash":
                new = gitops.commit_tree(git_dir, tree, [base], f"{pull.title} (#{pull.number})\n\n{pull.body}", self.env)
            else:
                new = gitops.commit_tree(git_dir, tree, [base, head],
                                         f"Merge pull request #{pull.number} from {pull.head}\n\n{pull.title}", self.env)
        self._advance(git_dir, pull.base, new, base)
        pull.state, pull.merge_commit, pull.merged_with = "merged", new, method
        self.save()
        return new

    def merge_branches(self, repo: str, base: str, head: str, message: str | None) -> str | None:
        """GitHub's "merge a branch" (``POST /repos/{o}/{r}/merges``): the merge commit, or None when
        ``head`` is already in ``base``; 404 for a missing branch, 409 for a conflict."""
        git_dir = self.git_dir(repo)
        base_sha = self.head_of(repo, base)
        head_sha = self.head_of(repo, head) or gitops.rev(git_dir, head, self.env)
        if base_sha is None or head_sha is None:
            raise PullError(404, f"{'Base' if base_sha is None else 'Head'} does not exist")
        if gitops.is_ancestor(git_dir, head_sha, base_sha, self.env):
            return None
        result = gitops.merge_tree(git_dir, base_sha, head_sha, self.env)
        if result.tree is None:
            raise PullError(409, "Merge conflict: " + ", ".join(result.conflicts))
        new = gitops.commit_tree(git_dir, result.tree, [base_sha, head_sha], message or f"Merge {head} into {base}",
                                 self.env)
        self._advance(git_dir, base, new, base_sha)
        return new

    def _advance(self, git_dir: Path, branch: str, new: str, old: str) -> None:
        """Move ``branch`` from ``old`` to ``new`` atomically: a push that landed meanwhile wins (409)."""
        try:
            gitops.run(["--git-dir", str(git_dir), "update-ref", f"refs/heads/{branch}", new, old], env=self.env)
        except gitops.GitError:
            raise PullError(409, "Base branch was modified. Try the merge again.") from None

    def _rebase(self, git_dir: Path, base: str, head: str) -> str:
        """Replay the PR's commits onto ``base`` in a throwaway worktree of the bare repo."""
        with tempfile.TemporaryDirectory(prefix="forge-rebase-") as td:
            wt = Path(td) / "w"
            gitops.run(["--git-dir", str(git_dir), "worktree", "add", "-q", "--detach", str(wt), base], env=self.env)
            try:
                commits = gitops.commits_between(git_dir, base, head, self.env)
                if commits:
                    done = gitops.run(["cherry-pick", "--allow-empty", *commits], env=self.env, cwd=wt, ok=(0, 1))
                    if done.returncode:
                        raise PullError(405, "This branch can't be rebased")
                return gitops.run(["rev-parse", "HEAD"], env=self.env, cwd=wt).stdout.strip()
            finally:
                gitops.run(["--git-dir", str(git_dir), "worktree", "remove", "--force", str(wt)], env=self.env,
                           ok=(0, 128))
