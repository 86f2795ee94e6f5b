"""The GitHub adapter against the fake GitHub (real HTTP on 127.0.0.1), and the pure gating rules."""
from __future__ import annotations

import pytest

from tests.test_scm_support import DEFAULT_TOKEN, FakeGitHub, gh, provider, short_timeout  # noqa: F401
from worker_api.scm import gating
from worker_api.scm.base import PrStatus, ScmError
from worker_api.scm.github import PR_QUERY, GitHubProvider, parse_pr_url

HOSTS = frozenset({"github.com"})


# ---------------------------------------------------------------- request shapes


async def test_status_query_sends_owner_name_number_variables_and_bearer_token(gh: FakeGitHub,
                                                                              provider: GitHubProvider) -> None:
    pr = gh.add_pr("acme", "widgets", 7, review_decision="APPROVED", checks="success")
    status = await provider.pr_status(pr.url, DEFAULT_TOKEN)
    [call] = gh.graphql_calls
    assert call["method"] == "POST" and call["path"] == "/graphql"
    assert call["body"]["variables"] == {"owner": "acme", "name": "widgets", "number": 7}
    assert call["body"]["query"] == PR_QUERY
    for field in ("reviewDecision", "mergeStateStatus", "isDraft", "mergeable", "statusCheckRollup", "reviewThreads"):
        assert field in call["body"]["query"]
    assert call["headers"]["Authorization"] == f"Bearer {DEFAULT_TOKEN}"
    assert call["headers"]["Accept"] == "application/vnd.github+json"
    assert status == PrStatus("open", False, "APPROVED", "CLEAN", "MERGEABLE", "success", "a" * 40, 0)


async def test_merge_puts_squash_with_the_checked_head_sha(gh: FakeGitHub, provider: GitHubProvider) -> None:
    pr = gh.add_pr(review_decision="APPROVED")
    result = await provider.merge(pr.url, DEFAULT_TOKEN, head_sha=pr.head_sha)
    [call] = gh.merge_calls
    assert call["method"] == "PUT" and call["path"] == "/repos/acme/widgets/pulls/7/merge"
    assert call["body"] == {"merge_method": "squash", "sha": pr.head_sha}
    assert call["headers"]["Authorization"] == f"Bearer {DEFAULT_TOKEN}"
    assert result.merged and result.method == "squash" and result.sha and result.tried == ("squash",)


async def test_squash_405_falls_back_to_merge(gh: FakeGitHub, provider: GitHubProvider) -> None:
    pr = gh.add_pr(review_decision="APPROVED", disallowed_methods={"squash"})
    result = await provider.merge(pr.url, DEFAULT_TOKEN)
    assert [c["body"]["merge_method"] for c in gh.merge_calls] == ["squash", "merge"]
    assert result.merged and result.method == "merge" and pr.merged_with == "merge"


async def test_squash_and_merge_405_fall_back_to_rebase(gh: FakeGitHub, provider: GitHubProvider) -> None:
    pr = gh.add_pr(review_decision="APPROVED", disallowed_methods={"squash", "merge"})
    result = await provider.merge(pr.url, DEFAULT_TOKEN)
    assert [c["body"]["merge_method"] for c in gh.merge_calls] == ["squash", "merge", "rebase"]
    assert result.merged and result.method == "rebase"


async def test_every_method_405_reports_not_merged_with_githubs_reason(gh: FakeGitHub,
                                                                       provider: GitHubProvider) -> None:
    pr = gh.add_pr(review_decision="REVIEW_REQUIRED")  # protected branch: GitHub refuses every method
    result = await provider.merge(pr.url, DEFAULT_TOKEN)
    assert not result.merged and result.tried == ("squash", "merge", "rebase")
    assert "not mergeable" in result.detail and pr.state == "OPEN"


async def test_moved_head_409_is_not_merged_and_not_retried_with_other_methods(gh: FakeGitHub,
                                                                               provider: GitHubProvider) -> None:
    pr = gh.add_pr(review_decision="APPROVED")
    result = await provider.merge(pr.url, DEFAULT_TOKEN, head_sha="b" * 40)
    assert not result.merged and len(gh.merge_calls) == 1 and "modified" in result.detail


# ---------------------------------------------------------------- errors


async def test_unknown_pr_is_a_not_found_error(gh: FakeGitHub, provider: GitHubProvider) -> None:
    gh.add_pr(number=7)
    with pytest.raises(ScmError) as e:
        await provider.pr_status("https://github.com/acme/widgets/pull/999", DEFAULT_TOKEN)
    assert e.value.kind == "not_found" and e.value.permanent and "acme/widgets#999" in e.value.detail
    with pytest.raises(ScmError) as e:
        await provider.pr_status("https://github.com/nobody/nothing/pull/1", DEFAULT_TOKEN)
    assert e.value.kind == "not_found"


async def test_unknown_pr_merge_404_is_not_found(gh: FakeGitHub, provider: GitHubProvider) -> None:
    with pytest.raises(ScmError) as e:
        await provider.merge("https://github.com/acme/widgets/pull/999", DEFAULT_TOKEN)
    assert e.value.kind == "not_found" and e.value.status == 404


async def test_timeout_is_transient_not_permanent(gh: FakeGitHub, provider: GitHubProvider) -> None:
    pr = gh.add_pr()
    short_timeout(provider, gh)
    with pytest.raises(ScmError) as e:
        await provider.pr_status(pr.url, DEFAULT_TOKEN)
    assert e.value.kind == "transient" and not e.value.permanent and e.value.limit() == 10


