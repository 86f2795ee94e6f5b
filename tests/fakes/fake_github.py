"""Fake GitHub API (aiohttp, 127.0.0.1): the GraphQL pull-request query and the REST merge route.

It answers with GitHub's shapes (``data.repository.pullRequest``, ``NOT_FOUND`` errors, 405/409
merge refusals) so the real ``GitHubProvider`` is exercised end to end. Each PR is scripted through
``FakePr`` (checks, review decision, draft, merged, methods answering 405); every request is
recorded with its headers so tests can check the Authorization header and request shapes.
Standalone: ``python -m tests.fakes.fake_github --port 18090``.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_TOKEN = "ghp_fake_token_for_tests_0123456789"


@dataclass
class FakePr:
    owner: str
    repo: str
    number: int
    state: str = "OPEN"                       # OPEN | MERGED | CLOSED
    is_draft: bool = False
    review_decision: str | None = "REVIEW_REQUIRED"
    checks: str = "success"                   # success | pending | failure | none
    mergeable: str = "MERGEABLE"
    merge_state_override: str | None = None
    unresolved_threads: int = 0
    head_sha: str = "a" * 40
    disallowed_methods: set[str] = field(default_factory=set)  # answered with 405
    merged_with: str | None = None

    @property
    def url(self) -> str:
        return f"https://github.com/{self.owner}/{self.repo}/pull/{self.number}"

    def merge_state(self) -> str:
        """Roughly GitHub's ``mergeStateStatus`` for a branch protected by required checks and reviews."""
        if self.merge_state_override:
            return self.merge_state_override
        if self.is_draft:
            return "DRAFT"
        if self.mergeable == "CONFLICTING":
            return "DIRTY"
        if self.review_decision in ("REVIEW_REQUIRED", "CHANGES_REQUESTED") or self.checks in ("pending", "failure"):
            return "BLOCKED"
        return "CLEAN"

    def rollup(self) -> dict[str, Any] | None:
        if self.checks == "none":
            return None
        run = {"success": ("COMPLETED", "SUCCESS"), "failure": ("COMPLETED", "FAILURE"),
               "pending": ("IN_PROGRESS", None)}[self.checks]
        state = {"success": "SUCCESS", "failure": "FAILURE", "pending": "PENDING"}[self.checks]
        return {"state": state, "contexts": {"nodes": [
            {"__typename": "CheckRun", "name": "ci/test", "status": run[0], "conclusion": run[1]},
            {"__typename": "StatusContext", "context": "ci/lint", "state": "SUCCESS"},
        ]}}

    def graphql(self) -> dict[str, Any]:
        threads = [{"isResolved": False}] * self.unresolved_threads + [{"isResolved": True}]
        return {"state": self.state, "isDraft": self.is_draft, "reviewDecision": self.review_decision,
                "mergeStateStatus": self.merge_state(), "mergeable": self.mergeable, "headRefOid": self.head_sha,
                "reviewThreads": {"nodes": threads},
                "commits": {"nodes": [{"commit": {"oid": self.head_sha, "statusCheckRollup": self.rollup()}}]}}


class FakeGitHub:
    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.prs: dict[tuple[str, str, int], FakePr] = {}
        self.requests: list[dict[str, Any]] = []   # every request: method, path, headers, body
        self.delay_s = 0.0                           # answer this late (timeouts)
        self.fail_status: int | None = None          # answer every request with this status
        self.runner: web.AppRunner | None = None
        self.url = ""

    # -- scripting
    def add_pr(self, owner: str = "acme", repo: str = "widgets", number: int = 7, **kw: Any) -> FakePr:
        pr = FakePr(owner, repo, number, **kw)
        self.prs[(owner, repo, number)] = pr
        return pr

    @property
    def graphql_calls(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/graphql")]

    @property
    def merge_calls(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/merge")]

    # -- server
    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/graphql", self._graphql)
        app.router.add_put("/repos/{owner}/{repo}/pulls/{number}/merge", self._merge)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _enter(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        body = await request.json() if request.can_read_body else {}
        self.requests.append({"method": request.method, "path": request.path, "headers": dict(request.headers),
                              "body": body})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status:
            return body, web.json_response({"message": "Server Error"}, status=self.fail_status)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return body, web.json_response({"message": "Bad credentials"}, status=401)
        return body, None

    async def _graphql(self, request: web.Request) -> web.Response:
        body, refused = await self._enter(request)
        if refused is not None:
            return refused
        v = body.get("variables") or {}
        pr = self.prs.get((v.get("owner"), v.get("name"), v.get("number")))
        if pr is None:
            return web.json_response({"data": {"repository": None if not self._repo(v) else {"pullRequest": None}},
                                      "errors": [{"type": "NOT_FOUND", "path": ["repository", "pullRequest"],
                                                  "message": f"Could not resolve to a PullRequest with the number"
                                                             f" of {v.get('number')}."}]})
        return web.json_response({"data": {"repository": {"pullRequest": pr.graphql()}}})

    def _repo(self, v: dict[str, Any]) -> bool:
        return any(o == v.get("owner") and r == v.get("name") for o, r, _ in self.prs)

    async def _merge(self, request: web.Request) -> web.Response:
        body, refused = await self._enter(request)
        if refused is not None:
            return refused
        key = (request.match_info["owner"], request.match_info["repo"], int(request.match_info["number"]))
        pr = self.prs.get(key)
        if pr is None:
            return web.json_response({"message": "Not Found"}, status=404)
        method = body.get("merge_method", "merge")
        if method in pr.disallowed_methods:
            return web.json_response({"message": f"{method.capitalize()} merges are not allowed on this repository."},
                                     status=405)
        if pr.state != "OPEN" or pr.merge_state() not in ("CLEAN", "HAS_HOOKS", "UNSTABLE"):
            return web.json_response({"message": "Pull Request is not mergeable"}, status=405)
        if body.get("sha") and body["sha"] != pr.head_sha:
            return web.json_response({"message": "Head branch was modified. Review and try the merge again."},
                                     status=409)
        pr.state, pr.merged_with = "MERGED", method
        sha = hashlib.sha1(f"{pr.url}:{method}".encode()).hexdigest()
        return web.json_response({"sha": sha, "merged": True, "message": "Pull Request successfully merged"})


async def _main(port: int) -> None:
    gh = FakeGitHub()
    gh.add_pr()
    print(await gh.start(port), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=18090)
    asyncio.run(_main(parser.parse_args().port))
