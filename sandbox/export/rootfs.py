"""The tar export: the flattened root filesystem of an image as one deterministic tar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.events import EventSink
from sandbox.imageformats.rootfs import write_rootfs_tar
from sandbox.store import ImageStore
from sandbox.workspace import Workspace


def export_tar(ws: Workspace, store: ImageStore, digest: str, path: Path, sink: EventSink) -> dict[str, Any]:
    with open(path, "wb") as f:
        entries = write_rootfs_tar(store, digest, f, ws.tmp, sink)
    return {"entries": entries}
