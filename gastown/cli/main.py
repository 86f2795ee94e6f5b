"""The ``gastown`` command: one entry point, one subcommand per long-running role."""
from __future__ import annotations

import argparse
import os
import re
import sys

from gastown.cli.localtown import DEFAULT_DIR, state_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gastown", description="Gas Town container runtime")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("container", help="control server + agent supervisor (in-container process)")
    # From the env too: a container on the host's network needs a port of its own (deploy/podman).
    c.add_argument("--host", default=os.environ.get("GASTOWN_HOST", "0.0.0.0"))
    c.add_argument("--port", type=int, default=int(os.environ.get("GASTOWN_PORT", "8080")))
    c.add_argument("--insecure", action="store_true", help="allow running without GASTOWN_CONTROL_TOKEN")

    w = sub.add_parser("worker", help="worker API (control plane) with its reconcilers")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8787)
    w.add_argument("--db", default=os.environ.get("GASTOWN_DB_URL") or None, type=_store,
                   help="SQLite file path (default: ./.gastown/worker.db), or postgresql://USER@HOST:PORT/DB for"
                        " several replicas (the password from PGPASSWORD or ~/.pgpass, or the whole URL in"
                        " $GASTOWN_DB_URL: never on the command line)")
    w.add_argument("--containers", choices=("none", "local", "docker", "kubernetes"), default="none",
                   help="start and stop the towns' containers: none (run elsewhere), local processes, the"
                        " runtime image through the Docker API ($DOCKER_HOST), or one Pod per town")
    w.add_argument("--image", default=None, help="runtime image for --containers docker or kubernetes")
    w.add_argument("--public-url", default=None,
                   help="the worker's URL as the towns' containers reach it (default http://HOST:PORT)")

    sub.add_parser("plugin", help="MCP stdio server with the gt_* tools (spawned by kilo)")
    g = sub.add_parser("git-credential", help="git credential helper of an agent (git runs it; asks the worker)")
    g.add_argument("op", help="get | store | erase (only get answers)")

    u = sub.add_parser("up", help="run a whole local town: S3 store + worker + container")
    u.add_argument("--dir", default=None, help=f"state directory (default $GASTOWN_TOWN_DIR or {DEFAULT_DIR})")
    u.add_argument("--image", nargs="?", const="localhost/gastown-runtime:dev", default=None,
                   help="run the town's container from this image with podman (`make image` builds it) instead of"
                        " a local process")

    ch = sub.add_parser("chat", help="talk to a town's mayor through the worker (one line per message, Ctrl-D leaves)")
    ch.add_argument("--town", default=None, help="town id (default $GASTOWN_TOWN_ID, else the local town's)")
    ch.add_argument("--url", default=None, help="worker URL (default $GASTOWN_WORKER_URL, else the local town's)")
    ch.add_argument("--token", default=None, help="your user token (default $GASTOWN_TOKEN, else the local town's)")
    ch.add_argument("--dir", default=None, help=f"state dir of a local `gastown up` town (default $GASTOWN_TOWN_DIR or "
                    f"{DEFAULT_DIR})")

    _add_operator_commands(sub)
    return p


def _store(raw: str) -> str:
    """A SQLite file path or a PostgreSQL URL; another URL (``sqlite:///…``, ``mysql://…``) is refused
    rather than taken as a directory name, and so is a password on the command line (``ps`` shows it)."""
    if raw.startswith(("postgresql://", "postgres://")):
        if raw != os.environ.get("GASTOWN_DB_URL") and (re.match(r"^\w+://[^/@]*:[^/@]*@", raw)
                                                        or re.search(r"[?&]password=", raw, re.IGNORECASE)):
            raise argparse.ArgumentTypeError("a password in --db is visible to every user of the machine: put it in"
                                             " PGPASSWORD or ~/.pgpass, or the whole URL in GASTOWN_DB_URL")
        return raw
    if "://" in raw or raw.startswith(("postgres:", "postgresql:", "sqlite:", "mysql:")):
        scheme = raw.split(":", 1)[0]
        raise argparse.ArgumentTypeError(f"{scheme}: URLs are not supported; give a SQLite file path or a"
                                         " postgresql:// URL")
    if not raw.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return raw


