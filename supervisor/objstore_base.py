"""The object-store interface and its typed errors (backends: ``objstore_file``, ``objstore``).

Synchronous on purpose: callers run it in a thread (``asyncio.to_thread``). Both backends raise the same
typed errors, and both *probe* whether conditional writes (If-None-Match / If-Match) really work before
anyone relies on them for fencing: some S3-compatible servers (rclone) accept the headers and silently
overwrite, which would turn fencing into a no-op without anyone noticing.
"""
from __future__ import annotations

import contextlib
import secrets
import threading
from typing import Any

from gastown.core.jsonlog import get_logger

log = get_logger("supervisor.objstore")

CHUNK = 1024 * 1024
PROBE_PREFIX = "_probe/conditional-write-"
RESERVED = ".objstore"  # the file backend's own directory under its root: never an object key


class ObjectStoreError(Exception):
    """Any store failure that is neither NotFound, PreconditionFailed nor StoreUnavailable."""


class NotFound(ObjectStoreError):
    pass


class PreconditionFailed(ObjectStoreError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


class TooLarge(ObjectStoreError):
    """The object is bigger than the caller allows (a manifest's size): nothing was downloaded."""


class StoreUnavailable(ObjectStoreError):
    """Transient: connection refused/reset, timeout, 5xx. Worth retrying."""


def copy_capped(src: Any, dst: Any, key: str, max_bytes: int | None) -> None:
    """Copy ``src`` to ``dst`` in chunks; TooLarge as soon as it holds more than ``max_bytes``
    (nothing past the cap is written)."""
    copied = 0
    while chunk := src.read(CHUNK):
        copied += len(chunk)
        if max_bytes is not None and copied > max_bytes:
            raise TooLarge(f"{key}: more than {max_bytes} bytes")
        dst.write(chunk)


def check_key(key: str, *, allow_prefix: bool = False) -> str:
    """Reject keys that could escape the prefix or that S3-compatible servers treat differently."""
    if not isinstance(key, str):
        raise ValueError("key must be a string")
    body = key[:-1] if allow_prefix and key.endswith("/") else key
    if allow_prefix and body == "":
        return key
    if not body or body.startswith("/") or body.endswith("/") or "\\" in body:
        raise ValueError(f"invalid object key {key!r}")
    for seg in body.split("/"):
        if seg in ("", ".", "..") or any(ord(c) < 32 for c in seg):
            raise ValueError(f"invalid object key {key!r}")
    if body.split("/")[0] == RESERVED:
        raise ValueError(f"reserved object key {key!r}")
    return key


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def same_etag(a: str | None, b: str | None) -> bool:
    """ETags compare without their quotes (servers differ in whether they quote)."""
    if a is None or b is None:
        return a is b
    return a.strip('"') == b.strip('"')


class ObjectStore:
    """The interface. Keys are relative to the URL's prefix; ``prefix`` is kept for logs and layout."""

    backend = "abstract"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix.strip("/")
        self._probe_lock = threading.Lock()
        self._conditional: bool | None = None
        self.endpoint: str | None = None

    # -- backend primitives -------------------------------------------------------------------
    def put_file(self, key: str, path: str, *, if_none_match: bool = False,
                 if_match: str | None = None) -> str:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        raise NotImplementedError

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        raise NotImplementedError

    def download_file(self, key: str, path: str, max_bytes: int | None = None) -> None:
        """Download ``key`` to ``path``; TooLarge (nothing written past the cap) when it holds more
        than ``max_bytes``."""
        raise NotImplementedError

    def head(self, key: str) -> str | None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def list_keys(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    # -- feature probe ------------------------------------------------------------------------
    @property
    def supports_conditional_writes(self) -> bool:
        """Probed once (two If-None-Match:* PUTs, the second must fail with 412), then cached.

        A StoreUnavailable during the probe propagates and nothing is cached, so the next use probes again.
        """
        with self._probe_lock:
            if self._conditional is None:
                self._conditional = self._probe()
                log.info("objstore.conditional_writes", backend=self.backend, url=self.url,
                         endpoint=self.endpoint, supported=self._conditional)
            return self._conditional

    def _probe(self) -> bool:
        key = PROBE_PREFIX + secrets.token_hex(8)
        try:
            self.put_bytes(key, b"1", if_none_match=True)
            try:
                self.put_bytes(key, b"2", if_none_match=True)
            except PreconditionFailed:
                return True
            return False
        finally:
            with contextlib.suppress(ObjectStoreError):
                self.delete(key)
