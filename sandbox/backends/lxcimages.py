"""The lxc backend's images: each unpacked once, shifted into root's subordinate id range.

`RUNTIME/rootfs/HEX-UIDSTART/rootfs` is the read-only lower dir every instance of that image
shares (overlayfs). Unpacking goes to a temp dir renamed into place under a lock, so concurrent
`up`s unpack an image once and a crash never leaves a half-unpacked image behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from sandbox.events import Event, EventSink
from sandbox.fsutil import file_lock, remove_tree
from sandbox.imageformats.unpack import unpack_image
from sandbox.store import ImageStore


def image_root(rootfs_dir: Path, digest: str, uid_start: int) -> Path:
    return rootfs_dir / f"{digest.removeprefix('sha256:')}-{uid_start}" / "rootfs"


def unpack_once(
    rootfs_dir: Path, store: ImageStore, digest: str, uid_start: int, gid_start: int, sink: EventSink
) -> Path:
    """The unpacked root of `digest`, unpacking it first if no one has."""
    root = image_root(rootfs_dir, digest, uid_start)
    if root.is_dir():
        return root
    root.parent.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(rootfs_dir / ".lock"):
        if root.is_dir():
            return root
        t0 = time.monotonic()
        sink(Event("progress", phase="up", message=f"unpacking image {digest[7:19]} (once per image)"))
        blobs = [store.blob_path(layer["digest"]) for layer in store.manifest(digest)["layers"]]
        tmp = Path(tempfile.mkdtemp(dir=rootfs_dir, prefix=f".unpack-{os.getpid()}-"))
        try:
            (tmp / "rootfs").mkdir()
            unpack_image(blobs, tmp / "rootfs", uid_start, gid_start)
            os.chmod(tmp, 0o755)
            os.rename(tmp, root.parent)
        except BaseException:
            remove_tree(tmp)
            raise
        sink(Event("log", phase="up", message=f"unpacked in {time.monotonic() - t0:.1f}s"))
    return root


def unpacked_digests(rootfs_dir: Path, uid_start: int) -> list[str]:
    """Digests of the images unpacked for this id range."""
    if not rootfs_dir.is_dir():
        return []
    return sorted(
        "sha256:" + p.name.rsplit("-", 1)[0]
        for p in rootfs_dir.iterdir()
        if p.is_dir() and p.name.endswith(f"-{uid_start}") and not p.name.startswith(".")
    )
