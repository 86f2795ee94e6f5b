"""Town containers as local ``gastown container`` processes (``gastown up``, tests): the same
interface as the image providers, no engine needed.

Each start gets a fresh data directory (``<root>/<town_id>``, emptied first: a container's state
comes from its snapshots, as on a fresh volume) and a loopback port. The process dies with the worker
(parent-death signal), and ``aclose`` drains the ones still running.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from gastown.core.jsonlog import get_logger
from gastown.core.ports import free_port
from gastown.core.procs import die_with_parent
from worker_api.containers.base import DRAIN_GRACE_S, Launch, ProviderError

log = get_logger("worker_api.containers.local")


class LocalProcessProvider:
    def __init__(self, root: Path, *, host: str = "127.0.0.1", stop_grace_s: float = DRAIN_GRACE_S) -> None:
        self.root = root
        self.host = host
        self.stop_grace_s = stop_grace_s
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, launch: Launch) -> str:
        old = self._procs.get(launch.town_id)
        if old is not None and old.returncode is None:
            raise ProviderError("the town's container process is still running")
        data = self.root / launch.town_id
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        port = free_port(self.host)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **launch.env, "GASTOWN_DATA_DIR": str(data / "data"),
               "GASTOWN_HOST": self.host, "GASTOWN_PORT": str(port)}
        (data / "data").mkdir()
        with open(data / "container.log", "ab") as out:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *die_with_parent([sys.executable, "-m", "gastown.cli", "container"], signal.SIGTERM), env=env,
                    stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
            except OSError as e:
                raise ProviderError(f"could not start gastown container: {e}") from None
        self._procs[launch.town_id] = proc
        log.info("container.started", town=launch.town_id, pid=proc.pid, port=port)
        return f"http://{self.host}:{port}"

    async def state(self, town_id: str) -> str:
        proc = self._procs.get(town_id)
        if proc is None or proc.returncode is not None:
            return "stopped"
        return "running"

    async def stop(self, town_id: str) -> None:
        proc = self._procs.get(town_id)
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)  # the container drains on SIGTERM (docs/contract.md §2)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_grace_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        log.info("container.stopped", town=town_id, returncode=proc.returncode)

    async def aclose(self) -> None:
        await asyncio.gather(*(self.stop(t) for t in list(self._procs)), return_exceptions=True)
