"""Role split and identity: which tools each role sees, and that a broken environment never leaves
an agent silently tool-less (reference §3.12 / bug 5: the prewarmed mayor had no tools at all)."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from plugin.identity import load_identity
from tests.test_plugin_support import GASTOWN_BIN, MAYOR_TOOLS, RIG_TOOLS, TOKEN, FakeWorker, Plugin, identity_env


@pytest.fixture
async def worker() -> Any:
    async with FakeWorker() as w:
        yield w


@pytest.mark.parametrize("role,expected", [
    ("mayor", MAYOR_TOOLS), ("polecat", RIG_TOOLS), ("refinery", RIG_TOOLS), ("triage", RIG_TOOLS),
])
async def test_tools_list_per_role(worker: FakeWorker, tmp_path: Path, role: str, expected: set[str]) -> None:
    async with Plugin(identity_env(worker.url, role=role, agent_id=f"{role}-1"), tmp_path / "err.log") as p:
        tools = await p.tools()
    assert set(tools) == expected
    for tool in tools.values():
        assert tool.description and len(tool.description) > 20, tool.name
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    if role != "mayor":
        assert "feedback" in tools["gt_request_changes"].input_schema["required"]
    assert worker.requests == [], "listing tools must not call the worker"


async def test_mayor_without_rig_id_is_fully_configured(worker: FakeWorker, tmp_path: Path) -> None:
    env = identity_env(worker.url, role="mayor", agent_id="mayor-1")
    del env["GASTOWN_RIG_ID"]
    async with Plugin(env, tmp_path / "err.log") as p:
        is_error, text = await p.call("gt_list_agents")
    assert not is_error, text
    assert "X-Gastown-Rig-Id" not in worker.requests[0].headers


@pytest.mark.parametrize("role,drop", [
    ("polecat", ["GASTOWN_CONTAINER_TOKEN"]),
    ("polecat", ["GASTOWN_API_URL", "GASTOWN_RIG_ID"]),
    ("refinery", ["GASTOWN_AGENT_ID"]),
    ("mayor", ["GASTOWN_CONTAINER_TOKEN", "GASTOWN_TOWN_ID"]),
])
async def test_missing_env_keeps_every_tool_and_each_names_the_variables(
    worker: FakeWorker, tmp_path: Path, role: str, drop: list[str]
) -> None:
    env = identity_env(worker.url, role=role, agent_id=f"{role}-1")
    for name in drop:
        if name == "GASTOWN_RIG_ID":
            env[name] = "  "  # blank counts as missing too
        else:
            del env[name]
    expected = MAYOR_TOOLS if role == "mayor" else RIG_TOOLS
    async with Plugin(env, tmp_path / "err.log") as p:
        tools = await p.tools()
        assert set(tools) == expected
        for name in sorted(tools):
            args = _minimal_args(tools[name].input_schema)
            is_error, text = await p.call(name, args)
            assert is_error, (name, text)
            assert text.startswith("error: MISSING_ENV: "), (name, text)
            for var in drop:
                assert var in text, (name, text)
        stderr = p.stderr()
    assert worker.requests == []
    assert "plugin.missing_env" in stderr
    for var in drop:
        assert var in stderr
    assert TOKEN not in stderr


async def test_missing_role_falls_back_to_rig_tools_and_names_the_role(worker: FakeWorker, tmp_path: Path) -> None:
    env = identity_env(worker.url)
    del env["GASTOWN_AGENT_ROLE"]
    async with Plugin(env, tmp_path / "err.log") as p:
        assert set(await p.tools()) == RIG_TOOLS
        is_error, text = await p.call("gt_prime")
    assert is_error and "GASTOWN_AGENT_ROLE" in text, text


async def test_started_log_names_identity_but_never_the_token(worker: FakeWorker, tmp_path: Path) -> None:
    async with Plugin(identity_env(worker.url), tmp_path / "err.log") as p:
        await p.call("gt_prime")
        stderr = p.stderr()
    assert '"plugin.started"' in stderr and '"polecat-1"' in stderr and '"tool_set": "rig"' in stderr
    assert TOKEN not in stderr


def test_load_identity_requires_rig_only_for_rig_roles() -> None:
    base = {"GASTOWN_AGENT_ROLE": "mayor", "GASTOWN_AGENT_ID": "m", "GASTOWN_TOWN_ID": "t",
            "GASTOWN_API_URL": "http://w/", "GASTOWN_CONTAINER_TOKEN": "x"}
    ident = load_identity(base)
    assert ident.ok and ident.is_mayor and ident.api_url == "http://w"
    assert "x" not in repr(ident)
    rig = load_identity({**base, "GASTOWN_AGENT_ROLE": "polecat"})
    assert rig.missing == ("GASTOWN_RIG_ID",)
    assert load_identity({}).missing == (
        "GASTOWN_AGENT_ROLE", "GASTOWN_AGENT_ID", "GASTOWN_TOWN_ID", "GASTOWN_API_URL", "GASTOWN_RIG_ID",
        "GASTOWN_CONTAINER_TOKEN or GASTOWN_AGENT_TOKEN_FILE",
    )


def _minimal_args(schema: dict[str, Any]) -> dict[str, Any]:
    """Schema-valid arguments, so the call reaches the tool body (and its identity check)."""
    samples = {"string": "x", "integer": 0, "boolean": False, "array": [], "object": {}}
    args: dict[str, Any] = {}
    for name in schema.get("required", []):
        prop = schema["properties"][name]
        if "enum" in prop:
            args[name] = prop["enum"][0]
        elif prop.get("type") == "array" and "$ref" in prop.get("items", {}):
            args[name] = [{"title": "x"}]
        else:
            args[name] = samples[prop.get("type", "string")]
    if "data" in args:
        args["data"] = "{}"
    return args


async def test_process_lifecycle_sigterm_and_stdin_eof(tmp_path: Path) -> None:
    """kilo stops its MCP children with SIGTERM or by closing stdin: both end the plugin with exit 0,
    and nothing but MCP messages ever reaches stdout."""
    env = {"PATH": os.environ.get("PATH", ""), "GASTOWN_AGENT_ROLE": "polecat"}
    proc = await asyncio.create_subprocess_exec(
        str(GASTOWN_BIN), "plugin", env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"plugin.missing_env" in line
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert await proc.stdout.read() == b""  # type: ignore[union-attr]
    assert b'"reason": "signal"' in await proc.stderr.read()

    proc = await asyncio.create_subprocess_exec(
        str(GASTOWN_BIN), "plugin", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and out == b""
    assert b'"stdin closed"' in err
