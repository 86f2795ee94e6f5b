"""Which ``git_url`` a rig or a start may name: the worker and the container fetch it on a tenant's
behalf (SSRF), so link-local is never allowed and this machine only in development."""
from __future__ import annotations

import pytest

from gastown.contract.git import ALLOW_LOCAL_ENV, check_git_url
from tests.test_worker_api_support import ADMIN_TOKEN, Worker, clock, town, worker  # noqa: F401

ALWAYS_OK = ["https://github.com/acme/app.git", "http://git.example.com:8080/a/b.git", "https://10.1.2.3/r.git"]
NEVER = ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/r.git", "https://[::ffff:169.254.169.254]/r",
         "ssh://git@github.com/a/b.git", "git@github.com:a/b.git", "ftp://x/y", "--upload-pack=touch /tmp/x",
         "https://user:pw@github.com/a/b.git", "https://tok@github.com/a/b.git", "https:///nohost", "http://h:99999/x"]
DEV_ONLY = ["file:///srv/repo.git", "/srv/repo.git", "http://127.0.0.1:3000/a/b.git", "http://localhost/a.git",
            "http://[::1]/a.git", "http://0.0.0.0/a.git"]


@pytest.mark.parametrize("url", ALWAYS_OK)
def test_remote_https_and_http_urls_are_accepted_everywhere(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_LOCAL_ENV, raising=False)
    assert check_git_url(url) == url


@pytest.mark.parametrize("url", NEVER)
@pytest.mark.parametrize("dev", [False, True])
def test_link_local_credentials_and_other_schemes_are_refused_even_in_development(
        url: str, dev: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1") if dev else monkeypatch.delenv(ALLOW_LOCAL_ENV, raising=False)
    with pytest.raises(ValueError):
        check_git_url(url)


@pytest.mark.parametrize("url", DEV_ONLY)
def test_paths_file_urls_and_this_machine_need_the_development_opt_in(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_LOCAL_ENV, raising=False)
    with pytest.raises(ValueError):
        check_git_url(url)
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")
    assert check_git_url(url) == url


async def test_a_rig_pointing_at_cloud_metadata_is_a_400(worker: Worker, town: tuple[str, str]) -> None:
    town_id, _ = town
    status, data = await worker.call("POST", f"/api/towns/{town_id}/rigs", token=ADMIN_TOKEN, json={"name": "meta", "git_url": "http://169.254.169.254/latest/meta-data"})
    assert status == 400 and data["error"]["code"] == "INVALID_REQUEST", data
    assert "link-local" in data["error"]["message"]
