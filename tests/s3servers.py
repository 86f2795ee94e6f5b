"""Fixtures over the real S3-compatible servers of :mod:`gastown.local.s3servers`, and a TCP proxy.

Fixtures are session-scoped (a start costs ~1 s, a stop
~4 s) and cached per process, so importing them into several modules or via `pytest_plugins` still
starts one server. Use a fresh bucket per test: `new_bucket(server)`.
"""
from __future__ import annotations

import socket
import threading

import pytest

from gastown.core.ports import free_port
from gastown.local.s3servers import (
    KEY,
    SECRET,
    S3Server,
    new_bucket,
    s3_client,
    s3_env,
    start_rclone,
    start_seaweedfs,
)

__all__ = ["S3Server", "TcpProxy", "start_seaweedfs", "start_rclone", "s3_env", "new_bucket",
           "s3_client", "seaweedfs", "rclone_s3", "free_port", "KEY", "SECRET"]


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