async def test_connection_refused_is_transient() -> None:
    p = GitHubProvider("http://127.0.0.1:9", timeout_s=0.5)
    try:
        with pytest.raises(ScmError) as e:
            await p.pr_status("https://github.com/acme/widgets/pull/1", DEFAULT_TOKEN)
        assert e.value.kind == "transient"
    finally:
        await p.aclose()


async def test_server_errors_are_transient_and_bad_credentials_are_auth(gh: FakeGitHub,
                                                                         provider: GitHubProvider) -> None:
    pr = gh.add_pr()
    gh.fail_status = 502
    with pytest.raises(ScmError) as e:
        await provider.pr_status(pr.url, DEFAULT_TOKEN)
    assert e.value.kind == "transient" and e.value.status == 502
    gh.fail_status = None
    with pytest.raises(ScmError) as e:
        await provider.pr_status(pr.url, "ghp_wrong_token_000000")
    assert e.value.kind == "auth" and e.value.status == 401 and "ghp_wrong" not in str(e.value)


async def test_missing_token_fails_without_a_request(gh: FakeGitHub, provider: GitHubProvider) -> None:
    pr = gh.add_pr()
    with pytest.raises(ScmError) as e:
        await provider.pr_status(pr.url, "")
    assert e.value.kind == "no_token" and gh.requests == []


@pytest.mark.parametrize("url, kind", [
    ("https://github.com/acme/widgets/issues/7", "unrecognized_url"),
    ("not a url", "unrecognized_url"),
    ("https://gitlab.com/acme/widgets/pull/7", "host_mismatch"),
])
def test_pr_url_that_is_not_a_github_pr_is_refused(url: str, kind: str) -> None:
    with pytest.raises(ScmError) as e:
        parse_pr_url(url, HOSTS)
    assert e.value.kind == kind and e.value.permanent


def test_pr_url_parsing_accepts_subpages() -> None:
    assert parse_pr_url("https://github.com/a-b/c.d/pull/12/files", HOSTS) == ("a-b", "c.d", 12)


def test_api_url_is_configurable_from_the_environment_and_enterprise_graphql_path(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("GASTOWN_GITHUB_API_URL", "https://ghe.example.com/api/v3")
    p = GitHubProvider.from_env()
    assert p.api_url == "https://ghe.example.com/api/v3" and p.graphql_url == "https://ghe.example.com/api/graphql"
    assert "ghe.example.com" in p.web_hosts
    monkeypatch.delenv("GASTOWN_GITHUB_API_URL")
    p = GitHubProvider.from_env()
    assert p.graphql_url == "https://api.github.com/graphql" and "github.com" in p.web_hosts


# ---------------------------------------------------------------- check rollup parsing


@pytest.mark.parametrize("checks", ["success", "pending", "failure", "none"])
async def test_check_rollup_reduces_to_one_state(gh: FakeGitHub, provider: GitHubProvider, checks: str) -> None:
    pr = gh.add_pr(checks=checks)
    status = await provider.pr_status(pr.url, DEFAULT_TOKEN)
    assert status.checks == checks
    assert status.failing_checks == (("ci/test",) if checks == "failure" else ())


async def test_unresolved_review_threads_are_counted(gh: FakeGitHub, provider: GitHubProvider) -> None:
    pr = gh.add_pr(unresolved_threads=2)
    assert (await provider.pr_status(pr.url, DEFAULT_TOKEN)).unresolved_threads == 2


# ---------------------------------------------------------------- gating (pure)


def status(**kw: object) -> PrStatus:
    base = dict(state="open", review_decision="APPROVED", merge_state_status="CLEAN", mergeable="MERGEABLE",
                checks="success")
    base.update(kw)
    return PrStatus(**base)  # type: ignore[arg-type]


def test_review_required_is_awaiting_approval_and_blocks_merge() -> None:
    s = status(review_decision="REVIEW_REQUIRED", merge_state_status="BLOCKED")
    assert gating.awaiting_approval(s) and "awaiting_approval" in gating.merge_blockers(s)


def test_blocked_with_green_checks_and_no_decision_is_awaiting_approval() -> None:
    assert gating.awaiting_approval(status(review_decision=None, merge_state_status="BLOCKED"))


def test_blocked_by_running_checks_is_not_awaiting_approval() -> None:
    s = status(review_decision=None, merge_state_status="BLOCKED", checks="pending")
    assert not gating.awaiting_approval(s) and gating.merge_blockers(s) == ["checks_pending"]


def test_changes_requested_is_not_awaiting_approval_but_blocks_merge() -> None:
    s = status(review_decision="CHANGES_REQUESTED", merge_state_status="BLOCKED")
    assert not gating.awaiting_approval(s) and gating.merge_blockers(s) == ["changes_requested"]


def test_draft_blocks_merge_and_is_not_awaiting_approval() -> None:
    s = status(is_draft=True, merge_state_status="DRAFT", review_decision="REVIEW_REQUIRED")
    assert not gating.awaiting_approval(s) and gating.merge_blockers(s) == ["draft"]


@pytest.mark.parametrize("kw, blocker", [
    ({"checks": "failure"}, "checks_failed"),
    ({"mergeable": "CONFLICTING", "merge_state_status": "DIRTY"}, "conflicts"),
    ({"unresolved_threads": 1}, "unresolved_threads"),
    ({"merge_state_status": "UNKNOWN", "mergeable": "UNKNOWN"}, "merge_state_unknown"),
    ({"merge_state_status": "BEHIND"}, "merge_state_behind"),
])
def test_anything_not_green_blocks_auto_merge(kw: dict, blocker: str) -> None:
    assert blocker in gating.merge_blockers(status(**kw))


def test_approved_green_clean_pr_has_no_blockers_and_no_checks_count_as_green() -> None:
    assert gating.merge_blockers(status()) == []
    assert gating.merge_blockers(status(checks="none")) == []
