"""Unpack an image's layers into a directory, shifted into a user-namespace id range.

Archives are not trusted even though sandbox wrote them: every member path is
checked (no absolute paths, no `..`, no writing through a symlink), whiteouts
and opaque directories are applied as overlayfs/OCI define them, and device
nodes are skipped (the container runtime provides /dev).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from pathlib import Path

from sandbox.errors import StoreError

MAX_ID = 65535


class UnsafeArchive(StoreError):
    """A layer member tried to leave the target directory."""


def _member_path(name: str) -> str:
    rel = name.removeprefix("./").rstrip("/")
    if name.startswith("/") or any(p == ".." for p in rel.split("/")):
        raise UnsafeArchive(f"layer member {name!r} escapes the target directory")
    return "" if rel in ("", ".") else rel


def _safe_parent(root: Path, rel: str) -> Path:
    """root/rel's parent, refusing any symlinked component (nothing may be written through one)."""
    parent = root
    parts = rel.split("/")[:-1]
    for part in parts:
        parent = parent / part
        if parent.is_symlink():
            raise UnsafeArchive(f"layer member {rel!r} would be written through the symlink {part!r}")
    return parent


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path)


def _shift(value: int, offset: int) -> int:
    return (value if value <= MAX_ID else MAX_ID) + offset


def unpack_layer(blob: Path, root: Path, uid_offset: int = 0, gid_offset: int = 0) -> int:
    """Apply one layer tar onto `root`; returns the number of entries written."""
    count = 0
    with open(blob, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for ti in tar:
            rel = _member_path(ti.name)
            base = rel.rsplit("/", 1)[-1]
            if rel == "":
                os.chown(root, _shift(ti.uid, uid_offset), _shift(ti.gid, gid_offset))
                os.chmod(root, ti.mode & 0o7777)
                continue
            parent = _safe_parent(root, rel)
            if base == ".wh..wh..opq":
                for child in parent.iterdir():
                    _remove(child)
                continue
            if base.startswith(".wh."):
                _remove(parent / base[4:])
                continue
            path = parent / base
            if ti.isdir():
                if path.is_symlink() or (path.exists() and not path.is_dir()):
                    _remove(path)
                path.mkdir(exist_ok=True)
            else:
                if path.exists() or path.is_symlink():
                    _remove(path)
                if ti.isreg():
                    src = tar.extractfile(ti)
                    assert src is not None
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                elif ti.issym():
                    os.symlink(ti.linkname, path)
                elif ti.islnk():
                    target_rel = _member_path(ti.linkname)
                    target = _safe_parent(root, target_rel) / target_rel.rsplit("/", 1)[-1]
                    os.link(target, path, follow_symlinks=False)
                    count += 1
                    continue
                elif ti.isfifo():
                    os.mkfifo(path)
                else:  # char/block devices: the runtime mounts /dev
                    continue
            os.chown(path, _shift(ti.uid, uid_offset), _shift(ti.gid, gid_offset), follow_symlinks=False)
            if not ti.issym():
                os.chmod(path, ti.mode & 0o7777)
                os.utime(path, (ti.mtime, ti.mtime))
            count += 1
    return count


def unpack_image(blobs: list[Path], root: Path, uid_offset: int = 0, gid_offset: int = 0) -> int:
    """Stack all layers of an image into `root` (which must exist and be empty)."""
    total = 0
    for blob in blobs:
        total += unpack_layer(blob, root, uid_offset, gid_offset)
    return total


def is_setid(mode: int) -> bool:
    return bool(mode & (stat.S_ISUID | stat.S_ISGID))
