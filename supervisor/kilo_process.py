"""One ``kilo serve`` child: spawn in its own process group, wait until it serves, stop it for good.

The child gets an explicit env and cwd (no global state), its stdout/stderr are drained into small
ring buffers (a full pipe would block kilo; the tail explains a death), and stop kills the whole
group and then sweeps any descendant that escaped it, so no process is ever left behind.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Mapping, Sequence

import psutil

from gastown.contract.wire import epoch_ms
from gastown.core.jsonlog import get_logger, scrub
from gastown.core.ports import free_port
from gastown.core.procs import die_with_parent

log = get_logger("supervisor.kilo_process")

_LISTENING = re.compile(r"kilo server listening on (https?://\S+)")
TAIL_LINES = 40


class KiloStartError(RuntimeError):
    """kilo did not come up; ``detail`` says why (exit code, stderr tail, phase)."""

    def __init__(self, message: str, *, phase: str, exit_code: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.phase = phase
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


@dataclass
class ExitInfo:
    code: int | None
    signal: int | None
    at: float
    stderr_tail: str
    requested: bool

    @property
    def oom_suspected(self) -> bool:
        """SIGKILL (or 137) that we did not send: the usual signature of the OOM killer."""
        return not self.requested and (self.signal == signal.SIGKILL or self.code == 137)

    def as_dict(self) -> dict:
        return {
            "code": self.code,
            "signal": self.signal,
            "at": epoch_ms(self.at),
            "oom_suspected": self.oom_suspected,
            "stderr_tail": self.stderr_tail,
        }


_reserved_ports: set[int] = set()


def allocate_port() -> int:
    """A free loopback port not handed to another agent of this runtime."""
    for _ in range(50):
        port = free_port()
        if port not in _reserved_ports:
            _reserved_ports.add(port)
            return port
    raise RuntimeError("no free port found")


def release_port(port: int) -> None:
    _reserved_ports.discard(port)


class KiloProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.pid = proc.pid
        self.url: str | None = None
        self.stdout_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._listening = asyncio.get_running_loop().create_future()
        self._stop_requested = False
        self._exit: ExitInfo | None = None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, self.stdout_tail, watch=True)),
            asyncio.create_task(self._pump(proc.stderr, self.stderr_tail, watch=False)),
        ]
        self._waiter = asyncio.create_task(self._wait())
        try:
            self._create_time = psutil.Process(self.pid).create_time()
        except psutil.Error:
            self._create_time = None

    @classmethod
    async def spawn(cls, kilo_bin: str, *, env: Mapping[str, str], cwd: str, port: int,
                    setpriv: Sequence[str] = ()) -> "KiloProcess":
        """``setpriv``: options that make the child the agent's user (``supervisor.isolation``)."""
        argv = [kilo_bin, "serve", "--hostname", "127.0.0.1", "--port", str(port), "--print-logs", "--log-level", "WARN"]
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(argv, setpriv=setpriv),
            env=dict(env), cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return cls(proc, port)

    async def _pump(self, stream: asyncio.StreamReader | None, tail: deque[str], *, watch: bool) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                return
            text = scrub(line.decode("utf-8", "replace").rstrip())
            tail.append(text[:2000])
            if watch and not self._listening.done():
                m = _LISTENING.search(text)
                if m:
                    self._listening.set_result(m.group(1))

    async def _wait(self) -> ExitInfo:
        rc = await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        sig = -rc if rc is not None and rc < 0 else None
        self._exit = ExitInfo(
            code=None if sig else rc,
            signal=sig,
            at=time.time(),
            stderr_tail="\n".join(list(self.stderr_tail)[-20:]),
            requested=self._stop_requested,
        )
        release_port(self.port)
        if not self._listening.done():
            self._listening.cancel()
        return self._exit

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit

    @property
    def running(self) -> bool:
        return self._exit is None

    async def wait_exit(self) -> ExitInfo:
        return await asyncio.shield(self._waiter)

    async def wait_listening(self, timeout: float) -> str:
        """Wait for kilo's ``listening on`` line; a death or timeout raises with the reason."""
        done, _ = await asyncio.wait({self._listening, self._waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._listening in done and not self._listening.cancelled():
            self.url = self._listening.result()
            return self.url
        if self._waiter in done:
            info = self._waiter.result()
            raise KiloStartError(
                f"kilo exited during startup (code={info.code}, signal={info.signal})",
                phase="spawn", exit_code=info.code if info.code is not None else -(info.signal or 0),
                stderr_tail=info.stderr_tail,
            )
        raise KiloStartError(
            f"kilo did not report listening within {timeout:.0f}s", phase="spawn",
            stderr_tail="\n".join(self.stderr_tail),
        )

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            if self._create_time is not None and root.create_time() != self._create_time:
                return []
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def pids(self) -> list[int]:
        return [p.pid for p in self._tree()]

    def rss_bytes(self) -> int:
        total = 0
        for p in self._tree():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, timeout: float = 5.0) -> ExitInfo:
        """SIGTERM the group, wait, SIGKILL the group, then kill any descendant that left it."""
        self._stop_requested = True
        tree = self._tree()
        if self.running:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
            except asyncio.TimeoutError:
                log.warning("kilo.stop_escalated", pid=self.pid, timeout_s=timeout)
                self._signal_group(signal.SIGKILL)
        self._signal_group(signal.SIGKILL)
        for p in tree:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
            except psutil.Error:
                pass
        await asyncio.to_thread(psutil.wait_procs, tree[1:], timeout=2)
        return await asyncio.shield(self._waiter)

    def suspend(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
