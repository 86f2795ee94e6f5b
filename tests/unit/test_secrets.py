"""One secret policy for every side: what the container reports, the worker stores and logs print."""
from __future__ import annotations

import json
import logging

import pytest

from gastown.core import jsonlog
from gastown.core.secrets import is_secret_key, scrub_value, strip_secrets
from supervisor.models import StartAgentRequest, public_request

BASE = {"agent_id": "pc-1", "town_id": "t-1", "rig_id": "rig-1", "role": "polecat", "name": "Toast",
        "prompt": "do it", "model": "kilo/x"}


def test_keys_the_container_used_to_keep_and_the_worker_refused_are_secrets():
    for key in ("GH_PAT", "SESSION_COOKIE", "BASIC_AUTH", "NPM_AUTH", "GIT_TOKEN", "AWS_SECRET_ACCESS_KEY", "KILO_AUTH_CONTENT"):
        assert is_secret_key(key), key
    for key in ("GIT_AUTHOR_NAME", "LOG_LEVEL", "PATH", "path", "HOME", "author"):
        assert not is_secret_key(key), key


def test_secrets_inside_values_are_cut_out_and_the_rest_kept():
    assert scrub_value("https://x-access-token:ghs_abc@github.com/a/b.git") == "https://github.com/a/b.git"
    assert scrub_value("use ghp_abcdefghijklmnopqrstuvwxyz0123 now") == "use [redacted] now"
    assert scrub_value("https://github.com/a/b.git") == "https://github.com/a/b.git"
    assert scrub_value("ssh://git@github.com/o/r.git") == "ssh://git@github.com/o/r.git"  # a user, not a secret


def test_strip_reports_paths_never_values():
    clean, removed = strip_secrets({"env_vars": {"GH_PAT": "v1", "LOG_LEVEL": "debug"},
                                    "git_url": "https://u:pw@h/r.git", "nested": [{"api_key": "v2"}]})
    assert clean == {"env_vars": {"LOG_LEVEL": "debug"}, "git_url": "https://h/r.git", "nested": [{}]}
    assert removed == ["env_vars.GH_PAT", "git_url", "nested[0].api_key"]


def test_public_request_applies_the_same_policy_the_worker_enforces():
    req = StartAgentRequest(**BASE, git_url="https://github.com/a/b.git",
                            env_vars={"GH_PAT": "x", "SESSION_COOKIE": "c", "LOG_LEVEL": "debug", "GASTOWN_API_URL": "http://w"})
    out = public_request(req)
    assert out["env_vars"] == {"LOG_LEVEL": "debug"}
    assert out["git_url"] == "https://github.com/a/b.git"
    assert strip_secrets(out)[1] == []  # nothing left for the worker to drop


def test_a_credentialed_git_url_is_refused_on_both_sides():
    """A token in the URL ends up in .git/config, `git remote -v`, error messages and the registry."""
    import pydantic

    from worker_api.routes_user import CreateRig

    url = "https://x:ghs_abcdefghijklmnopqrstu@github.com/a/b.git"
    with pytest.raises(pydantic.ValidationError, match="must not embed credentials"):
        StartAgentRequest(**BASE, git_url=url)
    with pytest.raises(pydantic.ValidationError, match="must not embed credentials"):
        CreateRig(name="r", git_url=url)
    with pytest.raises(pydantic.ValidationError, match="must be an https:// or http:// URL"):
        StartAgentRequest(**BASE, git_url="ssh://git@github.com/a/b.git")  # the worker cannot fetch over ssh


def test_log_lines_redact_the_same_keys(capsys):
    jsonlog.configure("INFO")
    jsonlog.get_logger("t").info("x.y", GH_PAT="pat-value", SESSION_COOKIE="c-value", LOG_LEVEL="debug")
    logging.getLogger().handlers[-1].flush()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["GH_PAT"] == "[redacted]" and line["SESSION_COOKIE"] == "[redacted]" and line["LOG_LEVEL"] == "debug"


def test_log_lines_cut_secrets_out_of_values_too(capsys):
    """A token or URL password inside a value (a failed clone's error, a stderr tail) is cut out."""
    jsonlog.configure("INFO")
    jsonlog.get_logger("t").error("git.failed", error="fatal: https://u:hunter2pw@h/r.git ghp_abcdefghijklmnopqrstuvwxyz0")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "hunter2pw" not in line and "ghp_abcdefghij" not in line and "https://h/r.git" in line
