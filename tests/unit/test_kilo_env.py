"""The child env and KILO_CONFIG_CONTENT are pure functions of the request (no os.environ leaks)."""
from __future__ import annotations

import json
from pathlib import Path

from supervisor.kilo_env import AgentPaths, build_child_env, build_kilo_config, config_content, split_model
from supervisor.models import StartAgentRequest
from supervisor.states import AgentState, IllegalTransition, check_transition
from tests.conftest import start_body

PROVIDERS = {"fake": {"npm": "@ai-sdk/openai-compatible", "options": {"baseURL": "http://127.0.0.1:1/v1"}, "models": {"m1": {}}}}


def _req(**kw) -> StartAgentRequest:
    return StartAgentRequest.model_validate(start_body(**kw))


def test_split_model_uses_configured_provider_else_gateway():
    assert split_model("fake/m1", PROVIDERS) == ("fake", "m1")
    assert split_model("anthropic/claude-sonnet-4", PROVIDERS) == ("kilo", "anthropic/claude-sonnet-4")
    assert split_model("kilo/auto", None) == ("kilo", "auto")


def test_config_is_canonical_and_carries_plugin_identity():
    cfg = build_kilo_config(_req(), providers=PROVIDERS, kilocode_token=None, plugin_command=["gastown", "plugin"], api_url="http://w")
    assert cfg["model"] == "fake/m1" and cfg["enabled_providers"] == ["fake"]
    mcp = cfg["mcp"]["gastown"]
    assert mcp["command"] == ["gastown", "plugin"]
    assert mcp["environment"] == {"GASTOWN_AGENT_ID": "polecat-1", "GASTOWN_AGENT_ROLE": "polecat", "GASTOWN_TOWN_ID": "town-test",
                                  "GASTOWN_RIG_ID": "rig-1", "GASTOWN_API_URL": "http://w"}
    assert cfg["permission"]["question"] == "deny"
    again = build_kilo_config(_req(), providers=PROVIDERS, kilocode_token=None, plugin_command=["gastown", "plugin"], api_url="http://w")
    assert config_content(cfg) == config_content(again)


def test_gateway_config_registers_models_and_keeps_token_out_of_mcp_env():
    cfg = build_kilo_config(_req(model="anthropic/claude-sonnet-4", organization_id="org-1"), providers=None,
                            kilocode_token="kc-token-123456789", plugin_command=["gastown", "plugin"], api_url=None)
    assert cfg["model"] == "kilo/anthropic/claude-sonnet-4"
    assert cfg["provider"]["kilo"]["models"] == {"anthropic/claude-sonnet-4": {}}
    assert cfg["provider"]["kilo"]["options"]["kilocodeOrganizationId"] == "org-1"
    assert "kc-token" not in json.dumps(cfg["mcp"])


def test_child_env_does_not_inherit_runtime_secrets(tmp_path: Path):
    base = {"PATH": "/usr/bin", "GASTOWN_CONTROL_TOKEN": "ctl", "AWS_SECRET_ACCESS_KEY": "aws", "HOME": "/root"}
    req = _req(env_vars={"CUSTOM": "1", "HOME": "/evil", "GASTOWN_AGENT_ID": "spoof"})
    env = build_child_env(req, paths=AgentPaths.for_agent(tmp_path, "polecat-1"), kilo_bin="/k/bin/kilo", config_json="{}",
                          password="pw", parent_pid=42, api_url="http://w", kilocode_token=None, base_env=base)
    assert "GASTOWN_CONTROL_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    # the agent's own token is a file it reads; the runtime's token is never in an agent's env
    assert "GASTOWN_CONTAINER_TOKEN" not in env
    assert env["GASTOWN_AGENT_TOKEN_FILE"] == str(tmp_path / "agents" / "polecat-1" / "home" / ".gastown" / "token")
    assert env["TMPDIR"] == str(tmp_path / "agents" / "polecat-1" / "home" / "tmp")
    assert env["PATH"] == "/usr/bin" and env["CUSTOM"] == "1"
    assert env["HOME"] == str(tmp_path / "agents" / "polecat-1" / "home")
    assert env["GASTOWN_AGENT_ID"] == "polecat-1"
    assert env["KILO_PARENT_PID"] == "42" and env["KILO_DISABLE_MODELS_FETCH"] == "1"
    assert env["GIT_AUTHOR_NAME"] == "Toast (gastown)"
    assert env["KILO_TREE_SITTER_WASM_DIR"] == "/k/bin/tree-sitter"


def _env(tmp_path: Path, **kw) -> dict[str, str]:
    return build_child_env(_req(**kw), paths=AgentPaths.for_agent(tmp_path, "polecat-1"), kilo_bin="/k/bin/kilo",
                           config_json="{}", password="pw", parent_pid=42, api_url="http://w",
                           kilocode_token=None, base_env={"PATH": "/usr/bin"})


def test_a_reserved_env_var_of_a_request_never_reaches_the_agent(tmp_path: Path):
    env = _env(tmp_path, env_vars={"LD_PRELOAD": "/evil.so", "https_proxy": "http://evil", "GIT_SSH_COMMAND": "evil",
                                   "NODE_OPTIONS": "--require /evil", "GH_TOKEN": "x", "SAFE": "ok"})
    assert env["SAFE"] == "ok"
    assert not {"LD_PRELOAD", "https_proxy", "GIT_SSH_COMMAND", "NODE_OPTIONS", "GH_TOKEN"} & env.keys()


def test_a_town_git_identity_authors_commits_and_keeps_the_agent_for_a_trailer(tmp_path: Path):
    env = _env(tmp_path, git_author_name="Acme Bot", git_author_email="bot@acme.test", identity="Toast (polecat)")
    assert env["GIT_AUTHOR_NAME"] == env["GIT_COMMITTER_NAME"] == "Acme Bot"
    assert env["GIT_AUTHOR_EMAIL"] == env["GIT_COMMITTER_EMAIL"] == "bot@acme.test"
    assert env["GASTOWN_AI_AGENT_NAME"] == "Toast (gastown)" and "GASTOWN_DISABLE_AI_COAUTHOR" not in env
    assert env["GASTOWN_AGENT_IDENTITY"] == "Toast (polecat)"
    assert _env(tmp_path, git_author_name="Acme Bot", disable_ai_coauthor=True)["GASTOWN_DISABLE_AI_COAUTHOR"] == "1"
    assert _env(tmp_path)["GIT_AUTHOR_NAME"] == "Toast (gastown)"


def test_illegal_state_transition_raises():
    check_transition(AgentState.starting, AgentState.running)
    for old, new in [(AgentState.exited, AgentState.running), (AgentState.stopping, AgentState.running),
                     (AgentState.failed, AgentState.stopping)]:
        try:
            check_transition(old, new)
        except IllegalTransition:
            continue
        raise AssertionError(f"{old} -> {new} allowed")
