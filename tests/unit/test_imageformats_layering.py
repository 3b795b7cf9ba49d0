"""imageformats sits below the backends and `image export`: it imports none of the layers above it.

Static (ast): every import in the package, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sandbox

ROOT = Path(sandbox.__file__).parent
#: what sandbox.imageformats may import from sandbox
ALLOWED = {"store", "fsutil", "saferoot", "errors", "events", "workspace", "config", "imageformats"}


def sandbox_imports(package: str) -> dict[str, set[str]]:
    """Module file → the top-level sandbox modules/packages it imports."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                names = ["sandbox.imageformats"]  # relative: inside the package
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            found |= {n.split(".")[1] for n in names if n.startswith("sandbox.")}
            if isinstance(node, ast.ImportFrom) and node.module == "sandbox":
                found |= {a.name for a in node.names}
        out[str(path.relative_to(ROOT))] = found
    return out


def test_imageformats_imports_only_the_layers_below_it() -> None:
    found = sandbox_imports("imageformats")
    assert found, "the package has modules"
    bad = {mod: sorted(names - ALLOWED) for mod, names in found.items() if names - ALLOWED}
    assert bad == {}


def test_backends_import_neither_build_nor_export_and_export_not_backends() -> None:
    backends = set().union(*sandbox_imports("backends").values())
    export = set().union(*sandbox_imports("export").values())
    build = set().union(*sandbox_imports("build").values())
    assert not backends & {"build", "export", "envs", "promote", "routing", "cli"}
    assert "backends" not in export
    assert not build & {"backends", "export"}
