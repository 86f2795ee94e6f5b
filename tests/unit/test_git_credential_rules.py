"""Which remote a rig credential is for, and what the helper prints (no network, no git)."""
from __future__ import annotations

import io

from plugin.credential import parse, run_credential_helper
from worker_api.scm.credentials import repo_key


def test_a_remote_matches_its_rig_url_with_or_without_dot_git_and_case_of_the_host():
    assert repo_key("http://127.0.0.1:8080/git/app.git") == repo_key("http://127.0.0.1:8080/git/app/")
    assert repo_key("https://GitHub.com/o/r") == repo_key("https://github.com/o/r.git")
    assert repo_key("https://github.com/o/r") != repo_key("https://github.com/o/other")
    assert repo_key("http://github.com/o/r") != repo_key("https://github.com/o/r")


def test_a_malformed_remote_url_matches_nothing_instead_of_a_500():
    """Found by schemathesis: an unbalanced '[' in the host made urlsplit raise inside the route."""
    for url in ("http://XB.-;0%Zr[`", "http://h:notaport/x", "ssh://git@h/x", "file:///x", ""):
        assert repo_key(url) is None


def test_the_helper_answers_only_get_and_only_with_an_identity():
    out, err = io.StringIO(), io.StringIO()
    assert run_credential_helper("store", io.StringIO("protocol=https\nhost=h\n\n"), out, err, {}) == 0
    assert run_credential_helper("get", io.StringIO("protocol=https\nhost=h\npath=o/r.git\n\n"), out, err, {}) == 0
    assert out.getvalue() == "" and "no agent identity" in err.getvalue()
    assert parse("protocol=https\nhost=h\n\nignored=1\n") == {"protocol": "https", "host": "h"}
