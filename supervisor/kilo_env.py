"""Build one agent's child environment and ``KILO_CONFIG_CONTENT`` (docs/contract.md §5).

Pure functions of (request, runtime config, paths): the real start and the mayor prewarm call the
same code, so a prewarmed server's env is identical to what the start would build, and comparing
the two config strings decides reuse. The child env starts from a small allow-list of the runtime's
own env (PATH, locale, CA bundles) — never a copy of ``os.environ``, which holds the control token
and store credentials.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gastown.contract import identity as ident
from gastown.contract.env import is_reserved_env_key
from supervisor.models import StartAgentRequest

INHERITED_ENV_KEYS = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)

# Verified on these machines to keep kilo 7.7.7 fully offline (docs/kilo-serve.md §3).
HERMETIC_ENV = {
    "KILO_DISABLE_MODELS_FETCH": "1",
    "KILO_DISABLE_AUTOUPDATE": "1",
    "KILO_DISABLE_LSP_DOWNLOAD": "1",
    "KILO_DISABLE_SHARE": "1",
    "KILO_DISABLE_SESSION_INGEST": "1",
    "KILO_DISABLE_PRESENCE": "1",
    "KILO_TELEMETRY_LEVEL": "off",
    "KILO_DISABLE_DEFAULT_PLUGINS": "1",
    "KILO_DISABLE_EMBEDDED_WEB_UI": "1",
    "KILO_DISABLE_EXTERNAL_SKILLS": "1",
    "KILO_DISABLE_CLAUDE_CODE": "1",
    "KILO_DISABLE_CODEBASE_INDEXING": "1",
    "KILO_DISABLE_PROJECT_CONFIG": "1",
    "KILO_NO_DAEMON": "1",
}

# Unattended agents: never block a turn on a permission prompt or the question tool.
PERMISSIONS = {
    "*": "allow",
    "edit": "allow",
    "bash": "allow",
    "webfetch": "allow",
    "doom_loop": "allow",
    "external_directory": "allow",
    "question": "deny",
}

KILO_GATEWAY_PROVIDER = "kilo"


@dataclass(frozen=True)
class AgentPaths:
    """Where one agent lives on disk: ``$GASTOWN_DATA_DIR/agents/<agent_id>/{home,workspace}``."""

    root: Path

    @classmethod
    def for_agent(cls, data_dir: Path, agent_id: str) -> "AgentPaths":
        return cls(root=Path(data_dir) / "agents" / agent_id)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def workdir(self) -> Path:
        return self.root / "workspace"

    @property
    def data_home(self) -> Path:
        return self.home / "data"

    @property
    def token_file(self) -> Path:
        """The agent's own worker token (``supervisor.agent_tokens``), never the runtime's."""
        return self.home / ".gastown" / "token"

    @property
    def kilo_db(self) -> Path:
        return self.data_home / "kilo" / "kilo.db"

    def xdg_env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.data_home),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_CACHE_HOME": str(self.home / "cache"),
            "XDG_STATE_HOME": str(self.home / "state"),
            "TMPDIR": str(self.home / "tmp"),  # its own: files in a shared /tmp are other agents' to read
        }

    def make_dirs(self) -> None:
        for value in self.xdg_env().values():
            Path(value).mkdir(parents=True, exist_ok=True)
        self.kilo_db.parent.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)


def split_model(model: str, providers: Mapping[str, Any] | None) -> tuple[str, str]:
    """``"fake/m1"`` → ``("fake", "m1")`` when ``fake`` is a configured provider; otherwise the whole
    string is a Kilo gateway model id (``"anthropic/claude-sonnet-4"`` → ``("kilo", ...)``)."""
    head, sep, rest = model.partition("/")
    if providers and sep and head in providers:
        return head, rest
    if sep and head == KILO_GATEWAY_PROVIDER:
        return KILO_GATEWAY_PROVIDER, rest
    return KILO_GATEWAY_PROVIDER, model


def _gateway_provider(token: str, organization_id: str | None, model_ids: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {"apiKey": token, "kilocodeToken": token}
    if organization_id:
        options["kilocodeOrganizationId"] = organization_id
    return {KILO_GATEWAY_PROVIDER: {"options": options, "models": {m: {} for m in model_ids}}}


def identity_env(req: StartAgentRequest, api_url: str | None, token_file: Path | None = None) -> dict[str, str]:
    """What the gastown plugin reads to know who it serves (non-secret: the token is in the agent's
    own file, whose path this names)."""
    env = {ident.AGENT_ID: req.agent_id, ident.ROLE: req.role.value, ident.TOWN_ID: req.town_id, ident.RIG_ID: req.rig_id}
    if api_url:
        env[ident.API_URL] = api_url
        if token_file is not None:
            env[ident.TOKEN_FILE] = str(token_file)
    if req.identity:
        env[ident.IDENTITY] = req.identity
    return env


def build_kilo_config(
    req: StartAgentRequest,
    *,
    providers: Mapping[str, Any] | None,
    kilocode_token: str | None,
    plugin_command: list[str],
    api_url: str | None,
    token_file: Path | None = None,
) -> dict[str, Any]:
    provider_id, model_id = split_model(req.model, providers)
    small_provider, small_id = split_model(req.small_model or req.model, providers)
    if providers:
        provider_cfg: dict[str, Any] = json.loads(json.dumps(providers))
        enabled = sorted(provider_cfg)
    else:
        provider_cfg = {}
        enabled = [KILO_GATEWAY_PROVIDER]
    if KILO_GATEWAY_PROVIDER in (provider_id, small_provider) and kilocode_token:
        gw_models = sorted({m for p, m in ((provider_id, model_id), (small_provider, small_id)) if p == KILO_GATEWAY_PROVIDER})
        provider_cfg.update(_gateway_provider(kilocode_token, req.organization_id, gw_models))
        if KILO_GATEWAY_PROVIDER not in enabled:
            enabled = sorted({*enabled, KILO_GATEWAY_PROVIDER})
    return {
        "$schema": "https://app.kilo.ai/config.json",
        "model": f"{provider_id}/{model_id}",
        "small_model": f"{small_provider}/{small_id}",
        "enabled_providers": enabled,
        "provider": provider_cfg,
        "permission": dict(PERMISSIONS),
        "share": "disabled",
        "autoupdate": False,
        "lsp": False,
        "formatter": False,
        "snapshot": False,
        "plugin": [],
        "mcp": {
            "gastown": {
                "type": "local",
                "command": list(plugin_command),
                "environment": identity_env(req, api_url, token_file),
                "enabled": True,
            }
        },
    }


def config_content(config: Mapping[str, Any]) -> str:
    """Canonical serialisation: equal configs give byte-identical strings (prewarm reuse check)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def git_identity(req: StartAgentRequest) -> dict[str, str]:
    """Commits are the town's (or rig's) identity when one is set, else the agent's own. With a
    custom identity the agent's is kept for a co-author trailer, unless the town turned that off."""
    agent_name, agent_email = f"{req.name} (gastown)", f"{req.agent_id}@gastown.local"
    name, email = req.git_author_name or agent_name, req.git_author_email or agent_email
    env = {"GIT_AUTHOR_NAME": name, "GIT_COMMITTER_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_EMAIL": email}
    if req.git_author_name or req.git_author_email:
        env.update(GASTOWN_AI_AGENT_NAME=agent_name, GASTOWN_AI_AGENT_EMAIL=agent_email)
    if req.disable_ai_coauthor:
        env["GASTOWN_DISABLE_AI_COAUTHOR"] = "1"
    return env


