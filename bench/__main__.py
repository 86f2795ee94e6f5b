"""``python -m bench``: run every ``bench/*_bench.py`` in its own process; each prints JSON lines."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if m.name.endswith("_bench"))
    failed = 0
    for name in names:
        rc = subprocess.run([sys.executable, "-m", f"bench.{name}"], timeout=600).returncode
        if rc:
            print(f"bench.{name} failed with exit code {rc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
