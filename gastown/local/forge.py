"""A local git forge: real git smart HTTP (git's own ``git http-backend``) with token auth, on
127.0.0.1, for ``make run`` and the tests (docs/forge.md).

Clone, fetch and push go over ``http://127.0.0.1:PORT/<owner>/<repo>.git`` exactly as against a
hosted forge; a bare ``name`` means ``town/name``. The layout is GitHub Enterprise's: pull requests
at ``/<owner>/<repo>/pull/<n>``, the REST API under ``/api/v3`` and GraphQL at ``/api/graphql``
(``forge_api.py``), so the SCM adapter talks to it as to any GitHub. A push always needs a token; a clone or fetch of a private repo too. A missing or wrong
token is ``401`` with ``WWW-Authenticate: Basic``, so git asks its credential helper, the way it
does with GitHub. The token is the Basic password (any user name) or a Bearer token. Tokens are
never logged.

The scripting side (:meth:`Forge.create_repo`, :meth:`Forge.commit`, :meth:`Forge.log`) works on
the bare repositories directly, for tests that need a repo, a conflicting commit on ``main`` or
the history of a branch.

Standalone (``gastown up`` runs it so): ``python -m gastown.local.forge --root DIR --port P --repo
demo`` with the token in ``$GASTOWN_FORGE_TOKEN``; it prints ``{"forge": url}`` once serving. The
repositories live on in ``DIR``, and which are private is kept in ``DIR/private.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

from aiohttp import web

from gastown.local import forge_api
from gastown.local.forge_pulls import MERGE_METHODS, PullStore, RepoSettings

REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEFAULT_OWNER = "town"
SERVICES = frozenset({"git-upload-pack", "git-receive-pack"})
CGI_TIMEOUT_S = 300.0
PRIVATE_FILE = "private.json"
GIT_TIMEOUT_S = 60.0
_IDENTITY = {"GIT_AUTHOR_NAME": "forge", "GIT_AUTHOR_EMAIL": "forge@forge.local",
             "GIT_COMMITTER_NAME": "forge", "GIT_COMMITTER_EMAIL": "forge@forge.local"}


def http_backend() -> str:
    out = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT_S)
    return str(Path(out.stdout.strip()) / "git-http-backend")


class ForgeError(RuntimeError):
    pass


class Forge:
    """Bare repositories under ``root`` served over HTTP; ``tokens`` maps a token to its user."""

    def __init__(self, root: Path, *, tokens: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.tokens: dict[str, str] = dict(tokens or {})
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._backend = http_backend()
        self.private: set[str] = set()
        try:
            self.private.update(json.loads((root / PRIVATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            pass  # a new forge, or one whose repos are all public
        self.pulls = PullStore(root)

    @staticmethod
    def full_name(name: str) -> str:
        """``owner/name`` of a repository (a bare ``name`` is the default owner's); ForgeError if invalid."""
        owner, _, repo = name.rpartition("/")
        owner = owner or DEFAULT_OWNER
        if not (REPO_NAME.match(owner) and REPO_NAME.match(repo)) or repo.endswith(".git"):
            raise ForgeError(f"bad repository name {name!r}")
        return f"{owner}/{repo}"

    def exists(self, full: str) -> bool:
        return (self.root / f"{full}.git").is_dir()

    # -- server ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        forge_api.mount(app, self)
        app.router.add_route("*", "/{owner}/{repo}.git/{tail:.*}", self._git)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "Forge":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{self.full_name(name)}.git"

    @property
    def api_url(self) -> str:
        """What ``GASTOWN_GITHUB_API_URL`` is set to for this forge (GitHub Enterprise's layout)."""
        return f"{self.url}/api/v3"

    # -- auth -----------------------------------------------------------------------------------
    def user_of(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        token = None
        if scheme.lower() == "bearer":
            token = value.strip()
        elif scheme.lower() == "basic":
            try:
                token = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return None
        if not token:
            return None
        for known, user in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return user
        return None

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.Response(status=401, text="authentication required\n",
                            headers={"WWW-Authenticate": 'Basic realm="gastown forge"'})

    # -- git smart HTTP -------------------------------------------------------------------------
    async def _git(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        try:
            name = self.full_name(f"{request.match_info['owner']}/{request.match_info['repo']}")
        except ForgeError:
            return web.Response(status=404, text="no such repository\n")
        if not self.exists(name):
            return web.Response(status=404, text="no such repository\n")
        service = request.query.get("service") or tail.rsplit("/", 1)[-1]
        if service not in SERVICES and tail not in ("HEAD", "info/refs"):
            return web.Response(status=404, text="not a smart HTTP route\n")
        user = self.user_of(request.headers.get("Authorization", ""))
        if user is None and (service == "git-receive-pack" or name in self.private):
            return self._unauthorized()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root),
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{name}.git/{tail}", "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string, "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": user or "", "REMOTE_ADDR": request.remote or "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
        }
        if request.content_length is not None:
            env["CONTENT_LENGTH"] = str(request.content_length)
        async with asyncio.timeout(CGI_TIMEOUT_S):
            return await self._cgi(request, env)

    async def _cgi(self, request: web.Request, env: dict[str, str]) -> web.StreamResponse:
        proc = await asyncio.create_subprocess_exec(
            self._backend, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None

        async def feed() -> None:
            try:
                async for chunk in request.content.iter_chunked(1 << 16):
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            finally:
                proc.stdin.close()

        feeding = asyncio.create_task(feed())
        try:
            status, headers = await self._cgi_headers(proc.stdout)
            resp = web.StreamResponse(status=status, headers=headers)
            await resp.prepare(request)
            while chunk := await proc.stdout.read(1 << 16):
                await resp.write(chunk)
            await feeding
            await resp.write_eof()
            return resp
        finally:
            feeding.cancel()
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
            await proc.wait()

    @staticmethod
    async def _cgi_headers(stdout: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        status, headers = 200, {}
        while True:
            line = (await stdout.readline()).decode("latin-1").rstrip("\r\n")
            if not line:
                return status, headers
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split(" ", 1)[0])
            else:
                headers[key.strip()] = value.strip()

    # -- scripting ------------------------------------------------------------------------------
    def _run(self, args: list[str], cwd: Path | None = None) -> str:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root),
                                  **_IDENTITY}, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise ForgeError(f"git {args[0]} failed: {out.stderr.strip()[-300:]}")
        return out.stdout

    def create_repo(self, name: str, *, private: bool = True, files: Mapping[str, str] | None = None,
                    default_branch: str = "main", require_review: bool = False,
                    merge_methods: tuple[str, ...] = MERGE_METHODS) -> str:
        """A bare repo with one commit on ``default_branch`` holding ``files``; its clone URL.
        ``require_review``: PRs need an approving review (branch protection); ``merge_methods``:
        the PR merge methods allowed, others are 405."""
        name = self.full_name(name)
        bare = self.root / f"{name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        self._run(["init", "-q", "--bare", "-b", default_branch, str(bare)])
        if private:
            self.private.add(name)
            (self.root / PRIVATE_FILE).write_text(json.dumps(sorted(self.private)))
        self.pulls.repos[name] = RepoSettings(private, default_branch, require_review, list(merge_methods))
        self.pulls.save()
        self.commit(name, default_branch, files or {"README.md": f"# {name}\n"}, message="initial commit")
        return self.repo_url(name)

    def commit(self, name: str, branch: str, files: Mapping[str, str], *, message: str = "forge commit") -> str:
        """Commit ``files`` on ``branch`` straight into the bare repo (e.g. a conflicting commit on
        ``main``); the new commit's sha."""
        bare = self.root / f"{self.full_name(name)}.git"
        with tempfile.TemporaryDirectory(prefix="forge-") as td:
            work = Path(td) / "w"
            self._run(["clone", "-q", str(bare), str(work)])
            exists = self._run(["ls-remote", "--heads", "origin", branch], cwd=work).strip()
            self._run(["checkout", "-q", "-B", branch] + ([f"origin/{branch}"] if exists else []), cwd=work)
            for rel, text in files.items():
                path = work / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            self._run(["add", "--", *files], cwd=work)
            self._run(["commit", "-q", "-m", message], cwd=work)
            self._run(["push", "-q", "origin", f"HEAD:refs/heads/{branch}"], cwd=work)
            return self._run(["rev-parse", "HEAD"], cwd=work).strip()

    def log(self, name: str, branch: str = "main") -> list[str]:
        """Subjects of ``branch``'s history, newest first."""
        return self._run(["--git-dir", str(self.root / f"{self.full_name(name)}.git"), "log", "--format=%s",
                          branch]).splitlines()

    def head(self, name: str, branch: str) -> str | None:
        out = self._run(["--git-dir", str(self.root / f"{self.full_name(name)}.git"), "for-each-ref",
                         "--format=%(objectname)",
                         f"refs/heads/{branch}"]).strip()
        return out or None


async def _serve(root: Path, host: str, port: int, repos: list[str]) -> None:
    import signal

    token = os.environ.get("GASTOWN_FORGE_TOKEN", "")
    if not token:
        raise SystemExit("GASTOWN_FORGE_TOKEN is not set")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    forge = Forge(root, tokens={token: "town"})
    await forge.start(host, port)
    try:
        for name in repos:
            if not forge.exists(forge.full_name(name)):
                await asyncio.to_thread(forge.create_repo, name)
        print(json.dumps({"forge": forge.url, "api": forge.api_url, "repos": {n: forge.repo_url(n) for n in repos}}),
              flush=True)
        await stop.wait()
    finally:
        await forge.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="local git forge: git smart HTTP with token auth")
    ap.add_argument("--root", required=True, help="directory of the bare repositories")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--repo", action="append", default=[], help="a private repository to create if missing")
    a = ap.parse_args(argv)
    asyncio.run(_serve(Path(a.root), a.host, a.port, a.repo))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
