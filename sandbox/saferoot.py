"""The one safe path primitive: host-side reads and writes under an image root or an instance layer.

Everything below an image root or an instance's writable layer is controlled by whoever made the
image or runs in the instance, and may change while sandbox looks at it. Paths in it are therefore
resolved by the kernel relative to a directory fd of the root (`openat2(2)`), never by string
joining, and a path can never name anything outside that root:

- `links="refuse"` (instance layers, `sandbox exec`'s reads): no symbolic link is followed, in any
  component, and `..` may not climb above the root (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
  A write replaces a link in the last component (rename over it) instead of following it.
- `links="in_root"` (image roots at build time, which have usr-merge and absolute links): links
  are followed as a chroot would (`RESOLVE_IN_ROOT`): absolute targets start at the root, `..` at
  the root stays at the root. The last component of a write is still never followed.

Magic links (/proc/PID/fd/...) are never followed. Where openat2 is missing (ENOSYS) the same rules
are applied by a component walk with `openat(O_PATH | O_NOFOLLOW)` on directory fds, links read with
`readlinkat` and resolved by us, `..` popped from our own stack of fds (never asked of the kernel).

Reads open only regular files (checked on an O_PATH fd before the file is opened, so a FIFO, a
device or a socket is never opened), never block, and are bounded (`limit`, 1 MiB by default).
Writes go to a temp file in the parent directory's fd, then `renameat` over the name: atomic, and a
link, FIFO or device in the last component is replaced, never opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sandbox.errors import SandboxError
from sandbox.saferesolve import MAX_LINKS, open_at, open_root, path_parts
from sandbox.saferesolve import Links as Links  # the link modes, part of this module's API

READ_LIMIT = 1 << 20


class UnsafePath(SandboxError):
    """A path under an image root or instance layer that sandbox refuses to use from the host."""


def _show(rel: str) -> str:
    return "/" + "/".join(path_parts(rel))


def _refused(root: Path, rel: str, why: str) -> UnsafePath:
    return UnsafePath(
        f"{_show(rel)} in {root}: {why}",
        hint="sandbox never follows a link, opens a FIFO or device, or leaves the root when it reads or "
        "writes files of an image or an instance from the host; remove or replace that entry",
    )


def _translate(root: Path, rel: str, e: OSError) -> Exception:
    """ELOOP/EXDEV from a resolution: an UnsafePath; anything else unchanged (ENOENT stays ENOENT)."""
    if e.errno == errno.ELOOP:
        return _refused(root, rel, "a component is a symbolic link (or there are too many links)")
    if e.errno == errno.EXDEV:
        return _refused(root, rel, "the path leaves the root")
    return e


# -- resolution ---------------------------------------------------------------------------------


def open_in_root(root: Path, rel: str, flags: int, mode: int = 0o644, *, links: Links = "refuse") -> int:
    """An fd for `rel` below `root`, resolved so that it never leaves `root` (see the module doc).

    In "in_root" mode the last component is followed (inside the root) unless `flags` has O_NOFOLLOW.
    Raises UnsafePath for a refused link or an escape, OSError (FileNotFoundError...) otherwise.
    """
    rootfd = open_root(root)
    try:
        return open_at(rootfd, root, rel, flags, mode, links)
    except OSError as e:
        raise _translate(root, rel, e) from None
    finally:
        os.close(rootfd)


@contextlib.contextmanager
def _parent_dir(
    root: Path, rel: str, links: Links, create: tuple[int, int, int] | None
) -> Iterator[tuple[int, str]]:
    """(fd of the parent directory of `rel`, last name): with `create` (mode, uid, gid), missing
    parents are made (and only those get that owner)."""
    parts = path_parts(rel)
    if not parts or parts[-1] == "..":
        raise _refused(root, rel, "names no file")
    parent = "/".join(parts[:-1])
    if create is not None:
        fd = mkdirs_in_root(root, parent, *create, links=links)
    else:
        fd = open_in_root(root, parent, os.O_PATH | os.O_DIRECTORY, links=links)
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def mkdirs_in_root(
    root: Path, rel: str, mode: int = 0o755, uid: int | None = None, gid: int | None = None,
    *, links: Links = "refuse", _depth: int = 0,
) -> int:  # fmt: skip
    """`mkdir -p rel` below `root`; returns an O_PATH fd of the directory. Directories made here get
    `mode` and (if given) uid:gid; existing ones are left as they are (they must be directories)."""
    parts = path_parts(rel)
    rootfd = open_root(root)
    try:
        fd = os.dup(rootfd)
        for i, name in enumerate(parts):
            sub = "/".join(parts[: i + 1])
            try:
                nfd = open_at(rootfd, root, sub, os.O_PATH | os.O_DIRECTORY, 0, links)
            except FileNotFoundError:
                if name == "..":
                    raise
                made = True
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    made = False  # made meanwhile, or a link: the reopen below decides
                    if links == "in_root" and stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                        # a dangling link: make its target (inside the root), as mkdir -p in a chroot would
                        if _depth >= MAX_LINKS:
                            raise OSError(errno.ELOOP, "too many links", rel) from None
                        target = os.readlink(name, dir_fd=fd)
                        base = "" if target.startswith("/") else "/".join(parts[:i])
                        os.close(mkdirs_in_root(root, f"{base}/{target}", mode, uid, gid, links=links,
                                                _depth=_depth + 1))  # fmt: skip
                nfd = open_at(rootfd, root, sub, os.O_PATH | os.O_DIRECTORY, 0, links)
                if made:  # on the inode the fd holds, not by name (it may have been swapped)
                    if uid is not None and gid is not None:
                        os.chown(f"/proc/self/fd/{nfd}", uid, gid)
                    os.chmod(f"/proc/self/fd/{nfd}", mode)
            os.close(fd)
            fd = nfd
        return fd
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise _refused(root, rel, "a component is not a directory") from None
        raise _translate(root, rel, e) from None
    finally:
        os.close(rootfd)


# -- reads --------------------------------------------------------------------------------------


def _open_regular(root: Path, rel: str, links: Links) -> int:
    """A read-only fd of the regular file `rel`: checked on an O_PATH fd, then reopened through
    /proc/self/fd (the same inode, so nothing can be swapped in between)."""
    pfd = open_in_root(root, rel, os.O_PATH, links=links)
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise _refused(root, rel, f"it is {kind}")
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        st2 = os.fstat(fd)
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(st2.st_mode):
            os.close(fd)
            raise _refused(root, rel, "it changed while it was opened")
        return fd
    finally:
        os.close(pfd)


def read_in_root(root: Path, rel: str, limit: int = READ_LIMIT, *, links: Links = "refuse") -> bytes:
    """The content of the regular file `rel` below `root`, at most `limit` bytes (more is an error).

    FileNotFoundError if it (or a parent) does not exist; UnsafePath for a link (per `links`), a
    FIFO, a device, a socket, a directory, or a file over the limit.
    """
    fd = _open_regular(root, rel, links)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _refused(root, rel, f"it is larger than {limit} bytes")
    return data


def copy_out_of_root(root: Path, rel: str, dest: Path, limit: int, *, links: Links = "in_root") -> None:
    """Copy the regular file `rel` below `root` to the host path `dest` (at most `limit` bytes)."""
    fd = _open_regular(root, rel, links)
    with os.fdopen(fd, "rb") as src, open(dest, "wb") as out:
        left = limit
        while chunk := src.read(min(1 << 20, left + 1)):
            if len(chunk) > left:
                raise _refused(root, rel, f"it is larger than {limit} bytes")
            out.write(chunk)
            left -= len(chunk)


def lstat_in_root(root: Path, rel: str, *, links: Links = "refuse") -> os.stat_result | None:
    """The lstat of `rel` below `root` (its last component not followed), or None if it is absent
    or cannot be reached under the rules of `links`."""
    try:
        with _parent_dir(root, rel, links, None) as (dfd, name):
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except (OSError, UnsafePath):
        return None


def exists_in_root(root: Path, rel: str, *, links: Links = "in_root") -> bool:
    """Whether `rel` exists below `root`, following links only inside it."""
    try:
        os.close(open_in_root(root, rel, os.O_PATH, links=links))
    except (OSError, UnsafePath):
        return False
    return True


def is_dir_in_root(root: Path, rel: str, *, links: Links = "in_root") -> bool:
    """Whether `rel` below `root` is a directory (following links only inside it, per `links`)."""
    try:
        os.close(open_in_root(root, rel, os.O_PATH | os.O_DIRECTORY, links=links))
    except (OSError, UnsafePath):
        return False
    return True


def list_in_root(root: Path, rel: str, *, links: Links = "in_root") -> list[str]:
    """The names in directory `rel` below `root`; [] if it is absent or not a directory."""
    try:
        fd = open_in_root(root, rel, os.O_RDONLY | os.O_DIRECTORY, links=links)
    except (OSError, UnsafePath):
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


# -- writes -------------------------------------------------------------------------------------


def write_in_root(
    root: Path,
    rel: str,
    data: bytes | IO[bytes],
    mode: int = 0o644,
    uid: int | None = None,
    gid: int | None = None,
    *,
    links: Links = "refuse",
    parents: tuple[int, int, int] | None = None,
) -> None:
    """Write `rel` below `root` atomically (temp file + renameat in the parent's fd).

    Whatever `rel` was (a file, a link, a FIFO, a device) is replaced, never opened; a directory
    there is an error. `data` is bytes or a binary file to copy. `parents` (mode, uid, gid): make
    missing parent directories with that mode and owner; without it a missing parent is an error.
    """
    with _parent_dir(root, rel, links, parents) as (dfd, name):
        tmp = f".sbx-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)  # fmt: skip
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, bytes | bytearray):
                    f.write(data)
                else:
                    while chunk := data.read(1 << 20):
                        f.write(chunk)
                f.flush()
                if uid is not None and gid is not None:
                    os.fchown(f.fileno(), uid, gid)
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            try:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except IsADirectoryError:
                raise _refused(root, rel, "it is a directory") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def symlink_in_root(
    root: Path, rel: str, target: str, uid: int | None = None, gid: int | None = None,
    *, links: Links = "refuse", parents: tuple[int, int, int] | None = None,
) -> None:  # fmt: skip
    """Make `rel` below `root` a symlink to `target` (replacing a file or link there, atomically).

    The target is stored as given and never resolved on the host."""
    with _parent_dir(root, rel, links, parents) as (dfd, name):
        tmp = f".sbx-{os.getpid()}-{secrets.token_hex(4)}"
        os.symlink(target, tmp, dir_fd=dfd)
        try:
            if uid is not None and gid is not None:
                os.chown(tmp, uid, gid, dir_fd=dfd, follow_symlinks=False)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:
            os.unlink(tmp, dir_fd=dfd)
            raise _refused(root, rel, "it is a directory") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def remove_in_root(root: Path, rel: str, *, links: Links = "refuse") -> bool:
    """Remove the non-directory `rel` below `root` (a link itself, not its target); False if absent."""
    try:
        with _parent_dir(root, rel, links, None) as (dfd, name):
            os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return False
    return True


def set_owner_in_root(
    root: Path, rel: str, mode: int, uid: int, gid: int, *, links: Links = "refuse"
) -> None:
    """chown/chmod the directory or regular file `rel` (never through a link, never a link itself)."""
    fd = open_in_root(root, rel, os.O_PATH | os.O_NOFOLLOW, links=links)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise _refused(root, rel, "it is not a directory or a regular file")
        proc = f"/proc/self/fd/{fd}"  # chown/chmod on the inode the fd holds, no lookup by name
        os.chown(proc, uid, gid)
        os.chmod(proc, mode)
    finally:
        os.close(fd)
