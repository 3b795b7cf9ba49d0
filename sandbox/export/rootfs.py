"""The flattened root filesystem of an image: all layers applied, as one deterministic tar.

Layers are applied by the same checked unpacker the LXC backend uses (whiteouts,
opaque dirs, no path escapes), into a scratch dir, then written back with the
builder's deterministic tar writer: the same image always gives the same bytes.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sandbox.backends.unpack import unpack_image
from sandbox.build.normalize import add_tree
from sandbox.build.overlay import remove_tree
from sandbox.events import Event, EventSink
from sandbox.store import ImageStore
from sandbox.workspace import Workspace


@contextmanager
def flattened(ws: Workspace, store: ImageStore, digest: str) -> Iterator[Path]:
    """A scratch dir holding the image's root filesystem (ids unshifted), removed afterwards."""
    manifest = store.manifest(digest)
    ws.tmp.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=ws.tmp, prefix="flatten-"))
    try:
        root = scratch / "rootfs"
        root.mkdir()
        unpack_image([store.blob_path(layer["digest"]) for layer in manifest["layers"]], root)
        yield root
    finally:
        remove_tree(scratch)


def write_rootfs_tar(
    ws: Workspace, store: ImageStore, digest: str, out: IO[bytes], sink: EventSink, prefix: str = "./"
) -> int:
    """Write the flattened rootfs of `digest` to `out` (names under `prefix`); returns the entry count."""
    sde = int(store.manifest(digest)["created"])
    sink(Event("progress", phase="export", message=f"flattening {digest[7:19]}"))
    with (
        flattened(ws, store, digest) as root,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        index = add_tree(tar, root, sde, prefix=prefix)
    return len(index)


def export_tar(ws: Workspace, store: ImageStore, digest: str, path: Path, sink: EventSink) -> dict[str, Any]:
    with open(path, "wb") as f:
        entries = write_rootfs_tar(ws, store, digest, f, sink)
    return {"entries": entries}
