"""A directory tree into an open tar, deterministically: the writer of layers and flattened images.

Same tree in, same bytes out: entries sorted by name, mtimes clamped to SOURCE_DATE_EPOCH,
numeric owners and no user/group names, no atime/ctime, xattrs as sorted SCHILY.xattr PAX
records. The builder writes layers with it (build/normalize.py); the rootfs and LXD formats
write flattened images with it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sandbox.imageformats.tools import ImageFormatError
from sandbox.store.layers import Index


def walk_sorted(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) depth-first in byte order of names (like tar --sort=name)."""
    st = os.lstat(root / rel if rel else root)
    yield rel, st
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(root / rel if rel else root), key=os.fsencode):
            yield from walk_sorted(root, f"{rel}/{name}" if rel else name)


class _HashingReader:
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _xattrs(path: Path) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        if name.startswith("trusted.overlay.") or name == "security.selinux":
            continue
        value = os.getxattr(path, name, follow_symlinks=False)
        out["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return out


def add_tree(
    tar: tarfile.TarFile, root: Path, sde: int, *, overlay_upper: bool = False, prefix: str = "./"
) -> Index:
    """Add `root` to an open tar, deterministically, member names under `prefix` (see write_layer)."""
    index: Index = {}
    seen_inodes: dict[tuple[int, int], str] = {}
    for rel, st in walk_sorted(root):
        path = root / rel if rel else root
        key = "/" + rel
        name = prefix + rel if rel or prefix == "./" else prefix.rstrip("/")
        ti = tarfile.TarInfo(name)
        ti.mtime = min(int(st.st_mtime), sde)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        entry: dict[str, Any] = {"mode": f"{ti.mode:04o}", "uid": st.st_uid, "gid": st.st_gid}
        m = st.st_mode
        if overlay_upper and stat.S_ISCHR(m) and st.st_rdev == 0:
            parent, _, base = rel.rpartition("/")
            wh = tarfile.TarInfo(prefix + (parent + "/" if parent else "") + ".wh." + base)
            wh.mtime, wh.mode, wh.uname, wh.gname = ti.mtime, 0, "", ""
            tar.addfile(wh)
            index[key] = {"type": "whiteout"}
            continue
        if overlay_upper and path.name.startswith(".wh.") and rel:
            raise ImageFormatError(
                f"{key}: a file whose name starts with .wh. would be read as a whiteout in the layer",
                hint="rename it (in the recipe's files: or the command that made it)",
            )
        ti.pax_headers = _xattrs(path)
        if stat.S_ISDIR(m):
            ti.type = tarfile.DIRTYPE
            entry["type"] = "dir"
            tar.addfile(ti)
            if overlay_upper and _is_opaque(path):
                entry["opaque"] = True
                opq = tarfile.TarInfo(name.rstrip("/") + "/.wh..wh..opq")
                opq.mtime, opq.mode, opq.uname, opq.gname = ti.mtime, 0, "", ""
                tar.addfile(opq)
        elif stat.S_ISREG(m):
            ino = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and ino in seen_inodes:
                first = seen_inodes[ino]
                ti.type = tarfile.LNKTYPE
                ti.linkname = prefix + first.lstrip("/")
                tar.addfile(ti)
                entry.update({k: index[first][k] for k in ("type", "size", "sha256")})
                entry["hardlink"] = first
            else:
                if st.st_nlink > 1:
                    seen_inodes[ino] = key
                ti.size = st.st_size
                # O_NOFOLLOW|O_NONBLOCK: the entry lstat saw as a regular file, never a link or FIFO
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise ImageFormatError(f"{key} changed while the layer was written")
                with os.fdopen(fd, "rb") as f:
                    reader = _HashingReader(f)
                    tar.addfile(ti, reader)
                entry.update({"type": "file", "size": st.st_size, "sha256": reader.h.hexdigest()})
        elif stat.S_ISLNK(m):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(path)
            tar.addfile(ti)
            entry.update({"type": "symlink", "target": ti.linkname})
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            tar.addfile(ti)
            entry.update({"type": "char" if stat.S_ISCHR(m) else "block", "dev": [ti.devmajor, ti.devminor]})
        elif stat.S_ISFIFO(m):
            ti.type = tarfile.FIFOTYPE
            tar.addfile(ti)
            entry["type"] = "fifo"
        else:  # sockets do not belong in an image
            continue
        index[key] = entry
    return index


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False
