"""Normalization: a rootfs directory becomes a deterministic tar and a file index.

Same tree in, same bytes out: entries sorted by name, mtimes clamped to
SOURCE_DATE_EPOCH, numeric owners and no user/group names, no atime/ctime,
xattrs as sorted SCHILY.xattr PAX records. Machine-specific and volatile files
(machine-id, apt lists, logs, caches) are removed before the tar is written.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import IO

from sandbox.build.rootfs import IN_ROOT
from sandbox.imageformats.tartree import add_tree
from sandbox.saferoot import (
    UnsafePath,
    is_dir_in_root,
    lstat_in_root,
    open_in_root,
    read_in_root,
    remove_in_root,
    write_in_root,
)
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


def clean_rootfs(root: Path) -> None:
    """Remove machine-specific and volatile files from a rootfs, in place.

    Paths are resolved the way the image sees them (saferoot, chroot rules), so a symlink in the
    image (say etc/apt -> /etc/apt) can never make this touch the host.
    """
    for rel in REMOVE_FILES:
        st = lstat_in_root(root, rel, links=IN_ROOT)
        if st is not None and (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            remove_in_root(root, rel, links=IN_ROOT)
    for rel in EMPTY_DIRS:
        try:  # O_NOFOLLOW: a directory that is itself a link is left alone
            fd = open_in_root(root, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, links=IN_ROOT)
        except (OSError, UnsafePath):
            continue
        try:
            for _dirpath, _dirs, files, dir_fd in os.fwalk(dir_fd=fd):  # by fd: never follows a link
                for name in files:
                    os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(fd)
    if is_dir_in_root(root, "etc/apt", links=IN_ROOT):
        try:
            current: bytes | None = read_in_root(root, "etc/apt/sources.list", links=IN_ROOT)
        except (OSError, UnsafePath):
            current = None
        if current != SOURCES_NOTE:  # a link or anything else there is replaced
            write_in_root(root, "etc/apt/sources.list", SOURCES_NOTE, links=IN_ROOT)
    try:
        fd = open_in_root(root, "etc/apt/sources.list.d", os.O_RDONLY | os.O_DIRECTORY, links=IN_ROOT)
    except (OSError, UnsafePath):
        return
    try:
        for entry in os.scandir(fd):
            if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)


def write_layer(root: Path, out: IO[bytes], sde: int, *, overlay_upper: bool = False) -> Index:
    """Write `root` as a deterministic tar to `out`; return its file index.

    With `overlay_upper`, `root` is an overlayfs upper dir: whiteouts (char
    0/0) become `.wh.NAME` entries and opaque dirs get `.wh..wh..opq`, as in
    OCI layers; the index records them as "whiteout" and "opaque".
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        return add_tree(tar, root, sde, overlay_upper=overlay_upper)
