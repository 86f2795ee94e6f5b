"""Git names both sides accept: they end up in ``git`` argv, so an option-like or odd one is refused."""
from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

_URL_PREFIXES = ("https://", "http://", "ssh://", "git@", "file://")
_REF_FORBIDDEN = " ~^:?*[\\"


def check_git_url(v: str) -> str:
    if v.startswith("-") or not (v.startswith(_URL_PREFIXES) or v.startswith("/")):
        raise ValueError("git_url must be an https/ssh/file URL or an absolute path")
    if "://" in v and urlsplit(v).password is not None:
        raise ValueError("git_url must not embed credentials: git gets the rig's credential from the "
                         "credential helper (PUT /api/towns/{t}/rigs/{r}/scm)")
    return v


def check_git_ref(v: str) -> str:
    if v.startswith("-") or ".." in v or any(c in v for c in _REF_FORBIDDEN):
        raise ValueError("not a valid git ref name")
    return v


# The same rules as pydantic types; the ``pattern`` only documents (the check function decides).
GitUrl = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra={"pattern": "^(https?://|ssh://|git@|file://|/)"}),
                   AfterValidator(check_git_url)]
GitRef = Annotated[str, Field(min_length=1, max_length=200, json_schema_extra={"pattern": r"^[^-\s~^:?*\[\\][^\s~^:?*\[\\]*$"}),
                   AfterValidator(check_git_ref)]


# A commit identity: git strips or refuses angle brackets and line breaks in names and emails.
GitAuthorName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^<>\x00-\x1f\x7f]+$")]
GitAuthorEmail = Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[^<>\s@]+@[^<>\s@]+$")]
