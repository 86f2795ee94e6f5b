"""Parent-death signals: a child set up by gastown.core.procs dies with a SIGKILLed parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from gastown.core.procs import die_with_parent

PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from gastown.core.procs import die_with_parent, exit_with_parent
    mode = sys.argv[1]
    if mode == "wrapped":
        argv = die_with_parent(["sleep", "60"])
    elif mode == "plain":
        argv = ["sleep", "60"]
    else:  # a Python child that arms the signal itself (the plugin under kilo)
        argv = [sys.executable, "-c", "import time; from gastown.core.procs import exit_with_parent; "
                "exit_with_parent(); print('armed', flush=True); time.sleep(60)"]
    child = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, text=True)
    if mode == "self":
        child.stdout.readline()
    print(child.pid, flush=True)
    time.sleep(60)
""")


def _orphan_survives(mode: str, window_s: float = 2.0) -> bool:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        time.sleep(0.3)  # setpriv has exec'd sleep
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + window_s
        while time.monotonic() < deadline:
            if not child.is_running() or child.status() == psutil.STATUS_ZOMBIE:
                return False
            time.sleep(0.05)
        return True
    except psutil.NoSuchProcess:
        return False
    finally:
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_plain_child_in_its_own_session_outlives_a_sigkilled_parent():
    """The premise: without the signal the child lives on (what `make run` used to leave behind)."""
    assert _orphan_survives("plain")


def test_wrapped_child_dies_with_its_sigkilled_parent():
    assert not _orphan_survives("wrapped")


def test_python_child_that_arms_itself_dies_with_its_parent():
    assert not _orphan_survives("self")


def test_wrapper_keeps_the_program_and_its_arguments():
    argv = die_with_parent(["kilo", "serve", "--port", "1"], signal.SIGTERM)
    assert argv[-4:] == ["kilo", "serve", "--port", "1"] and "--pdeathsig=TERM" in argv
