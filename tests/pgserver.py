"""A real PostgreSQL server for the tests: Debian's programs (deploy/postgres/install), a cluster
made by ``initdb`` in a temporary directory and run by ``pg_ctl`` on a free loopback port, as the
``postgres`` user (PostgreSQL refuses to run as root), with password authentication on loopback (so
the tests see where a password could leak). Each test gets a database of its own."""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from gastown.core.ports import free_port

PG_USER = "postgres"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: run deploy/postgres/install (make test does)")
    return found[-1]


@dataclass
class PgServer:
    port: int
    data_dir: Path
    password: str
    _names = itertools.count(1)

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        _as_postgres([pg_bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"], check=False)
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _as_postgres(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """As the ``postgres`` user when we are root (PostgreSQL refuses root), else as ourselves."""
    who: dict = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam(PG_USER)
        who = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    return subprocess.run(argv, **who, check=check, capture_output=True, text=True, timeout=120, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})


def start_pg() -> PgServer:
    """initdb (scram passwords on loopback, the only address it listens on) and start."""
    root = Path(tempfile.mkdtemp(prefix="gastown-pg-"))
    data = root / "data"
    owner = pwd.getpwnam(PG_USER) if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    os.chown(root, owner.pw_uid, owner.pw_gid)
    root.chmod(0o700)
    password = "pg-" + secrets.token_hex(12)
    pwfile = root / "pw"
    pwfile.write_text(password)
    os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    _as_postgres([pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--auth-local=trust", "--auth-host=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"])
    pwfile.unlink()
    port = free_port()
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB")
    res = _as_postgres([pg_bin("pg_ctl"), "start", "-D", str(data), "-w", "-t", "60", "-l", str(root / "pg.log"),
                        "-o", opts], check=False)
    if res.returncode != 0:
        log = (root / "pg.log").read_text(errors="replace") if (root / "pg.log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {res.stdout}{res.stderr}\n{log[-4000:]}")
    return PgServer(port, data, password)
