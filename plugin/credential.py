"""git's credential helper for agents: ``gastown git-credential get`` (docs/forge.md §2).

git runs it whenever a remote asks for credentials (a 401), with ``protocol``, ``host`` and
``path`` on stdin (``credential.useHttpPath`` is on). It asks the worker for the agent's rig
credential with the agent's own identity (the env the plugin reads) and prints ``username`` and
``password`` for git only. Anything else (``store``, ``erase``, no identity, a refusal) prints
nothing, so git fails with its own authentication error; the reason goes to stderr without the
token. Nothing is cached: every git call asks again, so an expired or rotated token is replaced.
"""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Mapping, TextIO

from gastown.contract.identity import AGENT_ID, API_URL, TOKEN, TOKEN_FILE, TOWN_ID
from plugin.client import WorkerClient, WorkerError, seg
from plugin.identity import load_identity

TIMEOUT_S = 15.0


def parse(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value
    return out


async def _ask(env: Mapping[str, str], url: str) -> dict:
    ident = load_identity(env)
    client = WorkerClient(ident, timeout_s=TIMEOUT_S)
    try:
        return await client.call("GET", f"{client.town_path}/agents/{seg(ident.agent_id)}/git-credential",
                                 params={"url": url})
    finally:
        await client.aclose()


def run_credential_helper(op: str, stdin: TextIO, stdout: TextIO, stderr: TextIO, env: Mapping[str, str]) -> int:
    if op != "get":
        return 0
    req = parse(stdin.read())
    protocol, host = req.get("protocol", ""), req.get("host", "")
    if protocol not in ("http", "https") or not host:
        return 0
    missing = [name for name in (API_URL, TOWN_ID, AGENT_ID) if not (env.get(name) or "").strip()]
    if not load_identity(env).current_token():
        missing.append(f"{TOKEN} or {TOKEN_FILE}")
    if missing:
        print(f"gastown git-credential: no agent identity ({', '.join(missing)} not set)", file=stderr)
        return 0
    url = f"{protocol}://{host}/{req.get('path', '')}"
    try:
        answer = asyncio.run(_ask(env, url))
    except WorkerError as e:
        print(f"gastown git-credential: {e.code}: {e.message}", file=stderr)
        return 0
    if not isinstance(answer, dict) or not answer.get("password"):
        return 0
    stdout.write(f"username={answer.get('username') or 'x-access-token'}\npassword={answer['password']}\n")
    stdout.flush()
    return 0


def main(op: str) -> int:
    return run_credential_helper(op, sys.stdin, sys.stdout, sys.stderr, os.environ)
