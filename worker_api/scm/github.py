"""GitHub adapter: PR status over GraphQL (one round trip), merge over REST with method fallback.

Why GraphQL for status: ``reviewDecision``, ``mergeStateStatus``, draft state, review threads and the
check rollup come back in one call; REST would take four. Why REST for merge: the GraphQL merge
mutation needs node ids and reports a disallowed method less clearly than REST's 405.

Merge methods: squash first (one commit per bead on the target), then merge, then rebase: a repo
that allows only some methods answers 405 for the others. ``head_sha`` is sent with the merge so a
push after our last status check makes GitHub refuse (409) instead of merging unchecked commits.

Every call has a timeout. The token goes only into the Authorization header: errors carry the
HTTP status and GitHub's message, never the request headers.
"""
from __future__ import annotations

import asyncio
import os
import re
from typing import Any
from urllib.parse import urlparse

import aiohttp

from worker_api.scm.base import MergeResult, PrStatus, ScmError
from worker_api.scm.repos import parse_remote

DEFAULT_API_URL = "https://api.github.com"
API_URL_ENV = "GASTOWN_GITHUB_API_URL"
DEFAULT_TIMEOUT_S = 10.0
MERGE_METHODS = ("squash", "merge", "rebase")
API_VERSION = "2022-11-28"

_PR_PATH = re.compile(r"^/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/pull/([0-9]{1,9})(?:/.*)?$")

PR_QUERY = """
query($owner: String!, $name: String!, $number: Int!) {
  repository(owner: $owner, name: $name) {
    pullRequest(number: $number) {
      state isDraft reviewDecision mergeStateStatus mergeable headRefOid
      reviewThreads(first: 100) { nodes { isResolved } }
      commits(last: 1) { nodes { commit { oid statusCheckRollup { state contexts(first: 100) { nodes {
        __typename
        ... on CheckRun { name status conclusion }
        ... on StatusContext { context state }
      } } } } } }
    }
  }
}
""".strip()

_OK_CONCLUSIONS = {"SUCCESS", "NEUTRAL", "SKIPPED"}
_ROLLUP = {"SUCCESS": "success", "PENDING": "pending", "EXPECTED": "pending", "FAILURE": "failure", "ERROR": "failure"}


def parse_pr_url(pr_url: str, hosts: frozenset[str]) -> tuple[str, str, int]:
    """``https://github.com/<owner>/<repo>/pull/<n>`` → (owner, repo, n)."""
    u = urlparse(pr_url)
    m = _PR_PATH.match(u.path or "")
    if u.scheme not in ("http", "https") or not u.hostname or m is None:
        raise ScmError("unrecognized_url", "not a pull request URL")
    if u.hostname.lower() not in hosts:
        raise ScmError("host_mismatch", f"host {u.hostname} is not served by this GitHub adapter")
    return m.group(1), m.group(2), int(m.group(3))


def _checks(rollup: Any) -> tuple[str, tuple[str, ...]]:
    """Reduce a status-check rollup to success | pending | failure | none, plus failing names."""
    if not isinstance(rollup, dict):
        return "none", ()
    nodes = ((rollup.get("contexts") or {}).get("nodes")) or []
    if not nodes:
        return _ROLLUP.get(str(rollup.get("state")), "none"), ()
    pending, failing = False, []
    for n in nodes:
        if not isinstance(n, dict):
            continue
        if n.get("__typename") == "StatusContext":
            st = _ROLLUP.get(str(n.get("state")), "pending")
            name = str(n.get("context"))
        else:
            name = str(n.get("name"))
            st = "pending" if n.get("status") != "COMPLETED" else (
                "success" if n.get("conclusion") in _OK_CONCLUSIONS else "failure")
        if st == "failure":
            failing.append(name)
        pending = pending or st == "pending"
    return ("failure" if failing else "pending" if pending else "success"), tuple(failing[:20])


def parse_pr(pr: dict[str, Any]) -> PrStatus:
    try:
        commits = (pr.get("commits") or {}).get("nodes") or []
        commit = (commits[-1] or {}).get("commit") or {} if commits else {}
        checks, failing = _checks(commit.get("statusCheckRollup"))
        threads = (pr.get("reviewThreads") or {}).get("nodes") or []
        return PrStatus(
            state=str(pr["state"]).lower(), is_draft=bool(pr.get("isDraft")),
            review_decision=pr.get("reviewDecision"), merge_state_status=pr.get("mergeStateStatus"),
            mergeable=pr.get("mergeable"), checks=checks, failing_checks=failing,
            head_sha=pr.get("headRefOid") or commit.get("oid"),
            unresolved_threads=sum(1 for t in threads if isinstance(t, dict) and not t.get("isResolved")),
        )
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ScmError("invalid_response", f"unexpected pull request shape: {type(e).__name__}") from None


