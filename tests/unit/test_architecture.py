"""The layering rules a tool can check: import-linter's contracts, and no use of another module's
private names (``sup._notify``, ``client._request``, ``from x import _y``)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("gastown", "supervisor", "control_server", "worker_api", "plugin")
# Private by Python convention, public by documentation.
STDLIB_PRIVATE = {("os", "_exit"), ("argparse", "_SubParsersAction")}


def private_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = ast.unparse(node.value)
            if owner not in ("self", "cls") and (owner, node.attr) not in STDLIB_PRIVATE:
                found.append(f"{node.lineno}: {owner}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_product_module_uses_another_objects_private_names():
    offenders = {}
    for pkg in PRODUCT:
        for path in sorted((REPO / pkg).rglob("*.py")):
            uses = private_uses(path.read_text())
            if uses:
                offenders[str(path.relative_to(REPO))] = uses
    assert offenders == {}


def test_the_private_name_check_sees_what_it_forbids():
    assert sorted(private_uses("sup._notify(rec)\nfrom a.b import _c\nself._ok()\nos._exit(0)\n")) == [
        "1: sup._notify", "2: from a.b import _c"]


def test_import_linter_contracts_hold():
    """Layers (cli > apps > contract > core), independent apps, no cycles inside a package."""
    lint = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout
