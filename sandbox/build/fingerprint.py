"""A fast "is the image still current?" check that needs no recipe parsing.

After every build the builder records the size and mtime of every input file
it could have read (all of recipes/, each `src` tree, the lock file) and the
image digest it produced. `sandbox up` asks `current_image` first: if no
input changed and the image is still in the store, it skips loading the
recipe at all. Any doubt falls back to a full (still cached) build check.
"""

from __future__ import annotations

import json
from pathlib import Path

from sandbox.fsutil import atomic_write, private_dir, tree_stats
from sandbox.workspace import Workspace

VERSION = 1


def _path(ws: Workspace, recipe: str) -> Path:
    return ws.state / "fingerprints" / f"{recipe}.json"


def record(ws: Workspace, recipe: str, inputs: list[Path], digest: str, formats: tuple[int, int]) -> None:
    tops = sorted({ws.recipes, *inputs})
    doc = {
        "version": VERSION,
        "formats": list(formats),
        "tops": [str(t) for t in tops],
        "stats": tree_stats(tops),
        "digest": digest,
    }
    path = _path(ws, recipe)
    private_dir(path.parent)  # paths and stats of the recipe's inputs: root's only
    atomic_write(path, json.dumps(doc, sort_keys=True).encode(), 0o600)


def current_image(ws: Workspace, recipe: str, formats: tuple[int, int]) -> str | None:
    """The digest of the last build of `recipe` if none of its inputs changed since, else None."""
    try:
        doc = json.loads(_path(ws, recipe).read_text())
    except (OSError, ValueError):
        return None
    if doc.get("version") != VERSION or doc.get("formats") != list(formats):
        return None
    if tree_stats(Path(t) for t in doc["tops"]) != doc["stats"]:
        return None
    digest = str(doc["digest"])
    manifest = ws.images / "manifests" / f"{digest.removeprefix('sha256:')}.json"
    return digest if manifest.is_file() else None
