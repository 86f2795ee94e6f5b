"""``GASTOWN_SNAPSHOT_URL=worker:`` — snapshots through the worker's presigned requests.

The container then holds no object-store credential at all: for every operation it asks the worker
(``POST …/agents/{a}/snapshot-access``, ``worker_api/snapshot_access.py``) for one presigned request
on one of that agent's keys, valid for minutes, and makes it with plain HTTP. Keys outside
``towns/<town>/agents/<agent>/`` cannot even be named. Conditional writes are part of the
signature, so the manifest's fencing works as with direct access; whether the store honours them
is the worker's probe (``GET …/snapshot-store``).
"""
from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.request
from typing import Any
from xml.etree import ElementTree

from supervisor.objstore_base import (
    NotFound,
    ObjectStore,
    ObjectStoreError,
    PreconditionFailed,
    StoreUnavailable,
    TooLarge,
    check_key,
    copy_capped,
)
from supervisor.worker_bridge import WorkerBridge
from supervisor.worker_client import WorkerError

HTTP_TIMEOUT_S = 60.0
_AGENT_KEY = re.compile(r"^towns/(?P<town>[^/]+)/agents/(?P<agent>[^/]+)/(?P<rel>.*)$")
_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class BrokeredStore(ObjectStore):
    backend = "worker"

    def __init__(self, bridge: WorkerBridge) -> None:
        super().__init__("worker:", "")
        self.bridge = bridge

    # -- the worker's side ------------------------------------------------------------------------
    def _access(self, key: str, op: str, *, allow_prefix: bool = False, **extra: Any) -> dict[str, Any]:
        check_key(key, allow_prefix=allow_prefix)
        m = _AGENT_KEY.match(key)
        if m is None:
            raise ValueError(f"not an agent's snapshot key: {key!r}")
        try:
            data = self.bridge.call("POST", f"/agents/{m['agent']}/snapshot-access", {"op": op, "key": m["rel"], **extra})
        except WorkerError as e:
            if e.status is not None and 400 <= e.status < 500:
                raise ObjectStoreError(f"{key}: the worker refused {op} ({e.status})") from None
            raise StoreUnavailable(f"{key}: no presigned {op}: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise StoreUnavailable(f"{key}: the worker gave no presigned {op}")
        return data

    def _probe(self) -> bool:
        try:
            data = self.bridge.call("GET", "/snapshot-store")
        except WorkerError as e:
            raise StoreUnavailable(f"snapshot store info: {e}") from None
        return bool(isinstance(data, dict) and data.get("conditional_writes"))

    # -- the store's side -------------------------------------------------------------------------
    def _open(self, access: dict[str, Any], key: str, body: Any = None, length: int | None = None) -> Any:
        headers = dict(access.get("headers") or {})
        if length is not None:
            headers["Content-Length"] = str(length)
        req = urllib.request.Request(access["url"], data=body, method=access["method"], headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S)  # noqa: S310 - an https/http URL the worker signed
        except urllib.error.HTTPError as e:
            status = e.code
            e.close()
            if status == 404:
                raise NotFound(key) from None
            if status == 412:
                raise PreconditionFailed(f"{key}: 412") from None
            if status >= 500 or status == 429:
                raise StoreUnavailable(f"{key}: HTTP {status}") from None
            raise ObjectStoreError(f"{key}: HTTP {status}") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as e:
            raise StoreUnavailable(f"{key}: {type(e).__name__}") from None

    def _put(self, key: str, body: Any, length: int, if_none_match: bool, if_match: str | None) -> str:
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match are exclusive")
        access = self._access(key, "put", if_none_match=if_none_match, if_match=if_match)
        with self._open(access, key, body, length) as resp:
            return str(resp.headers.get("ETag") or "")

    def put_bytes(self, key, data, *, if_none_match=False, if_match=None):
        return self._put(key, bytes(data), len(data), if_none_match, if_match)

    def put_file(self, key, path, *, if_none_match=False, if_match=None):
        with open(path, "rb") as f:
            return self._put(key, f, os.fstat(f.fileno()).st_size, if_none_match, if_match)

    def get_bytes(self, key):
        with self._open(self._access(key, "get"), key) as resp:
            return resp.read(), str(resp.headers.get("ETag") or "")

    def download_file(self, key, path, max_bytes=None):
        with self._open(self._access(key, "get"), key) as resp:
            length = resp.headers.get("Content-Length")
            if max_bytes is not None and length is not None and int(length) > max_bytes:
                raise TooLarge(f"{key}: {length} bytes, at most {max_bytes} expected")
            with open(path, "wb") as out:
                copy_capped(resp, out, key, max_bytes)

    def head(self, key):
        try:
            with self._open(self._access(key, "head"), key) as resp:
                return str(resp.headers.get("ETag") or "") or None
        except NotFound:
            return None

    def delete(self, key):
        try:
            with self._open(self._access(key, "delete"), key):
                pass
        except NotFound:
            pass

    def list_keys(self, prefix=""):
        m = _AGENT_KEY.match(prefix)
        if m is None:
            raise ValueError(f"a brokered listing covers one agent's keys, not {prefix!r}")
        out: list[str] = []
        token: str | None = None
        while True:
            extra = {"continuation": token} if token else {}
            with self._open(self._access(prefix, "list", allow_prefix=True, **extra), prefix) as resp:
                root = ElementTree.fromstring(resp.read())
            for node in root.iter(f"{_S3}Key"):
                full = node.text or ""
                at = full.find(prefix)
                if at >= 0:
                    out.append(full[at:])
            truncated = (root.findtext(f"{_S3}IsTruncated") or "").lower() == "true"
            token = root.findtext(f"{_S3}NextContinuationToken")
            if not truncated or not token:
                return sorted(out)