def _non_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _add_operator_commands(sub: argparse._SubParsersAction) -> None:
    """Read-only operator views over HTTP (see gastown/cli/operator.py); exit 1 on any request failure."""

    def common(p: argparse.ArgumentParser, url_help: str, token_help: str) -> None:
        p.add_argument("--url", default=None, help=url_help)
        p.add_argument("--token", default=None, help=token_help)
        p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
        p.add_argument("--dir", default=None, help="state dir of a local `gastown up` town, read when no URL"
                       f" or token is given (default $GASTOWN_TOWN_DIR or {DEFAULT_DIR})")

    control_url = "control server URL (default $GASTOWN_CONTROL_URL or http://127.0.0.1:8080)"
    control_token = "control token (default $GASTOWN_CONTROL_TOKEN)"
    a = sub.add_parser("agents", help="table of the container's agents: state, uptime, RSS, last exit")
    common(a, control_url, control_token)
    a.add_argument("--json", action="store_true", help="print the raw JSON answer")

    lg = sub.add_parser("logs", help="print an agent's event stream (--follow to keep polling)")
    lg.add_argument("agent", metavar="AGENT", help="agent id")
    common(lg, control_url, control_token)
    lg.add_argument("-f", "--follow", action="store_true", help="keep polling for new events until Ctrl-C")
    lg.add_argument("--after", type=_non_negative, default=0, help="only events with an id greater than N")
    lg.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")

    t = sub.add_parser("town", help="control-plane views of a town (from the worker API)")
    tsub = t.add_subparsers(dest="town_cmd", required=True)
    ts = tsub.add_parser("status", help="beads/agents/convoys summary of one town")
    common(ts, "worker API URL (default $GASTOWN_API_URL or http://127.0.0.1:8787)",
           "admin token (default $GASTOWN_ADMIN_TOKEN, else $GASTOWN_CONTAINER_TOKEN)")
    ts.add_argument("--town", default=None, help="town id (default $GASTOWN_TOWN_ID)")
    ts.add_argument("--json", action="store_true", help="print the raw JSON answers")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "container":
        from control_server.main import run_container

        return run_container(host=args.host, port=args.port, insecure=args.insecure)
    if args.cmd == "worker":
        from worker_api.main import run_worker

        return run_worker(host=args.host, port=args.port, db_path=args.db, containers=args.containers,
                          image=args.image, public_url=args.public_url)
    if args.cmd == "plugin":
        from plugin.server import run_plugin

        return run_plugin()
    if args.cmd == "git-credential":
        from plugin.credential import main as credential_main

        return credential_main(args.op)
    if args.cmd == "up":
        from gastown.cli.up import run_up

        return run_up(state_dir=str(state_dir(args.dir)), image=args.image)
    if args.cmd == "chat":
        return _chat(args)
    if args.cmd in ("agents", "logs", "town"):
        from gastown.cli.operator import run_operator

        return run_operator(f"town {args.town_cmd}" if args.cmd == "town" else args.cmd, args)
    return 2


def _chat(args: argparse.Namespace) -> int:
    """Flags, then the environment, then the local town's state file (whose token goes only to its
    own worker: with a URL given elsewhere, no token is read from the file)."""
    import os

    from gastown.cli.chat import run_chat
    from gastown.cli.localtown import TownState

    url = args.url or os.environ.get("GASTOWN_WORKER_URL")
    token = args.token or os.environ.get("GASTOWN_TOKEN")
    town = args.town or os.environ.get("GASTOWN_TOWN_ID")
    local = TownState.load(state_dir(args.dir)) if not (url and token and town) else None
    if local is not None and not url:
        url, token, town = local.worker_url, token or local.user_token or local.admin_token, town or local.town_id
    if not (url and token and town):
        print("gastown chat: give --url, --token and --town (or run it beside `gastown up`)", file=sys.stderr)
        return 2
    return run_chat(url, token, town)


if __name__ == "__main__":
    sys.exit(main())
