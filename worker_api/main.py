"""``gastown worker``: serve the worker API until SIGTERM/SIGINT, then clean up and exit 0."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web

from gastown.core import jsonlog
from gastown.core.serving import Runner
from worker_api.snapshot_access import SnapshotBroker
from worker_api.app import create_app
from worker_api.appkeys import DB
from worker_api.containers import config as container_config
from worker_api import db_pg
from worker_api.db import SchemaTooNewError
from worker_api.front.archive import Retention
from worker_api.scm.github import GitHubProvider

log = jsonlog.get_logger("worker_api.main")

DEFAULT_DB_PATH = ".gastown/worker.db"
REQUIRED_ENV = ("GASTOWN_ADMIN_TOKEN", "GASTOWN_JWT_SECRET")


async def _serve(host: str, port: int, db_path: str, admin_token: str, jwt_secret: str,
                 broker: SnapshotBroker | None, containers: tuple[Any, Any]) -> None:
    provider, launch = containers
    app = create_app(db_path, admin_token=admin_token, jwt_secret=jwt_secret, scm_provider=GitHubProvider.from_env(),
                     snapshot_broker=broker, container_provider=provider, launch=launch)
    runner = Runner(app, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("worker.started", host=host, port=port, db=app[DB].label, addresses=[str(a) for a in runner.addresses])
        await stop.wait()
        log.info("worker.stopping")
    finally:
        await runner.cleanup()  # unwinds the cleanup contexts: reconciler loops, then the store
    log.info("worker.stopped")


MIN_JWT_SECRET_BYTES = 32


def run_worker(host: str, port: int, db_path: str | None, *, containers: str = "none", image: str | None = None,
               public_url: str | None = None) -> int:
    jsonlog.configure()
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        print(f"gastown worker: missing required environment variable(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    admin_token = os.environ["GASTOWN_ADMIN_TOKEN"]
    jwt_secret = os.environ["GASTOWN_JWT_SECRET"]
    jsonlog.register_secret(admin_token)
    jsonlog.register_secret(jwt_secret)
    if len(jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:  # HS256 with a short key can be brute-forced offline
        print(f"gastown worker: GASTOWN_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes", file=sys.stderr)
        return 2
    try:
        Retention.from_env(os.environ)
    except ValueError as e:
        print(f"gastown worker: GASTOWN_ARCHIVE_KEEP_*: {e}", file=sys.stderr)
        return 2
    try:
        broker = SnapshotBroker.from_env(os.environ)
    except ValueError as e:
        print(f"gastown worker: {e}", file=sys.stderr)
        return 2
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        jsonlog.register_secret(os.environ.get(key))
    path = db_path or DEFAULT_DB_PATH
    postgres = db_pg.is_url(path)
    # Where the local provider keeps its towns' directories: beside the SQLite file, else GASTOWN_STATE_DIR.
    state_dir = Path(os.environ.get("GASTOWN_STATE_DIR") or (".gastown" if postgres else Path(path).parent))
    try:
        provided = container_config.from_args(containers, image=image, state_dir=state_dir, env=os.environ,
                                              worker_url=public_url or f"http://{host}:{port}")
    except ValueError as e:
        print(f"gastown worker: {e}", file=sys.stderr)
        return 2
    for key, value in (provided[1].base_env.items() if provided[1] else ()):
        if jsonlog.is_secret_key(key) or key == "GASTOWN_KILO_PROVIDERS":  # the model providers' keys
            jsonlog.register_secret(value)
    if postgres:
        try:
            jsonlog.register_secret(psycopg.conninfo.conninfo_to_dict(path).get("password"))
        except psycopg.Error:
            print("gastown worker: the database URL is not valid (see libpq's connection URIs)", file=sys.stderr)
            return 2
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_serve(host, port, path, admin_token, jwt_secret, broker, provided))
    except (OSError, sqlite3.Error, psycopg.Error, SchemaTooNewError) as e:
        error = db_pg.redact(str(e))
        log.error("worker.failed", error=error)
        print(f"gastown worker: {error}", file=sys.stderr)
        return 1
    return 0
