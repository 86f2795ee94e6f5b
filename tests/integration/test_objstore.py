"""Object store backends against real servers: file://, SeaweedFS, and rclone for the core set."""
from __future__ import annotations

import hashlib
import os
import threading
import uuid

import pytest

from supervisor.objstore import (NotFound, ObjectStoreError, PreconditionFailed, StoreUnavailable,
                                 open_store, same_etag)
from tests.s3servers import free_port, new_bucket, rclone_s3, s3_client, s3_env, seaweedfs  # noqa: F401

BACKENDS = ["file", "seaweedfs", "rclone"]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    return _make_store(request, request.param, tmp_path)


@pytest.fixture(params=["file", "seaweedfs"])
def cond_store(request, tmp_path):
    return _make_store(request, request.param, tmp_path)


def _make_store(request, kind, tmp_path, prefix="pre/fix", **kw):
    if kind == "file":
        return open_store(f"file://{tmp_path / 'store'}")
    server = request.getfixturevalue("seaweedfs" if kind == "seaweedfs" else "rclone_s3")
    bucket = new_bucket(server)
    return open_store(f"s3://{bucket}/{prefix}", env=s3_env(server, bucket), **kw)


def test_put_get_head_delete_roundtrip(store):
    etag = store.put_bytes("a/b/c.json", b'{"x": 1}')
    data, etag2 = store.get_bytes("a/b/c.json")
    assert data == b'{"x": 1}'
    assert same_etag(etag, etag2) and same_etag(store.head("a/b/c.json"), etag)
    store.delete("a/b/c.json")
    assert store.head("a/b/c.json") is None
    store.delete("a/b/c.json")  # idempotent


def test_missing_key_raises_not_found(store, tmp_path):
    with pytest.raises(NotFound):
        store.get_bytes("nope/x")
    with pytest.raises(NotFound):
        store.download_file("nope/x", str(tmp_path / "dl"))
    assert store.head("nope/x") is None


def test_list_keys_by_prefix(store):
    for k in ("t/1/a", "t/1/b", "t/2/a", "u/x"):
        store.put_bytes(k, b"v")
    assert store.list_keys("t/1/") == ["t/1/a", "t/1/b"]
    assert store.list_keys("t/") == ["t/1/a", "t/1/b", "t/2/a"]
    assert "u/x" in store.list_keys()


@pytest.mark.parametrize("kind", BACKENDS)
def test_large_file_roundtrip_multipart(request, kind, tmp_path):
    store = _make_store(request, kind, tmp_path, multipart_threshold=8 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024))  # 3 parts of 8 MiB on S3
    store.put_file("big/obj", str(src))
    dst = tmp_path / "out.bin"
    store.download_file("big/obj", str(dst))
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    if kind == "seaweedfs":  # rclone reports the whole-object MD5 even for multipart
        assert store.head("big/obj").strip('"').endswith("-3")  # really multipart


def test_conditional_write_support_is_probed_not_assumed(request, tmp_path):
    expected = {"file": True, "seaweedfs": True, "rclone": False}
    for kind, want in expected.items():
        st = _make_store(request, kind, tmp_path / kind)
        assert st.supports_conditional_writes is want
        assert st.supports_conditional_writes is want  # cached
        assert not [k for k in st.list_keys() if k.startswith("_probe/")]  # probe cleans up


def test_conditional_put_semantics(cond_store):
    s = cond_store
    e1 = s.put_bytes("m.json", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        s.put_bytes("m.json", b"2", if_none_match=True)
    e2 = s.put_bytes("m.json", b"2", if_match=e1)
    with pytest.raises(PreconditionFailed):
        s.put_bytes("m.json", b"3", if_match=e1)  # stale etag
    assert s.get_bytes("m.json")[0] == b"2"
    assert same_etag(s.head("m.json"), e2)


def test_conditional_put_file(cond_store, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    cond_store.put_file("k", str(f), if_none_match=True)
    with pytest.raises(PreconditionFailed):
        cond_store.put_file("k", str(f), if_none_match=True)


def test_rclone_ignores_conditions_and_nothing_breaks(request, tmp_path):
    st = _make_store(request, "rclone", tmp_path)
    assert st.supports_conditional_writes is False
    st.put_bytes("m", b"1", if_none_match=True)
    st.put_bytes("m", b"2", if_match='"0123456789abcdef0123456789abcdef"')  # silently accepted
    assert st.get_bytes("m")[0] == b"2"


def test_prefix_from_url_is_applied(request, seaweedfs):  # noqa: F811
    bucket = new_bucket(seaweedfs)
    st = open_store(f"s3://{bucket}/deep/prefix", env=s3_env(seaweedfs, bucket))
    st.put_bytes("towns/t/x", b"1")
    raw = s3_client(seaweedfs).list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in raw["Contents"]] == ["deep/prefix/towns/t/x"]
    assert st.list_keys("towns/") == ["towns/t/x"]


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/", "a/../b", "", ".objstore/x", "a\\b"])
def test_unsafe_keys_rejected(tmp_path, key):
    st = open_store(f"file://{tmp_path}")
    with pytest.raises(ValueError):
        st.put_bytes(key, b"x")


@pytest.mark.parametrize("url", ["http://x/y", "file://relative/dir", "s3://ab/p", "file:rel"])
def test_bad_urls_rejected(url):
    with pytest.raises(ValueError):
        open_store(url)


def test_closed_port_raises_store_unavailable():
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}
    st = open_store("s3://bucket/p", env=env, max_attempts=1, connect_timeout=1)
    for call in (lambda: st.put_bytes("k", b"x"), lambda: st.get_bytes("k"), lambda: st.head("k"),
                 lambda: st.list_keys(), lambda: st.supports_conditional_writes):
        with pytest.raises(StoreUnavailable):
            call()


def test_wrong_secret_is_an_error_without_secret_in_message(seaweedfs):  # noqa: F811
    bucket = new_bucket(seaweedfs)
    env = s3_env(seaweedfs, bucket) | {"AWS_SECRET_ACCESS_KEY": "wrong-secret-value-xyz"}
    st = open_store(f"s3://{bucket}", env=env, max_attempts=1)
    with pytest.raises(ObjectStoreError) as ei:
        st.put_bytes("k", b"x")
    assert not isinstance(ei.value, StoreUnavailable)
    assert "wrong-secret-value-xyz" not in str(ei.value)


def test_file_store_conditional_race_has_exactly_one_winner(tmp_path):
    st = open_store(f"file://{tmp_path}")
    for round_ in range(5):
        key, wins, barrier = f"race/{round_}", [], threading.Barrier(8)

        def put(i, key=key, wins=wins, barrier=barrier):
            barrier.wait()
            try:
                st.put_bytes(key, str(i).encode(), if_none_match=True)
                wins.append(i)
            except PreconditionFailed:
                pass

        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(wins) == 1
        assert st.get_bytes(key)[0] == str(wins[0]).encode()


def test_file_store_writes_leave_no_temp_files(tmp_path):
    st = open_store(f"file://{tmp_path}")
    st.put_bytes("a/b", b"1")
    with pytest.raises(PreconditionFailed):
        st.put_bytes("a/b", b"2", if_none_match=True)
    assert os.listdir(tmp_path / ".objstore" / "tmp") == []
    assert st.list_keys() == ["a/b"]


def test_unique_bucket_helper(seaweedfs):  # noqa: F811
    a, b = new_bucket(seaweedfs), new_bucket(seaweedfs, f"b-{uuid.uuid4().hex[:8]}")
    assert a != b and len(a) >= 3
