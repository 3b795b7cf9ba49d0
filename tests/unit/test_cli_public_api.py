"""The CLI uses only the core's public API: no `obj._private` of another object, no core module's
`_private` import (the env service, the promotion and the state change behind that API)."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "sandbox" / "cli"


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("sandbox.cli"):
            found += [
                f"{path.name}:{node.lineno} import {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return found


def test_the_cli_touches_no_private_name_of_the_core() -> None:
    files = sorted(CLI.glob("*.py"))
    assert len(files) >= 5
    assert [u for f in files for u in _private_uses(f)] == []


def test_the_check_finds_a_private_use(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from sandbox.envs.diff import _flatten\nx = envs._app('d')\n")
    assert _private_uses(bad) == ["bad.py:1 import _flatten", "bad.py:2 ._app"]
