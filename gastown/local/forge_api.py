"""The GitHub API subset the SCM adapter uses, served by the local forge (GitHub Enterprise's layout:
REST under ``/api/v3``, GraphQL at ``/api/graphql``), over the forge's real repositories.

REST: ``GET /repos/{o}/{r}``, ``GET …/branches/{b}``, ``GET|POST …/pulls``, ``GET …/pulls/{n}``,
``PUT …/pulls/{n}/merge`` (merge | squash | rebase, 405 for a method the repo disallows or a PR that
is not mergeable, 409 when ``sha`` is not the head), ``POST …/pulls/{n}/reviews``,
``POST …/statuses/{sha}``, ``POST …/merges`` (merge a branch: 201, 204 nothing to merge, 409
conflict). GraphQL answers the one query the adapter sends (a pull request's status) with GitHub's
shape; any other query is an error, as an unknown field is on GitHub. Auth: ``Bearer``/``token``
header; a bad token is 401, anonymous reads of a public repo are allowed, writes never are.
Scripting for tests beside it (``set_threads``) is on :class:`~gastown.local.forge_pulls.PullStore`.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from gastown.local.forge_pulls import Pull, PullError, PullStore

Handler = Callable[[web.Request, str, str | None], Awaitable[web.StreamResponse]]


class ForgeView(Protocol):
    url: str
    private: set[str]
    pulls: PullStore

    def user_of(self, header: str) -> str | None: ...

    def full_name(self, name: str) -> str: ...

    def exists(self, full: str) -> bool: ...


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message, "documentation_url": "https://docs.github.com/rest"},
                             status=status)


class ForgeApi:
    def __init__(self, forge: ForgeView) -> None:
        self.forge = forge
        self.lock = asyncio.Lock()  # one git writer at a time: merges move refs

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            raise PullError(400, "Problems parsing JSON") from None
        if not isinstance(body, dict):
            raise PullError(400, "Problems parsing JSON")
        return body

    def route(self, handler: Handler, *, write: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Auth and repo lookup around a handler; ``PullError`` becomes GitHub's error shape."""
        async def wrapped(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            user = self.forge.user_of(header.replace("token ", "Bearer ", 1) if header.startswith("token ") else header)
            if header and user is None:
                return _error(401, "Bad credentials")
            try:
                repo = self.forge.full_name(f"{request.match_info['owner']}/{request.match_info['repo']}")
            except Exception:  # noqa: BLE001 - any malformed name is an unknown repo
                return _error(404, "Not Found")
            if not self.forge.exists(repo) or (user is None and repo in self.forge.private):
                return _error(404, "Not Found")  # GitHub hides private repos from strangers
            if write and user is None:
                return _error(401, "Requires authentication")
            try:
                return await handler(request, repo, user)
            except PullError as e:
                return _error(e.status, e.message)
        return wrapped

    async def _git(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        async with self.lock:
            return await asyncio.to_thread(fn, *args, **kw)

    def _pull(self, repo: str, number: str) -> Pull:
        pull = self.forge.pulls.get(repo, int(number)) if number.isdigit() and len(number) < 10 else None
        if pull is None:
            raise PullError(404, "Not Found")
        return pull

    def pull_json(self, pull: Pull) -> dict[str, Any]:
        store = self.forge.pulls
        return {"number": pull.number, "state": "open" if pull.state == "open" else "closed",
                "merged": pull.state == "merged", "draft": pull.draft, "title": pull.title, "body": pull.body,
                "html_url": f"{self.forge.url}/{pull.repo}/pull/{pull.number}",
                "url": f"{self.forge.url}/api/v3/repos/{pull.repo}/pulls/{pull.number}",
                "head": {"ref": pull.head, "sha": store.head_of(pull.repo, pull.head)},
                "base": {"ref": pull.base, "sha": store.head_of(pull.repo, pull.base)},
                "merge_commit_sha": pull.merge_commit}

    # -- REST -----------------------------------------------------------------------------------
    async def get_repo(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        s = self.forge.pulls.repos.get(repo)
        return web.json_response({"full_name": repo, "private": repo in self.forge.private,
                                  "default_branch": s.default_branch if s else "main",
                                  "allow_merge_commit": "merge" in (s.merge_methods if s else ["merge"]),
                                  "allow_squash_merge": "squash" in (s.merge_methods if s else ["squash"]),
                                  "allow_rebase_merge": "rebase" in (s.merge_methods if s else ["rebase"])})

    async def get_branch(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        branch = request.match_info["branch"]
        sha = await asyncio.to_thread(self.forge.pulls.head_of, repo, branch)
        if sha is None:
            return _error(404, "Branch not found")
        return web.json_response({"name": branch, "commit": {"sha": sha}})

    async def list_pulls(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        state = request.query.get("state", "open")
        head = request.query.get("head", "").rpartition(":")[2]
        base = request.query.get("base", "")
        out = [p for p in self.forge.pulls.pulls.get(repo, [])
               if (state == "all" or (p.state == "open") == (state == "open"))
               and (not head or p.head == head) and (not base or p.base == base)]
        return web.json_response([await asyncio.to_thread(self.pull_json, p) for p in out])

    async def create_pull(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        body = await self._body(request)
        fields = {k: body.get(k) for k in ("title", "head", "base")}
        if not all(isinstance(v, str) and v for v in fields.values()):
            raise PullError(422, "Validation Failed: title, head and base are required")
        pull = await self._git(self.forge.pulls.create, repo, title=fields["title"],
                               head=str(fields["head"]).rpartition(":")[2], base=fields["base"],
                               body=str(body.get("body") or ""), draft=bool(body.get("draft")))
        return web.json_response(await asyncio.to_thread(self.pull_json, pull), status=201)

    async def get_pull(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        pull = self._pull(repo, request.match_info["number"])
        data = await asyncio.to_thread(self.pull_json, pull)
        data["mergeable"] = await asyncio.to_thread(self.forge.pulls.mergeable, pull) == "MERGEABLE"
        return web.json_response(data)

    async def merge_pull(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        pull = self._pull(repo, request.match_info["number"])
        body = await self._body(request)
        method = str(body.get("merge_method") or "merge")
        sha = await self._git(self.forge.pulls.merge, pull, method, body.get("sha") or None)
        return web.json_response({"sha": sha, "merged": True, "message": "Pull Request successfully merged"})

    async def review(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        pull = self._pull(repo, request.match_info["number"])
        body = await self._body(request)
        review = await self._git(self.forge.pulls.review, pull, user or "-", str(body.get("event") or "COMMENT"),
                                 str(body.get("body") or ""))
        return web.json_response(review)

    async def status(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        body = await self._body(request)
        sha = request.match_info["sha"]
        await self._git(self.forge.pulls.set_status, repo, sha, str(body.get("context") or "default"),
                        str(body.get("state") or ""), str(body.get("description") or ""))
        return web.json_response({"state": body.get("state"), "context": body.get("context") or "default"},
                                 status=201)

    async def merge_branch(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        body = await self._body(request)
        base, head = body.get("base"), body.get("head")
        if not (isinstance(base, str) and base and isinstance(head, str) and head):
            raise PullError(422, "Validation Failed: base and head are required")
        msg = body.get("commit_message")
        sha = await self._git(self.forge.pulls.merge_branches, repo, base, head, msg if isinstance(msg, str) else None)
        if sha is None:
            return web.Response(status=204)
        return web.json_response({"sha": sha, "commit": {"message": msg or f"Merge {head} into {base}"}}, status=201)

    # -- GraphQL --------------------------------------------------------------------------------
    def pr_graphql(self, pull: Pull) -> dict[str, Any]:
        store = self.forge.pulls
        head = store.head_of(pull.repo, pull.head)
        checks = store.checks(pull.repo, head)
        rollup = None
        if checks:
            states = {c["state"] for c in checks.values()}
            overall = ("FAILURE" if states & {"failure", "error"} else "PENDING" if "pending" in states
                       else "SUCCESS")
            rollup = {"state": overall, "contexts": {"nodes": [
                {"__typename": "StatusContext", "context": name, "state": c["state"].upper()}
                for name, c in sorted(checks.items())]}}
        threads = [{"isResolved": False}] * pull.unresolved_threads
        return {"state": pull.state.upper(), "isDraft": pull.draft, "reviewDecision": store.review_decision(pull),
                "mergeStateStatus": store.merge_state(pull) if pull.state == "open" else "UNKNOWN",
                "mergeable": store.mergeable(pull), "headRefOid": head,
                "reviewThreads": {"nodes": threads},
                "commits": {"nodes": [{"commit": {"oid": head, "statusCheckRollup": rollup}}]}}

    async def graphql(self, request: web.Request) -> web.Response:
        user = self.forge.user_of(request.headers.get("Authorization", ""))
        if user is None:
            return _error(401, "This endpoint requires you to be authenticated.")
        try:
            body = await self._body(request)
        except PullError as e:
            return _error(e.status, e.message)
        query, v = str(body.get("query") or ""), body.get("variables") or {}
        if "pullRequest(" not in query or not isinstance(v, dict):
            return web.json_response({"errors": [{"message": "this forge answers the pull request status query only"}]})
        try:
            repo = self.forge.full_name(f"{v.get('owner')}/{v.get('name')}")
        except Exception:  # noqa: BLE001
            repo = ""
        if not repo or not self.forge.exists(repo):
            return web.json_response({"data": {"repository": None}, "errors": [
                {"type": "NOT_FOUND", "path": ["repository"], "message": "Could not resolve to a Repository."}]})
        number = v.get("number")
        pull = self.forge.pulls.get(repo, number) if isinstance(number, int) else None
        if pull is None:
            return web.json_response({"data": {"repository": {"pullRequest": None}}, "errors": [
                {"type": "NOT_FOUND", "path": ["repository", "pullRequest"],
                 "message": f"Could not resolve to a PullRequest with the number of {number}."}]})
        async with self.lock:
            data = await asyncio.to_thread(self.pr_graphql, pull)
        return web.json_response({"data": {"repository": {"pullRequest": data}}})

    async def pull_page(self, request: web.Request, repo: str, user: str | None) -> web.Response:
        """The PR's ``html_url``: its facts as JSON (a link target for people and dashboards)."""
        pull = self._pull(repo, request.match_info["number"])
        async with self.lock:
            data = {**await asyncio.to_thread(self.pull_json, pull), **await asyncio.to_thread(self.pr_graphql, pull)}
        return web.json_response(data)


def mount(app: web.Application, forge: ForgeView) -> None:
    api = ForgeApi(forge)
    r, base = app.router, "/api/v3/repos/{owner}/{repo}"
    r.add_post("/api/graphql", api.graphql)
    r.add_get(base, api.route(api.get_repo))
    r.add_get(base + "/branches/{branch:.+}", api.route(api.get_branch))
    r.add_get(base + "/pulls", api.route(api.list_pulls))
    r.add_post(base + "/pulls", api.route(api.create_pull, write=True))
    r.add_get(base + "/pulls/{number}", api.route(api.get_pull))
    r.add_put(base + "/pulls/{number}/merge", api.route(api.merge_pull, write=True))
    r.add_post(base + "/pulls/{number}/reviews", api.route(api.review, write=True))
    r.add_post(base + "/statuses/{sha}", api.route(api.status, write=True))
    r.add_post(base + "/merges", api.route(api.merge_branch, write=True))
    r.add_get("/{owner}/{repo}/pull/{number}", api.route(api.pull_page))