class GitHubProvider:
    """``ScmProvider`` for github.com or GitHub Enterprise (``api_url`` ending in ``/api/v3``)."""

    def __init__(self, api_url: str = DEFAULT_API_URL, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 web_hosts: frozenset[str] | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.graphql_url = (self.api_url[: -len("/api/v3")] + "/api/graphql" if self.api_url.endswith("/api/v3")
                            else self.api_url + "/graphql")
        api_host = (urlparse(self.api_url).hostname or "").lower()
        self.web_hosts = web_hosts or frozenset({"github.com", "www.github.com", api_host.removeprefix("api.")})
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_env(cls, **kw: Any) -> "GitHubProvider":
        return cls(os.environ.get(API_URL_ENV) or DEFAULT_API_URL, **kw)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    @staticmethod
    def _headers(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION, "User-Agent": "gastown-worker"}

    async def _call(self, method: str, url: str, token: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
        """(status, parsed JSON or None, headers); network failures and timeouts are ``transient``."""
        if not token:
            raise ScmError("no_token", "no GitHub token configured for this rig")
        try:
            async with self._http().request(method, url, json=body if method != "GET" else None,
                                            headers=self._headers(token),
                                            timeout=self.timeout) as r:
                text = await r.text()
                try:
                    data = await r.json(content_type=None) if text else None
                except ValueError:
                    data = None
                return r.status, data, r.headers
        except asyncio.TimeoutError:
            raise ScmError("transient", f"{method} timed out") from None
        except aiohttp.ClientError as e:
            raise ScmError("transient", f"{method} failed: {type(e).__name__}") from None

    @staticmethod
    def _http_error(status: int, data: Any, headers: Any) -> ScmError:
        msg = str((data or {}).get("message") or "") if isinstance(data, dict) else ""
        if status == 404:
            return ScmError("not_found", msg or "not found", status)
        if status == 429 or status >= 500 or (status == 403 and (headers.get("X-RateLimit-Remaining") == "0"
                                                                 or "rate limit" in msg.lower())):
            return ScmError("transient", msg or f"HTTP {status}", status)
        if status in (401, 403):
            # A revoked or expired token is fixed by an operator, not by failing the work at once.
            return ScmError("auth", msg or f"HTTP {status}", status)
        return ScmError("http", msg or f"HTTP {status}", status)

    def repo_of(self, git_url: str) -> tuple[str, str]:
        """(owner, name) of a rig's remote on this GitHub; ``host_mismatch`` for another host."""
        remote = parse_remote(git_url)
        parts = remote[2].split("/") if remote else []
        if remote is None or len(parts) != 2:
            raise ScmError("unrecognized_url", "not a GitHub repository URL")
        if remote[1].split(":")[0] not in self.web_hosts:
            raise ScmError("host_mismatch", f"host {remote[1]} is not served by this GitHub adapter")
        return parts[0], parts[1]

    async def open_pr(self, git_url: str, token: str, *, head: str, base: str, title: str, body: str) -> str:
        owner, name = self.repo_of(git_url)
        url = f"{self.api_url}/repos/{owner}/{name}/pulls"
        status, data, headers = await self._call("POST", url, token, {"title": title[:250], "head": head,
                                                                      "base": base, "body": body[:60000]})
        if status == 201 and isinstance(data, dict) and isinstance(data.get("html_url"), str):
            return data["html_url"]
        if status != 422:
            raise self._http_error(status, data, headers)
        # 422: most often "already exists" (our earlier answer was lost); otherwise a real refusal.
        status, found, headers = await self._call("GET", f"{url}?state=open&head={owner}:{head}&base={base}", token,
                                                  {})
        if status == 200 and isinstance(found, list) and found and isinstance(found[0], dict) \
                and isinstance(found[0].get("html_url"), str):
            return found[0]["html_url"]
        raise self._http_error(422, data, headers)

    async def pr_status(self, pr_url: str, token: str) -> PrStatus:
        owner, name, number = parse_pr_url(pr_url, self.web_hosts)
        status, data, headers = await self._call(
            "POST", self.graphql_url, token,
            {"query": PR_QUERY, "variables": {"owner": owner, "name": name, "number": number}})
        if status != 200:
            raise self._http_error(status, data, headers)
        if not isinstance(data, dict):
            raise ScmError("invalid_response", "GraphQL answer is not a JSON object")
        errors = data.get("errors") or []
        if any(isinstance(e, dict) and e.get("type") == "NOT_FOUND" for e in errors):
            raise ScmError("not_found", f"pull request {owner}/{name}#{number} not found")
        repo = (data.get("data") or {}).get("repository") if isinstance(data.get("data"), dict) else None
        pr = repo.get("pullRequest") if isinstance(repo, dict) else None
        if not isinstance(pr, dict):
            if errors:
                raise ScmError("invalid_response", str(errors[0].get("message") if isinstance(errors[0], dict)
                                                       else errors[0])[:200])
            raise ScmError("not_found", f"pull request {owner}/{name}#{number} not found")
        return parse_pr(pr)

    async def merge(self, pr_url: str, token: str, *, head_sha: str | None = None) -> MergeResult:
        """Try squash, then merge, then rebase, moving on only when GitHub answers 405."""
        owner, name, number = parse_pr_url(pr_url, self.web_hosts)
        url = f"{self.api_url}/repos/{owner}/{name}/pulls/{number}/merge"
        tried: list[str] = []
        detail = ""
        for method in MERGE_METHODS:
            body: dict[str, Any] = {"merge_method": method}
            if head_sha:
                body["sha"] = head_sha
            tried.append(method)
            status, data, headers = await self._call("PUT", url, token, body)
            msg = str(data.get("message") or "") if isinstance(data, dict) else ""
            if status == 200 and isinstance(data, dict) and data.get("merged"):
                return MergeResult(True, method, data.get("sha"), msg, tuple(tried))
            if status == 405:
                detail = msg or "method not allowed"
                continue
            if status == 409:  # head moved since our check: re-check on the next poll
                return MergeResult(False, None, None, msg or "head branch was modified", tuple(tried))
            raise self._http_error(status, data, headers)
        return MergeResult(False, None, None, detail, tuple(tried))
