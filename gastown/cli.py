"""The ``gastown`` command: one entry point, one subcommand per long-running role."""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gastown", description="Gas Town container runtime")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("container", help="control server + agent supervisor (in-container process)")
    c.add_argument("--host", default="0.0.0.0")
    c.add_argument("--port", type=int, default=8080)
    c.add_argument("--insecure", action="store_true", help="allow running without GASTOWN_CONTROL_TOKEN")

    w = sub.add_parser("worker", help="worker API (control plane) with its reconcilers")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8787)
    w.add_argument("--db", default=None, help="SQLite file (default: ./.gastown/worker.db)")

    sub.add_parser("plugin", help="MCP stdio server with the gt_* tools (spawned by kilo)")

    u = sub.add_parser("up", help="run a whole local town: S3 store + worker + container")
    u.add_argument("--dir", default=".gastown/town", help="state directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "container":
        from control_server.main import run_container

        return run_container(host=args.host, port=args.port, insecure=args.insecure)
    if args.cmd == "worker":
        from worker_api.main import run_worker

        return run_worker(host=args.host, port=args.port, db_path=args.db)
    if args.cmd == "plugin":
        from plugin.server import run_plugin

        return run_plugin()
    if args.cmd == "up":
        from gastown.up import run_up

        return run_up(state_dir=args.dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
