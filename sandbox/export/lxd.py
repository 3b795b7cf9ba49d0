"""The lxd export: a unified LXD image tarball that `lxc image import` takes as is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.events import EventSink
from sandbox.imageformats.lxd import write_lxd_tarball
from sandbox.store import ImageStore
from sandbox.workspace import Workspace


def export_lxd(ws: Workspace, store: ImageStore, digest: str, path: Path, sink: EventSink) -> dict[str, Any]:
    with open(path, "wb") as f:
        info = write_lxd_tarball(store, digest, f, ws.tmp, sink)
    return {
        "architecture": info["metadata"]["architecture"],
        "entries": info["entries"],
        "import": "lxc image import FILE --alias NAME",
    }
