"""Real S3-compatible servers for tests and benchmarks: SeaweedFS (`weed mini`) and `rclone serve s3`.

Both are bound to 127.0.0.1 on free ports and stopped by PID. SeaweedFS gets the flags that keep it
off the network (`-ip`, `-ip.bind`, `-master.telemetry=false`) and explicit credentials so a
developer's real AWS keys are never inherited. Fixtures are session-scoped (a start costs ~1 s, a stop
~4 s) and cached per process, so importing them into several modules or via `pytest_plugins` still
starts one server. Use a fresh bucket per test: `new_bucket(server)`.
"""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["S3Server", "TcpProxy", "start_seaweedfs", "start_rclone", "s3_env", "new_bucket",
           "s3_client", "seaweedfs", "rclone_s3"]

_BIN_DIR = Path(sys.executable).parent  # the venv's bin: weed and rclone (NOT /usr/bin/rclone)
KEY, SECRET = "testkey", "testsecret-0123456789"


@dataclass
class S3Server:
    kind: str
    endpoint: str
    key: str
    secret: str
    proc: subprocess.Popen
    data_dir: str
    log_path: str
    ports: list[int] = field(default_factory=list)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID, wait, SIGKILL if it will not go. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.kind == "seaweedfs":  # it sometimes leaves its gRPC unix sockets behind in /tmp
            for port in self.ports:
                for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    sock.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_block() -> int:
    """A base B with B..B+4 and their gRPC ports B+10000..B+10004 all free (SeaweedFS's layout)."""
    for _ in range(200):
        base = random.randrange(20000, 30000, 10)
        if all(_port_free(p) and _port_free(p + 10000) for p in range(base, base + 5)):
            return base
    raise RuntimeError("no free port block for SeaweedFS")


def s3_client(server: S3Server, timeout: float = 5.0):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=server.key,
        aws_secret_access_key=server.secret, region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required",
                      connect_timeout=timeout, read_timeout=timeout * 6,
                      retries={"max_attempts": 2, "mode": "standard"}))


def _wait_ready(server: S3Server, timeout: float) -> None:
    """Ready means an authenticated S3 call succeeds, not just an open port."""
    client = s3_client(server, timeout=1.0)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not server.running:
            raise RuntimeError(f"{server.kind} exited early:\n{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.kind} not ready after {timeout}s: {last!r}\n{server.log_tail()}")


def _spawn(cmd: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
    with open(log_path, "ab") as logf:
        return subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _base_env() -> dict[str, str]:
    # Never hand the developer's real cloud credentials or endpoints to the server.
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}


def start_seaweedfs(tmpdir: str | os.PathLike, *, key: str = KEY, secret: str = SECRET,
                    timeout: float = 30.0) -> S3Server:
    tmp = Path(tmpdir)
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    base = _free_block()
    s3, master, volume, filer, admin = range(base, base + 5)
    cmd = [str(_BIN_DIR / "weed"), "mini", f"-dir={tmp / 'data'}",
           "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
           "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
           f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
           f"-filer.port={filer}", f"-admin.port={admin}",
           f"-s3.port.grpc={s3 + 10000}", f"-master.port.grpc={master + 10000}",
           f"-volume.port.grpc={volume + 10000}", f"-filer.port.grpc={filer + 10000}",
           f"-admin.port.grpc={admin + 10000}",
           f"-filer.localSocket={tmp / 'filer.sock'}", f"-s3.localSocket={tmp / 's3.sock'}"]
    env = _base_env() | {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                         "GOMEMLIMIT": "256MiB"}
    log_path = str(tmp / "weed.log")
    proc = _spawn(cmd, env, log_path)
    server = S3Server("seaweedfs", f"http://127.0.0.1:{s3}", key, secret, proc, str(tmp / "data"),
                      log_path, [p + d for p in range(base, base + 5) for d in (0, 10000)])
    _wait_ready(server, timeout)
    return server


def start_rclone(tmpdir: str | os.PathLike, *, key: str = KEY, secret: str = SECRET,
                 port: int | None = None, timeout: float = 15.0) -> S3Server:
    tmp = Path(tmpdir)
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [str(_BIN_DIR / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
           "--auth-key", f"{key},{secret}", "--config", "/dev/null", str(tmp / "data")]
    log_path = str(tmp / "rclone.log")
    proc = _spawn(cmd, _base_env(), log_path)
    server = S3Server("rclone", f"http://127.0.0.1:{port}", key, secret, proc, str(tmp / "data"),
                      log_path, [port])
    _wait_ready(server, timeout)
    return server


def s3_env(server: S3Server, bucket: str) -> dict[str, str]:
    """The AWS_* environment that `supervisor.objstore.open_store` reads (pass it as ``env=``)."""
    return {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": server.key,
            "AWS_SECRET_ACCESS_KEY": server.secret, "AWS_REGION": "us-east-1"}


def new_bucket(server: S3Server, name: str | None = None) -> str:
    """Create a unique bucket (names must be >= 3 chars, lowercase) and return its name."""
    bucket = name or f"t-{uuid.uuid4().hex[:20]}"
    s3_client(server).create_bucket(Bucket=bucket)
    return bucket


class TcpProxy:
    """A loopback TCP forwarder that can be taken down and brought back on the same port, so a test
    can make a live S3 server "unavailable" (connection refused / reset) without a 5 s restart."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", self.port))
            ls.listen(64)
            self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            ls, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if ls is not None:
            ls.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    close = down

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not ls:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()  # each socket is the source of exactly one pump
            with self._lock:
                self._conns.discard(src)


_SERVERS: dict[str, S3Server] = {}
_SERVERS_LOCK = threading.Lock()


def _session_server(kind: str, factory, tmp_path_factory) -> S3Server:
    with _SERVERS_LOCK:
        server = _SERVERS.get(kind)
        if server is None or not server.running:
            server = factory(tmp_path_factory.mktemp(kind))
            _SERVERS[kind] = server
        return server


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A SeaweedFS `weed mini` for the whole session (conditional writes work)."""
    server = _session_server("seaweedfs", start_seaweedfs, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory):
    """`rclone serve s3` for the whole session (conditional writes silently ignored)."""
    server = _session_server("rclone", start_rclone, tmp_path_factory)
    yield server
    server.stop()
