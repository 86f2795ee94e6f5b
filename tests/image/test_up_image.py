"""``gastown up --image``: the local town with its container from the image (the worker's Docker-API
provider through a ``podman system service`` child); the mayor answers from inside it, and Ctrl-C
drains the container to exit 0 and leaves no process of the run behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_up import BANNER, GASTOWN, UP_TIMEOUT_S, _env, _wait_gone
from tests.podman import IMAGE, inspect, podman, private_addresses, require_image

pytestmark = [pytest.mark.kilo, pytest.mark.xdist_group("image")]


def test_gastown_up_image_runs_the_town_from_the_image_and_ctrl_c_drains_it(tmp_path: Path) -> None:
    require_image()
    root, out = tmp_path / "town", tmp_path / "up.out"
    with open(out, "wb") as log:
        proc = subprocess.Popen([str(GASTOWN), "up", "--image", IMAGE, "--dir", str(root)], env=_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    name = ""
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while BANNER not in out.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.5)
        text = out.read_text()
        assert "mayor replied after" in text and f"image {IMAGE}" in text, text
        town_id = json.loads((root / "town.json").read_text())["town_id"]
        name = f"gastown-town-{town_id}"
        running = inspect(name)
        assert running["State"]["Status"] == "running" and private_addresses(running) == []
        agents = subprocess.run([str(GASTOWN), "agents", "--dir", str(root)], env=_env(), capture_output=True,
                                text=True, timeout=60)
        assert agents.returncode == 0 and "mayor" in agents.stdout, agents.stdout + agents.stderr
        tree = psutil.Process(proc.pid).children(recursive=True)

        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=400) == 0, out.read_text()
        stopped = inspect(name)["State"]
        assert stopped["Status"] in ("exited", "stopped") and stopped["ExitCode"] == 0, stopped
        _wait_gone(tree, root, 60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if name:
            podman("rm", "-f", "-v", name, check=False)
