"""Town settings and per-rig overrides (issue 12, item 6): one definition of each setting, of how a
rig's override meets the town's value, and of what a start request takes from them.

Where they live: ``default_model`` and ``small_model`` are columns of ``towns`` (the prewarm and the
dispatch read them); the rest is the town's ``settings`` JSON; a rig's overrides are keys of its
``config``. ``PATCH`` is a merge: an absent field is unchanged, ``null`` resets it (to the default,
or for a rig to the town's value); ``env_vars`` merges key by key and a ``null`` value removes a key.
Reserved keys (``gastown.contract.env``) are refused with a 400 naming the key.

When they apply: models and env vars at an agent's next start (the running mayor gets a model
change at once, through the container's ``PATCH /agents/{id}/model``); ``code_review`` and
``merge_strategy`` when an MR is created or approved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

from pydantic import BeforeValidator, Field, field_validator

from gastown.contract.env import is_env_key, is_reserved_env_key
from gastown.contract.git import GitAuthorEmail, GitAuthorName
from gastown.core.http import ApiError
from worker_api.db import Conn, from_json, to_json
from worker_api.models import Body

MAX_ENV_VARS = 100
MERGE_STRATEGIES = ("direct", "pr")
ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s]+$")]
EnvValue = Annotated[str, Field(max_length=65_536)]


def _on_off(v: Any) -> Any:
    """``code_review`` reads as a switch: true/false or "on"/"off"."""
    return {"on": True, "off": False}.get(v, v) if isinstance(v, str) else v


Switch = Annotated[bool, BeforeValidator(_on_off)]
TOWN_KEYS = ("env_vars", "git_author_name", "git_author_email", "disable_ai_coauthor", "code_review", "merge_strategy")
RIG_KEYS = ("default_model", "small_model", *TOWN_KEYS)


class SettingsPatch(Body):
    """A town's settings (``PATCH /api/towns/{t}/settings``); absent unchanged, null reset."""

    default_model: Optional[ModelName] = None
    small_model: Optional[ModelName] = None
    env_vars: Optional[dict[str, Optional[EnvValue]]] = None
    git_author_name: Optional[GitAuthorName] = None
    git_author_email: Optional[GitAuthorEmail] = None
    disable_ai_coauthor: Optional[bool] = None
    code_review: Optional[Switch] = None
    merge_strategy: Optional[Literal["direct", "pr"]] = None

    @field_validator("env_vars")
    @classmethod
    def _env_keys(cls, v: Optional[dict[str, Optional[str]]]) -> Optional[dict[str, Optional[str]]]:
        for key in v or {}:
            if not is_env_key(key):
                raise ValueError(f"{key[:130]!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        return v


class RigPatch(SettingsPatch):
    """A rig's overrides of the town's settings (``PATCH /api/towns/{t}/rigs/{r}``)."""

    name: Optional[Annotated[str, Field(min_length=1, max_length=200)]] = None


def check_reserved(env_vars: dict[str, Any] | None) -> None:
    for key in env_vars or {}:
        if is_reserved_env_key(key):
            raise ApiError(400, "RESERVED_ENV_KEY", f"env_vars.{key} is reserved by the runtime and cannot be set")


def _merge(current: dict[str, Any], patch: SettingsPatch, keys: tuple[str, ...]) -> dict[str, Any]:
    out = dict(current)
    for key in keys:
        if key not in patch.model_fields_set:
            continue
        value = getattr(patch, key)
        if key == "env_vars" and value is not None:
            env = {**out.get("env_vars", {}), **value}
            env = {k: v for k, v in env.items() if v is not None}
            if len(env) > MAX_ENV_VARS:
                raise ApiError(400, "INVALID_REQUEST", f"at most {MAX_ENV_VARS} env_vars")
            out["env_vars"] = env
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def town_settings(town: dict[str, Any]) -> dict[str, Any]:
    """The town's settings as ``GET …/settings`` shows them (defaults filled in)."""
    s = from_json(town.get("settings"), {}) or {}
    return {"default_model": town.get("default_model"), "small_model": town.get("small_model"),
            "env_vars": dict(s.get("env_vars") or {}), "git_author_name": s.get("git_author_name"),
            "git_author_email": s.get("git_author_email"), "disable_ai_coauthor": bool(s.get("disable_ai_coauthor")),
            "code_review": s.get("code_review", True) is not False, "merge_strategy": s.get("merge_strategy", "direct")}


def rig_overrides(rig: dict[str, Any] | None) -> dict[str, Any]:
    config = (rig or {}).get("config") or {}
    return {k: config[k] for k in RIG_KEYS if k in config}


def load_town(conn: Conn, town_id: str) -> dict[str, Any]:
    """The town's settings row (models and the settings JSON); an unknown town is a 404."""
    row = conn.execute("SELECT town_id, default_model, small_model, settings FROM towns WHERE town_id = ?",
                       (town_id,)).fetchone()
    if row is None:
        raise ApiError(404, "TOWN_NOT_FOUND", f"town {town_id} not found")
    return dict(row)


def patch_town_tx(conn: Conn, town_id: str, patch: SettingsPatch) -> dict[str, Any]:
    check_reserved(patch.env_vars)
    row = load_town(conn, town_id)
    settings = _merge(from_json(row["settings"], {}) or {}, patch, TOWN_KEYS)
    cols = {k: getattr(patch, k) for k in ("default_model", "small_model") if k in patch.model_fields_set}
    cols["settings"] = to_json(settings)
    conn.execute(f"UPDATE towns SET {', '.join(f'{k} = ?' for k in cols)} WHERE town_id = ?", (*cols.values(), town_id))
    return town_settings({**row, **cols})


def patch_rig_config(config: dict[str, Any], patch: RigPatch) -> dict[str, Any]:
    check_reserved(patch.env_vars)
    return _merge(config, patch, RIG_KEYS)


@dataclass(frozen=True)
class Effective:
    """What an agent of a rig (or the mayor, with no rig) runs with: the rig's override, else the town's."""

    model: str | None
    small_model: str | None
    env_vars: dict[str, str] = field(default_factory=dict)
    git_author_name: str | None = None
    git_author_email: str | None = None
    disable_ai_coauthor: bool = False
    code_review: bool = True
    merge_strategy: str = "direct"

    def start_fields(self) -> dict[str, Any]:
        """The start request's share of the settings (the model is set by the caller's default)."""
        out: dict[str, Any] = {"env_vars": dict(self.env_vars), "disable_ai_coauthor": self.disable_ai_coauthor}
        for key in ("small_model", "git_author_name", "git_author_email"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


def effective_tx(conn: Conn, town_id: str, rig: dict[str, Any] | None = None) -> Effective:
    return effective(load_town(conn, town_id), rig)


def effective(town: dict[str, Any], rig: dict[str, Any] | None = None) -> Effective:
    t, r = town_settings(town), rig_overrides(rig)
    pick = {k: r.get(k, t[k]) for k in ("git_author_name", "git_author_email", "disable_ai_coauthor",
                                        "code_review", "merge_strategy")}
    strategy = pick["merge_strategy"] if pick["merge_strategy"] in MERGE_STRATEGIES else "direct"
    return Effective(model=r.get("default_model") or t["default_model"],
                     small_model=r.get("small_model") or t["small_model"],
                     env_vars={**t["env_vars"], **(r.get("env_vars") or {})},
                     git_author_name=pick["git_author_name"], git_author_email=pick["git_author_email"],
                     disable_ai_coauthor=bool(pick["disable_ai_coauthor"]), code_review=pick["code_review"] is not False,
                     merge_strategy=strategy)
