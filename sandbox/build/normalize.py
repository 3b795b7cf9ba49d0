"""Normalization: a rootfs directory becomes a deterministic tar and a file index.

Same tree in, same bytes out: entries sorted by name, mtimes clamped to
SOURCE_DATE_EPOCH, numeric owners and no user/group names, no atime/ctime,
xattrs as sorted SCHILY.xattr PAX records. Machine-specific and volatile files
(machine-id, apt lists, logs, caches) are removed before the tar is written.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import IO

from sandbox.build.rootfs import RootEscape, resolve_in_root
from sandbox.imageformats.tartree import add_tree
from sandbox.store.layers import Index

# files removed from every layer: machine identity, volatile caches, build leftovers
REMOVE_FILES = (
    "etc/machine-id",
    "var/lib/dbus/machine-id",
    "etc/hostname",
    "etc/resolv.conf",
    "var/cache/ldconfig/aux-cache",
    "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
    "var/lib/dpkg/available-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/debconf/passwords.dat-old",
    "root/.bash_history",
    "root/.wget-hsts",
    "root/.python_history",
)
# directories whose files are removed (the directories stay, with their owners)
EMPTY_DIRS = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/log",
    "tmp",
    "var/tmp",
    "root/.cache",
    "var/lib/systemd/catalog",
)
SOURCES_NOTE = b"# Packages of this image come from its sandbox recipe and lock file.\n"


def _inside(root: Path, rel: str) -> Path | None:
    """Host path of image path `rel` with symlinks resolved inside the image; None if it escapes."""
    try:
        return resolve_in_root(root, rel)
    except RootEscape:
        return None


def clean_rootfs(root: Path) -> None:
    """Remove machine-specific and volatile files from a rootfs, in place.

    Paths are resolved the way the image sees them, so a symlink in the image
    (say etc/apt -> /etc/apt) can never make this touch the host.
    """
    for rel in REMOVE_FILES:
        p = _inside(root, rel)
        if p is not None and (p.is_symlink() or p.is_file()):
            p.unlink()
    for rel in EMPTY_DIRS:
        d = _inside(root, rel)
        if d is None or d.is_symlink() or not d.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(d):  # os.walk does not follow symlinked dirs
            for name in files:
                os.unlink(os.path.join(dirpath, name))
    sources = _inside(root, "etc/apt/sources.list")
    if sources is not None and sources.parent.is_dir() and not sources.parent.is_symlink():
        if sources.is_symlink():
            sources.unlink()
        if not sources.is_file() or sources.read_bytes() != SOURCES_NOTE:
            sources.write_bytes(SOURCES_NOTE)
    parts = _inside(root, "etc/apt/sources.list.d/x")
    if parts is not None and parts.parent.is_dir() and not parts.parent.is_symlink():
        for extra in parts.parent.iterdir():
            if extra.is_symlink() or extra.is_file():
                extra.unlink()


def write_layer(root: Path, out: IO[bytes], sde: int, *, overlay_upper: bool = False) -> Index:
    """Write `root` as a deterministic tar to `out`; return its file index.

    With `overlay_upper`, `root` is an overlayfs upper dir: whiteouts (char
    0/0) become `.wh.NAME` entries and opaque dirs get `.wh..wh..opq`, as in
    OCI layers; the index records them as "whiteout" and "opaque".
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        return add_tree(tar, root, sde, overlay_upper=overlay_upper)
