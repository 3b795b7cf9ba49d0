"""The flattened root filesystem of an image: all layers applied, as one deterministic tar.

Layers are applied by the same checked unpacker the lxc backend uses (whiteouts,
opaque dirs, no path escapes), into a scratch dir, then written back with the
builder's deterministic tar writer: the same image always gives the same bytes.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sandbox.events import Event, EventSink
from sandbox.fsutil import remove_tree
from sandbox.imageformats.tartree import add_tree
from sandbox.imageformats.unpack import unpack_image
from sandbox.store import ImageStore


@contextmanager
def flattened(store: ImageStore, digest: str, tmp: Path) -> Iterator[Path]:
    """A scratch dir below `tmp` holding the image's root filesystem (ids unshifted), removed afterwards."""
    manifest = store.manifest(digest)
    tmp.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=tmp, prefix="flatten-"))
    try:
        root = scratch / "rootfs"
        root.mkdir()
        unpack_image([store.blob_path(layer["digest"]) for layer in manifest["layers"]], root)
        yield root
    finally:
        remove_tree(scratch)


def write_rootfs_tar(
    store: ImageStore, digest: str, out: IO[bytes], tmp: Path, sink: EventSink, prefix: str = "./"
) -> int:
    """Write the flattened rootfs of `digest` to `out` (names under `prefix`); returns the entry count."""
    sde = int(store.manifest(digest)["created"])
    sink(Event("progress", phase="export", message=f"flattening {digest[7:19]}"))
    with (
        flattened(store, digest, tmp) as root,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        index = add_tree(tar, root, sde, prefix=prefix)
    return len(index)
