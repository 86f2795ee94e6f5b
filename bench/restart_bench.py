"""Crash recovery against supervisord: ``kill -9`` of a serving ``kilo serve`` → serving again.

supervisord (4.3.0 from PyPI, in its own venv ``.venv-supervisord``: its package is named
``supervisor`` and would shadow ours; ``autorestart=true``, ``startsecs=1``) manages the same kilo command
with the same env the runtime builds for a mayor (a ``sh`` wrapper sources the env and ``exec``s
kilo, so supervisord's child is kilo itself); "serving again" is the restarted kilo answering
``/global/health`` on its port. The runtime restarts its mayor in place; "serving again" is the
agent back in ``running`` with a new pid — its session resumed and its event stream live, more than
supervisord's side waits for. The runtime has snapshots on (a ``file://`` store) and a real worker, so the crash snapshot and
the ``completed`` report are part of what is measured.

Each round is a first crash after a healthy run (the mayor is started fresh and serves for longer
than the start window, 10 s, before the kill), sides alternate A B B A, 3 rounds each.
Target: ratio of medians (runtime / supervisord) ≤ 1.10. Prints one JSON line.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import (
    KILO_BIN, abba, assert_no_kilo_left, configure_runtime_log, emit, fake_llm, log, machine, median, ms, ms_list,
    prepare_bare, rmtree, runtime_config, start_body, start_container, start_worker, tail,
)
from supervisor.hydration import mayor_rig_id
from supervisor.kilo_client import KiloClient
from supervisor.kilo_env import build_child_env, build_kilo_config, config_content
from supervisor.kilo_process import allocate_port
from supervisor.models import StartAgentRequest

SUPERVISORD_VENV = Path(__file__).resolve().parent.parent / ".venv-supervisord"
SUPERVISORD_PIN = "supervisor==4.3.0"
ROUNDS = int(os.environ.get("BENCH_RESTART_ROUNDS", "3"))
SERVE_BEFORE_KILL_S = 11.0  # longer than the runtime's start window (GASTOWN_START_WINDOW_S, 10 s)
POLL_S = 0.02
TARGET = 1.10


def supervisord_bin() -> Path:
    """supervisord from PyPI in a venv of its own, installed on first use (idempotent)."""
    exe = SUPERVISORD_VENV / "bin" / "supervisord"
    if not exe.exists():
        log(f"installing {SUPERVISORD_PIN} into {SUPERVISORD_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(SUPERVISORD_VENV)], check=True, timeout=300)
        subprocess.run([str(SUPERVISORD_VENV / "bin" / "pip"), "install", "-q", SUPERVISORD_PIN], check=True, timeout=600)
    return exe


class Supervisord:
    """supervisord running one program: the mayor's kilo on a fixed port."""

    def __init__(self, root: Path, env: dict[str, str], workdir: Path, port: int, password: str) -> None:
        self.root, self.port = root, port
        self.client = KiloClient(f"http://127.0.0.1:{port}", password, timeout_s=2.0)
        env_file = root / "kilo.env"
        env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        env_file.chmod(0o600)
        run = root / "run.sh"
        argv = [KILO_BIN, "serve", "--hostname", "127.0.0.1", "--port", str(port), "--print-logs", "--log-level", "WARN"]
        run.write_text(f". {shlex.quote(str(env_file))}\nexec {' '.join(shlex.quote(a) for a in argv)}\n")
        conf = root / "supervisord.conf"
        conf.write_text(f"""[supervisord]
nodaemon=true
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
childlogdir={root}

[program:kilo]
command=/bin/sh {run}
directory={workdir}
autorestart=true
startsecs=1
startretries=100
stopasgroup=true
killasgroup=true
""")
        self.conf = conf
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(supervisord_bin()), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def kilo_pid(self) -> int | None:
        if self.proc is None:
            return None
        try:
            for child in psutil.Process(self.proc.pid).children():
                if child.status() != psutil.STATUS_ZOMBIE and "serve" in child.cmdline():
                    return child.pid
        except psutil.Error:
            return None
        return None

    async def serving(self, not_pid: int | None, timeout: float = 120.0) -> int:
        """Wait until a kilo other than ``not_pid`` answers /global/health; its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.kilo_pid()
            if pid is not None and pid != not_pid and await self.client.health(timeout=1.0):
                return pid
            await asyncio.sleep(POLL_S)
        raise TimeoutError("supervisord's kilo never served again")

    async def stop(self) -> None:
        await self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)


async def run(tmp: Path) -> dict:
    t_begin = time.monotonic()
    async with fake_llm() as llm:
        worker = await start_worker(tmp / "worker.db")
        town_id, token = await worker.create_town(default_model="fake/m1")
        status, body = await worker.request("POST", f"/api/towns/{town_id}/agents",
                                            json={"agent_id": "mayor", "role": "mayor", "name": "Mayor"})
        assert status == 201, body
        cfg = runtime_config(tmp / "container", llm, town_id=town_id, api_url=worker.url, container_token=token,
                             snapshot_url=f"file://{tmp / 'store'}")
        container = await start_container(cfg)
        await container.runtime.wait_hydrated(120)
        mayor = dict(agent_id="mayor", town_id=town_id, rig_id=mayor_rig_id(town_id), role="mayor", name="Mayor",
                     prompt="hello mayor")

        # supervisord's kilo: the mayor's env and workspace, built as the runtime builds them.
        sv_cfg = runtime_config(tmp / "supervisord-data", llm)
        req = StartAgentRequest(**start_body(**{**mayor, "agent_id": "sv-mayor"}))
        paths = await asyncio.to_thread(prepare_bare, sv_cfg, req)
        password = secrets.token_urlsafe(24)
        config = build_kilo_config(req, providers=sv_cfg.kilo_providers, kilocode_token=None,
                                   plugin_command=sv_cfg.plugin_command, api_url=None)
        env = build_child_env(req, paths=paths, kilo_bin=KILO_BIN, config_json=config_content(config), password=password,
                              parent_pid=os.getpid(), api_url=None, kilocode_token=None)
        (tmp / "sv").mkdir()
        sv = Supervisord(tmp / "sv", env, paths.workdir, allocate_port(), password)
        sv.start()
        sv_times: list[float] = []
        rt_times: list[float] = []
        try:
            await sv.serving(None)

            async def round_supervisord() -> float:
                await asyncio.sleep(SERVE_BEFORE_KILL_S)
                pid = sv.kilo_pid()
                assert pid is not None
                t0 = time.perf_counter()
                os.kill(pid, 9)
                await sv.serving(pid)
                return time.perf_counter() - t0

            async def round_runtime() -> float:
                status, body = await container.start_agent(**mayor)
                assert status in (200, 201), body
                await asyncio.sleep(SERVE_BEFORE_KILL_S)
                _, st = await container.request("GET", "/agents/mayor/status")
                assert st["status"] == "running", st
                old = st["pid"]
                t0 = time.perf_counter()
                os.kill(old, 9)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    _, st = await container.request("GET", "/agents/mayor/status")
                    if st["status"] == "running" and st["pid"] not in (None, old):
                        t_running = time.perf_counter()
                        break
                    await asyncio.sleep(POLL_S)
                else:
                    raise TimeoutError(f"the mayor never served again: {st}")
                assert st["restarts"] == 1, "a first crash after a healthy run"
                status, _ = await container.request("POST", "/agents/mayor/stop")
                assert status == 200
                return t_running - t0

            for side in abba(ROUNDS, first="A"):
                if side == "A":
                    sv_times.append(await round_supervisord())
                    log(f"restart: supervisord {ms(sv_times[-1])} ms")
                else:
                    rt_times.append(await round_runtime())
                    log(f"restart: runtime {ms(rt_times[-1])} ms")
        finally:
            await sv.stop()
            await container.close()
            await worker.close()
        await assert_no_kilo_left()
    ratio = median(rt_times) / median(sv_times)
    return {
        "benchmark": "crash_restart",
        "supervisord_ms_median": ms(median(sv_times)), "runtime_ms_median": ms(median(rt_times)),
        "supervisord_ms": ms_list(sv_times), "runtime_ms": ms_list(rt_times),
        "ratio": round(ratio, 2), "target": f"ratio <= {TARGET}", "pass": ratio <= TARGET,
        "machine": machine(), "seconds": round(time.monotonic() - t_begin, 1),
    }


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gastown-bench-restart-"))
    configure_runtime_log(tmp / "runtime.log")
    try:
        emit(asyncio.run(run(tmp)))
    except BaseException:
        print(tail(tmp / "runtime.log"), file=sys.stderr)
        raise
    finally:
        rmtree(tmp)


if __name__ == "__main__":
    main()
