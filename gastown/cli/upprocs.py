"""The processes and output of ``gastown up``: children that die with it, and prints that cannot fail.

Children run in their own sessions (a terminal's Ctrl-C reaches only ``gastown up``, which stops them
in reverse order) and carry a parent-death signal (:mod:`gastown.core.procs`) for the case where
``gastown up`` dies before its cleanup.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import IO

from gastown.core.procs import die_with_parent

STOP_TIMEOUT_S = {"container": 60.0}  # a drain snapshots every agent; the others stop in ~1 s
DEFAULT_STOP_TIMEOUT_S = 10.0


class Output:
    """Lines to stdout and to a log file. A closed stdout (the reader of a pipe died with the same
    Ctrl-C, or the terminal closed) turns stdout off instead of raising into the cleanup."""

    def __init__(self, log_path: Path) -> None:
        # 0600: the banner it keeps holds the admin and control tokens, like town.json.
        self._log: IO[str] = open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a", buffering=1)
        self._stdout_ok = True

    def say(self, msg: str) -> None:
        self._log.write(msg + "\n")
        if self._stdout_ok:
            try:
                print(msg, flush=True)
            except OSError:  # EPIPE, EIO
                self._stdout_ok = False


class Children:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[tuple[str, asyncio.subprocess.Process | subprocess.Popen]] = []

    async def spawn(self, name: str, argv: list[str], env: dict[str, str], *, stdout_pipe: bool = False,
                    death_signal: signal.Signals = signal.SIGTERM) -> asyncio.subprocess.Process:
        """Spawned on the loop's thread: the parent-death signal is bound to the forking thread."""
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *die_with_parent(argv, death_signal), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else log, stderr=log, start_new_session=True)
        self._procs.append((name, proc))
        return proc

    def adopt(self, name: str, proc: subprocess.Popen) -> None:
        """A child started elsewhere (SeaweedFS), stopped with the others."""
        self._procs.append((name, proc))

    def check_alive(self) -> None:
        for name, p in self._procs:
            rc = p.returncode if isinstance(p, asyncio.subprocess.Process) else p.poll()
            if rc is not None:
                raise RuntimeError(f"{name} exited with {rc}; see {self.log_dir / (name + '.log')}")

    def _signal(self, sig: int, only: str | None = None) -> None:
        for name, p in self._procs:
            if only is None or name == only:
                try:
                    os.killpg(p.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def kill_all(self) -> None:
        self._signal(signal.SIGKILL)

    async def _wait(self, p: asyncio.subprocess.Process | subprocess.Popen, timeout: float) -> bool:
        if isinstance(p, asyncio.subprocess.Process):
            try:
                await asyncio.wait_for(p.wait(), timeout)
                return True
            except asyncio.TimeoutError:
                return False
        try:
            await asyncio.to_thread(p.wait, timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    async def stop_all(self) -> None:
        """SIGTERM each child's group in reverse start order, SIGKILL what does not go in time."""
        for name, p in reversed(self._procs):
            self._signal(signal.SIGTERM, only=name)
            if not await self._wait(p, STOP_TIMEOUT_S.get(name, DEFAULT_STOP_TIMEOUT_S)):
                self._signal(signal.SIGKILL, only=name)
                await self._wait(p, 10)
        self._procs.clear()
