"""``python -m bench [NAME ...] [--out FILE]``: run every ``bench/*_bench.py`` in its own process and
print one JSON object per benchmark on stdout (progress goes to stderr).

Each module prints JSON lines; a module that prints one line per size (the reconciler) is folded into
one object. Benchmarks that measure a ratio in the same run report ``ratio`` and ``target``. After
every module the runner checks that no ``kilo serve`` it caused is still alive (kilo's env carries
``KILO_PARENT_PID``), kills any, and fails. ``NAME`` selects modules (``start``, ``hydration``, ...).
"""
from __future__ import annotations

import argparse
import json
import pkgutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

# Cheap, independent figures first; the kilo-heavy ones after.
ORDER = ["reconciler_bench", "snapshot_bench", "control_bench", "start_bench", "hydration_bench", "restart_bench"]
TARGETS = {"snapshot_64mb": "ratio <= 1.10 (vs put_object of the same bytes)"}
RECONCILER_TARGET_MS = 50.0


def discover() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.endswith("_bench")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def fold(module: str, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One object per benchmark: lines without a ``benchmark`` key (one per size) become one."""
    named = [dict(line) for line in lines if "benchmark" in line]
    for obj in named:
        if "target" not in obj and obj["benchmark"] in TARGETS:
            obj["target"] = TARGETS[obj["benchmark"]]
    sized = [line for line in lines if "benchmark" not in line]
    if sized:
        name = sized[0].get("bench") or module.removesuffix("_bench")
        obj: dict[str, Any] = {"benchmark": name}
        if name == "reconciler_tick":
            lite = [line for line in sized if line.get("engine", "sqlite") == "sqlite"] or sized
            by_size = {str(line["beads"]): line for line in lite}
            pg = {str(line["beads"]): line for line in sized if line.get("engine") == "postgresql"}
            ten_k = min(lite, key=lambda line: abs(line["beads"] - 10_000))
            obj.update({
                "tick_ms_median": {k: v["tick_ms_median"] for k, v in by_size.items()},
                "tick_ms_p95": {k: v["tick_ms_p95"] for k, v in by_size.items()},
                **({"postgresql_tick_ms_median": {k: v["tick_ms_median"] for k, v in pg.items()},
                    "postgresql_tick_ms_p95": {k: v["tick_ms_p95"] for k, v in pg.items()}} if pg else {}),
                "ratio": round(ten_k["tick_ms_median"] / RECONCILER_TARGET_MS, 2),
                "target": f"tick < {RECONCILER_TARGET_MS:.0f} ms at 10k beads (ratio = median / target)",
                "pass": ten_k["tick_ms_median"] < RECONCILER_TARGET_MS,
            })
        obj["runs"] = sized
        named.append(obj)
    return named


def kilos_of(pids: set[int]) -> list[psutil.Process]:
    """Live ``kilo serve`` processes whose ``KILO_PARENT_PID`` is one of ``pids`` (bench processes)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if not cmd or not cmd[0].endswith("/kilo") or "serve" not in cmd:
                continue
            parent = p.environ().get("KILO_PARENT_PID")
            if parent and int(parent) in pids and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, ValueError):
            continue
    return out


def run_module(name: str) -> tuple[int, list[dict[str, Any]], list[psutil.Process]]:
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}"], stdout=subprocess.PIPE, text=True)
    lines: list[dict[str, Any]] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            lines.append(obj)
        elif raw.strip():
            print(raw.rstrip(), file=sys.stderr)
    try:
        rc = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    left = kilos_of({proc.pid})
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    return rc, lines, left


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("names", nargs="*", help="modules to run (default: all), e.g. start hydration")
    ap.add_argument("--out", type=Path, help="also write the results to this file as a JSON list")
    args = ap.parse_args(argv)
    names = discover()
    if args.names:
        wanted = {n if n.endswith("_bench") else f"{n}_bench" for n in args.names}
        unknown = wanted - set(names)
        if unknown:
            ap.error(f"unknown benchmark(s): {sorted(unknown)}; known: {names}")
        names = [n for n in names if n in wanted]
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    failed = 0
    for name in names:
        t1 = time.monotonic()
        print(f"[bench] running bench.{name}", file=sys.stderr, flush=True)
        rc, lines, left = run_module(name)
        for obj in fold(name, lines):
            results.append(obj)
            print(json.dumps(obj), flush=True)
        if left:
            print(f"bench.{name} left kilo processes behind (killed): {[p.pid for p in left]}", file=sys.stderr)
            failed += 1
        if rc:
            print(f"bench.{name} failed with exit code {rc}", file=sys.stderr)
            failed += 1
        print(f"[bench] bench.{name} took {time.monotonic() - t1:.0f} s", file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"[bench] {len(results)} benchmarks in {time.monotonic() - t0:.0f} s"
          + (f", {failed} failures" if failed else ""), file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
