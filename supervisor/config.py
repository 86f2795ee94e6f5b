"""Runtime configuration, read once from the environment (docs/contract.md §3).

The runtime never mutates ``os.environ``: children get an env built explicitly per agent, so
everything the runtime needs later is captured here at boot.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from supervisor.cpus import default_hydration_concurrency

REPO_ROOT = Path(__file__).resolve().parent.parent
_PINNED_KILO = REPO_ROOT / "node_modules" / "@kilocode" / "cli-linux-x64" / "bin" / "kilo"
_DOCKER_KILO = Path("/opt/kilo/node_modules/@kilocode/cli-linux-x64/bin/kilo")


class ConfigError(ValueError):
    pass


def default_kilo_bin() -> str:
    for candidate in (_PINNED_KILO, _DOCKER_KILO):
        if candidate.exists():
            return str(candidate)
    return str(_PINNED_KILO)


def default_plugin_command() -> list[str]:
    """``gastown plugin`` by absolute path, so kilo finds it without relying on PATH."""
    script = Path(sys.executable).parent / "gastown"
    if script.exists():
        return [str(script), "plugin"]
    found = shutil.which("gastown")
    if found:
        return [found, "plugin"]
    return [sys.executable, "-m", "gastown.cli", "plugin"]


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{key} must be >= 0")
    return value


def _uid_base(raw: str | None) -> int | None:
    if not raw:
        return None
    if not raw.strip().isdigit() or not 1000 <= int(raw) <= 2**31 - 10_000:
        raise ConfigError("GASTOWN_AGENT_UID_BASE must be a uid between 1000 and 2147473648")
    return int(raw)


@dataclass
class RuntimeConfig:
    data_dir: Path
    town_id: str | None = None
    api_url: str | None = None
    container_token: str | None = None
    control_token: str | None = None
    snapshot_url: str | None = None
    kilo_bin: str = field(default_factory=default_kilo_bin)
    kilo_providers: dict[str, Any] | None = None
    kilocode_token: str | None = None
    plugin_command: list[str] = field(default_factory=default_plugin_command)
    # git's credential helper for agents (``gastown git-credential``): the same executable as the plugin.
    credential_helper: list[str] = field(default_factory=lambda: [*default_plugin_command()[:-1], "git-credential"])
    idle_timeout_s: float = 120.0
    refinery_idle_timeout_s: float = 600.0
    drain_timeout_s: float = 300.0
    heartbeat_interval_s: float = 30.0
    memory_log_interval_s: float = 30.0
    kilo_start_timeout_s: float = 60.0
    kilo_request_timeout_s: float = 10.0
    hot_swap_timeout_s: float = 60.0  # a new kilo server boots as slowly as a first start on a busy box
    hydration_concurrency: int = field(default_factory=default_hydration_concurrency)
    health_interval_s: float = 10.0
    health_timeout_s: float = 2.0
    health_failures: int = 3
    crash_loop_max: int = 5
    crash_backoff_s: float = 1.0
    start_window_s: float = 10.0  # serving this long before a crash: restarted at once (supervisord's startsecs)
    min_free_memory_mb: float = 0.0
    store_env: dict[str, str] | None = None  # AWS_* for the snapshot store (None: the process env)
    agent_uids: str = "auto"  # supervisor.isolation: a uid per agent when root ("off": the runtime's)
    agent_uid_base: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RuntimeConfig":
        env = os.environ if env is None else env
        providers = None
        raw = env.get("GASTOWN_KILO_PROVIDERS")
        if raw:
            try:
                providers = json.loads(raw)
            except ValueError:
                raise ConfigError("GASTOWN_KILO_PROVIDERS is not valid JSON") from None
            if not isinstance(providers, dict) or not providers:
                raise ConfigError("GASTOWN_KILO_PROVIDERS must be a non-empty JSON object")
        data_dir = Path(env.get("GASTOWN_DATA_DIR") or (Path.cwd() / ".gastown" / "data"))
        return cls(
            data_dir=data_dir.resolve(),
            town_id=env.get("GASTOWN_TOWN_ID") or None,
            api_url=(env.get("GASTOWN_API_URL") or "").rstrip("/") or None,
            container_token=env.get("GASTOWN_CONTAINER_TOKEN") or None,
            control_token=env.get("GASTOWN_CONTROL_TOKEN") or None,
            snapshot_url=env.get("GASTOWN_SNAPSHOT_URL") or None,
            kilo_bin=env.get("KILO_BIN") or default_kilo_bin(),
            kilo_providers=providers,
            kilocode_token=env.get("KILOCODE_TOKEN") or None,
            idle_timeout_s=_float(env, "GASTOWN_IDLE_TIMEOUT_S", 120.0),
            refinery_idle_timeout_s=_float(env, "GASTOWN_REFINERY_IDLE_TIMEOUT_S", 600.0),
            drain_timeout_s=_float(env, "GASTOWN_DRAIN_TIMEOUT_S", 300.0),
            heartbeat_interval_s=_float(env, "GASTOWN_HEARTBEAT_INTERVAL_S", 30.0),
            memory_log_interval_s=_float(env, "GASTOWN_MEMORY_LOG_INTERVAL_S", 30.0),
            kilo_start_timeout_s=_float(env, "GASTOWN_KILO_START_TIMEOUT_S", 60.0),
            hot_swap_timeout_s=_float(env, "GASTOWN_HOT_SWAP_TIMEOUT_S", 60.0),
            hydration_concurrency=max(1, int(_float(env, "GASTOWN_HYDRATION_CONCURRENCY", default_hydration_concurrency()))),
            health_interval_s=_float(env, "GASTOWN_HEALTH_INTERVAL_S", 10.0),
            health_timeout_s=_float(env, "GASTOWN_HEALTH_TIMEOUT_S", 2.0),
            health_failures=max(1, int(_float(env, "GASTOWN_HEALTH_FAILURES", 3))),
            crash_loop_max=max(1, int(_float(env, "GASTOWN_CRASH_LOOP_MAX", 5))),
            crash_backoff_s=_float(env, "GASTOWN_CRASH_BACKOFF_S", 1.0),
            start_window_s=_float(env, "GASTOWN_START_WINDOW_S", 10.0),
            min_free_memory_mb=_float(env, "GASTOWN_MIN_FREE_MEMORY_MB", 0.0),
            store_env={k: v for k, v in env.items() if k.startswith("AWS_")},
            agent_uids=(env.get("GASTOWN_AGENT_UIDS") or "auto").strip().lower(),
            agent_uid_base=_uid_base(env.get("GASTOWN_AGENT_UID_BASE")),
        )
