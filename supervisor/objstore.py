"""Object store for kilo.db snapshots: S3 (``s3://bucket/prefix``) or a local directory (``file:///dir``).

Synchronous on purpose: callers run it in a thread (``asyncio.to_thread``). Both backends raise the same
typed errors (``objstore_base``), and both *probe* whether conditional writes (If-None-Match / If-Match)
really work before anyone relies on them for fencing: some S3-compatible servers (rclone) accept the
headers and silently overwrite, which would turn fencing into a no-op without anyone noticing.
"""
from __future__ import annotations

import contextlib
import os
import urllib.parse
from typing import Any, Iterator, Mapping

from gastown.core.jsonlog import get_logger
from supervisor.objstore_base import (
    CHUNK,
    NotFound,
    ObjectStore,
    ObjectStoreError,
    PreconditionFailed,
    StoreUnavailable,
    TooLarge,
    check_key,
    quote_etag,
    same_etag,
)
from supervisor.objstore_file import FileStore, fsync_dir

__all__ = ["NotFound", "ObjectStore", "ObjectStoreError", "PreconditionFailed", "StoreUnavailable", "TooLarge", "check_key",
           "same_etag", "fsync_dir", "open_store"]

log = get_logger("supervisor.objstore")


# ------------------------------------------------------------------------------------------------
# s3:// backend
# ------------------------------------------------------------------------------------------------
class _S3Store(ObjectStore):
    """boto3 with the settings S3-compatible servers need (path style, s3v4, checksums only when
    required), timeouts and bounded retries on every call, multipart for large files."""

    backend = "s3"

    def __init__(self, url: str, bucket: str, prefix: str, env: Mapping[str, str], *,
                 connect_timeout: float, read_timeout: float, max_attempts: int,
                 multipart_threshold: int) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        super().__init__(url, prefix)
        self.bucket = bucket
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        self.endpoint = endpoint
        session = boto3.session.Session()
        self._client = session.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                max_pool_connections=16,
            ),
        )
        # Below 128 MiB one streamed PUT beats multipart on S3-compatible servers (SeaweedFS: 0.8 s vs
        # 1.2 s for 64 MB) and yields a plain MD5 ETag; above it, parallel parts and part retries win.
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                        multipart_chunksize=min(16 * CHUNK, multipart_threshold),
                                        max_concurrency=4, use_threads=True)

    def _k(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Map botocore/s3transfer failures onto the typed errors (messages carry no credentials)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ObjectStoreError:
            raise
        except S3UploadFailedError as e:
            cause = e.__cause__
            if isinstance(cause, (ClientError, BotoCoreError)):
                with self._errors(key):
                    raise cause from e
            raise ObjectStoreError(f"{key}: {e}") from e
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket"):
                raise NotFound(key) from None
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                raise PreconditionFailed(f"{key}: {code or status}") from None
            if status >= 500 or status == 429 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                raise StoreUnavailable(f"{key}: {code} ({status})") from e
            raise ObjectStoreError(f"{key}: {code} ({status}) {err.get('Message', '')}") from e
        except NoCredentialsError as e:
            raise ObjectStoreError(f"{key}: no S3 credentials configured") from e
        except BotoCoreError as e:  # connection refused/reset, timeouts, truncated streams
            raise StoreUnavailable(f"{key}: {type(e).__name__}: {e}") from e

    @staticmethod
    def _cond(if_none_match: bool, if_match: str | None) -> dict[str, str]:
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match are exclusive")
        if if_none_match:
            return {"IfNoneMatch": "*"}
        return {"IfMatch": quote_etag(if_match)} if if_match is not None else {}

    def put_bytes(self, key, data, *, if_none_match=False, if_match=None):
        cond = self._cond(if_none_match, if_match)
        with self._errors(key):
            resp = self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=bytes(data), **cond)
        return resp["ETag"]

    def put_file(self, key, path, *, if_none_match=False, if_match=None):
        cond = self._cond(if_none_match, if_match)
        with self._errors(key):
            if cond or os.path.getsize(path) < self._transfer.multipart_threshold:
                # s3transfer does not pass conditional headers; a single PUT takes up to 5 GiB.
                with open(path, "rb") as f:
                    return self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=f,
                                                   **cond)["ETag"]
            self._client.upload_file(path, self.bucket, self._k(key), Config=self._transfer)
            return self._client.head_object(Bucket=self.bucket, Key=self._k(key))["ETag"]

    def get_bytes(self, key):
        with self._errors(key):
            resp = self._client.get_object(Bucket=self.bucket, Key=self._k(key))
            with contextlib.closing(resp["Body"]) as body:
                data = body.read()
        return data, resp["ETag"]

    def download_file(self, key, path, max_bytes=None):
        with self._errors(key):
            if max_bytes is not None:
                # boto3's own transfer sizes its ranged GETs from a HEAD too: it reads no more than this.
                size = self._client.head_object(Bucket=self.bucket, Key=self._k(key))["ContentLength"]
                if size > max_bytes:
                    raise TooLarge(f"{key}: {size} bytes, at most {max_bytes} expected")
            self._client.download_file(self.bucket, self._k(key), path, Config=self._transfer)

    def head(self, key):
        try:
            with self._errors(key):
                return self._client.head_object(Bucket=self.bucket, Key=self._k(key))["ETag"]
        except NotFound:
            return None

    def delete(self, key):
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def list_keys(self, prefix=""):
        check_key(prefix, allow_prefix=True)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        with self._errors(prefix or "/"):
            for page in self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full):
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)


def open_store(url: str, *, env: Mapping[str, str] | None = None, connect_timeout: float = 5.0,
               read_timeout: float = 60.0, max_attempts: int = 3,
               multipart_threshold: int = 128 * CHUNK) -> ObjectStore:
    """``s3://bucket/prefix`` (client from AWS_* in ``env``, default os.environ) or ``file:///abs/dir``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError("file URL must be file:///absolute/dir")
        return FileStore(url, urllib.parse.unquote(parsed.path))
    if parsed.scheme == "s3":
        if len(parsed.netloc) < 3:
            raise ValueError("s3 URL must be s3://bucket/prefix (bucket name >= 3 chars)")
        prefix = parsed.path.strip("/")
        if prefix:
            check_key(prefix)
        opts: dict[str, Any] = dict(connect_timeout=connect_timeout, read_timeout=read_timeout,
                                    max_attempts=max_attempts, multipart_threshold=multipart_threshold)
        return _S3Store(url, parsed.netloc, prefix, os.environ if env is None else env, **opts)
    raise ValueError(f"unsupported object store URL scheme {parsed.scheme!r}")
