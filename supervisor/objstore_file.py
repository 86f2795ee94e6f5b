"""The ``file:///dir`` object store: plain files, durable renames, flock-based conditional writes."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from typing import Iterator

from supervisor.objstore_base import (
    CHUNK,
    RESERVED,
    NotFound,
    ObjectStore,
    PreconditionFailed,
    check_key,
    copy_capped,
    same_etag,
)


# ------------------------------------------------------------------------------------------------
# file:// backend
# ------------------------------------------------------------------------------------------------
def fsync_dir(path: str) -> None:
    """A rename is only durable once its directory entry is flushed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(ObjectStore):
    """Objects are plain files under the root. Writes are temp+fsync+rename+fsync(dir); conditional
    writes hold a per-key flock (real across threads and processes on one host), If-None-Match also
    publishes with os.link so it can never replace an existing object."""

    backend = "file"
    RESERVED = RESERVED

    def __init__(self, url: str, root: str) -> None:
        super().__init__(url, "")
        self.root = os.path.abspath(root)
        self._tmp = os.path.join(self.root, self.RESERVED, "tmp")
        self._locks = os.path.join(self.root, self.RESERVED, "locks")
        os.makedirs(self._tmp, exist_ok=True)
        os.makedirs(self._locks, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"
        fd = os.open(os.path.join(self._locks, name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    @staticmethod
    def _etag_of(path: str) -> str:
        h = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return f'"{h.hexdigest()}"'

    def _write(self, key: str, chunks: Iterator[bytes], if_none_match: bool,
               if_match: str | None) -> str:
        final = self._path(key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(self._tmp, secrets.token_hex(12))
        h = hashlib.md5(usedforsecurity=False)
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            etag = f'"{h.hexdigest()}"'
            with self._key_lock(key):
                if if_none_match:
                    try:
                        os.link(tmp, final)
                    except FileExistsError:
                        raise PreconditionFailed(f"{key} exists") from None
                else:
                    if if_match is not None:
                        current = self._etag_of(final) if os.path.exists(final) else None
                        if not same_etag(current, if_match):
                            raise PreconditionFailed(f"{key} changed")
                    os.replace(tmp, final)
                fsync_dir(os.path.dirname(final))
            return etag
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_file(self, key, path, *, if_none_match=False, if_match=None):
        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        return self._write(key, chunks(), if_none_match, if_match)

    def put_bytes(self, key, data, *, if_none_match=False, if_match=None):
        return self._write(key, iter([bytes(data)]), if_none_match, if_match)

    def get_bytes(self, key):
        try:
            with open(self._path(key), "rb") as f:
                data = f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(key) from None
        return data, f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'

    def download_file(self, key, path, max_bytes=None):
        src = self._path(key)
        try:
            with open(src, "rb") as fin, open(path, "wb") as fout:
                copy_capped(fin, fout, key, max_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(key) from None

    def head(self, key):
        path = self._path(key)
        return self._etag_of(path) if os.path.isfile(path) else None

    def delete(self, key):
        with self._key_lock(key), contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def list_keys(self, prefix=""):
        check_key(prefix, allow_prefix=True)
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d != self.RESERVED]
                rel = ""
            for name in filenames:
                key = f"{rel.replace(os.sep, '/')}/{name}" if rel else name
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)
