"""Children that cannot outlive their parent.

A process started in its own session (so Ctrl-C reaches only the parent, which then stops it in
order) is orphaned for good when that parent is SIGKILLed or dies before its cleanup. Linux's
parent-death signal (``PR_SET_PDEATHSIG``) closes that gap; it survives ``execve`` of a normal
binary. Two ways to set it:

- :func:`die_with_parent` for children we spawn: the argv is prefixed with util-linux ``setpriv``,
  which sets the signal and execs the real program (same pid). Nothing runs in the forked child
  before ``exec`` (``preexec_fn`` is unsafe beside threads, and the runtime has boto3 threads).
- :func:`exit_with_parent` for our own Python processes spawned by others (the plugin under kilo).

The signal fires when the *thread* that forked the child exits, so spawn from the event-loop
thread, never from ``asyncio.to_thread``.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
from typing import Sequence

from gastown.core.jsonlog import get_logger

log = get_logger("gastown.procs")

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_SETPRIV = shutil.which("setpriv")
_warned = False


def die_with_parent(argv: list[str], sig: signal.Signals = signal.SIGKILL, *, setpriv: Sequence[str] = ()) -> list[str]:
    """``argv`` wrapped so the child receives ``sig`` when its parent dies. ``setpriv``: more
    options of the same ``setpriv`` call (another user: one call, because a uid change made by a
    second one would clear the parent-death signal)."""
    global _warned
    if _SETPRIV is None:
        if setpriv:
            raise RuntimeError("setpriv (util-linux) is required to run a child as another user")
        if not _warned:
            log.warning("procs.no_setpriv", hint="install util-linux: children may outlive a killed parent")
            _warned = True
        return list(argv)
    return [_SETPRIV, f"--pdeathsig={sig.name[3:]}", *setpriv, "--", *argv]


def _prctl(option: int, arg: int) -> int | None:
    """prctl(2) on this process: 0 on success, -1 (errno logged by the caller), None without libc."""
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0))
    except (OSError, AttributeError):
        return None


def make_undumpable() -> bool:
    """No core dumps, and ``/proc/<pid>/{environ,mem,...}`` closed to anything without
    CAP_SYS_PTRACE, processes of the same uid included (the runtime, whose agents run hostile code)."""
    return _prctl(_PR_SET_DUMPABLE, 0) == 0


def exit_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies; exit now if it already has."""
    parent = os.getppid()
    result = _prctl(_PR_SET_PDEATHSIG, int(sig))
    if result is None:
        return
    if result != 0:
        log.warning("procs.pdeathsig_failed", errno=ctypes.get_errno())
        return
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(0)