def credential_helper_env(command: list[str]) -> dict[str, str]:
    """git config through the environment (git >= 2.31): the credential helper, asked with the URL's
    path so the worker can tell which repository is meant. No secret: the helper fetches it."""
    helper = "!" + " ".join(shlex.quote(c) for c in command)
    return {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": helper,
            "GIT_CONFIG_KEY_1": "credential.useHttpPath", "GIT_CONFIG_VALUE_1": "true"}


_IDENTITY_KEYS = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")


def credential_wiring(git_env: Mapping[str, str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Read back from an agent's git env (the inverse of :func:`credential_helper_env`): its
    ``credential.*`` config pairs, and the identity env the helper asks the worker with plus the
    commit identity. What the runtime's own hardened git (drain save, mirror fetch) borrows."""
    pairs = []
    for i in range(int(git_env.get("GIT_CONFIG_COUNT", "0") or 0)):
        key, value = git_env.get(f"GIT_CONFIG_KEY_{i}"), git_env.get(f"GIT_CONFIG_VALUE_{i}")
        if key and value is not None and key.startswith("credential."):
            pairs.append((key, value))
    extra = {k: v for k, v in git_env.items() if k.startswith("GASTOWN_") or k in _IDENTITY_KEYS}
    return pairs, extra


def git_access_env(req: StartAgentRequest, *, api_url: str | None, container_token: str | None = None,
                   token_file: Path | None = None, credential_helper: list[str] | None) -> dict[str, str]:
    """What git needs to reach the rig's repository as this agent: the identity, the token the
    credential helper asks the worker with (the agent's file in kilo; the runtime's own token only
    for the clone the runtime runs itself), and the helper itself."""
    env = identity_env(req, api_url, token_file)
    if container_token:
        env[ident.TOKEN] = container_token
    if credential_helper:
        env.update(credential_helper_env(credential_helper))
    return env


def build_child_env(
    req: StartAgentRequest,
    *,
    paths: AgentPaths,
    kilo_bin: str,
    config_json: str,
    password: str,
    parent_pid: int,
    api_url: str | None,
    kilocode_token: str | None,
    base_env: Mapping[str, str] | None = None,
    credential_helper: list[str] | None = None,
) -> dict[str, str]:
    base = os.environ if base_env is None else base_env
    env = {k: base[k] for k in INHERITED_ENV_KEYS if k in base}
    # Request env first, so every key the runtime sets below wins over it.
    env.update({k: v for k, v in req.env_vars.items() if not is_reserved_env_key(k)})
    env.update(paths.xdg_env())
    env.update(HERMETIC_ENV)
    env.update(git_access_env(req, api_url=api_url, token_file=paths.token_file, credential_helper=credential_helper))
    env.update(git_identity(req))
    env.update(
        {
            "KILO_TREE_SITTER_WASM_DIR": str(Path(kilo_bin).parent / "tree-sitter"),
            "KILO_CONFIG_CONTENT": config_json,
            "KILO_SERVER_PASSWORD": password,
            "KILO_PARENT_PID": str(parent_pid),
            "KILO_PLATFORM": "gastown",
            "KILOCODE_FEATURE": "gastown",
            "GIT_TERMINAL_PROMPT": "0",
        }
    )
    if kilocode_token:
        env["KILOCODE_TOKEN"] = kilocode_token
        env["KILO_AUTH_CONTENT"] = json.dumps({"kilo": {"type": "api", "key": kilocode_token}})
    else:
        env["KILO_AUTH_CONTENT"] = "{}"
    if req.organization_id:
        env["KILO_ORG_ID"] = req.organization_id
        env["GASTOWN_ORGANIZATION_ID"] = req.organization_id
    return env
