"""Kernel-side path resolution below a root directory fd, for sandbox/saferoot.py.

`openat2(2)` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS ("refuse") or RESOLVE_IN_ROOT ("in_root"),
never magic links; where openat2 is missing (ENOSYS, or EPERM from a seccomp filter), a component
walk with `openat(O_PATH | O_NOFOLLOW)` on directory fds that applies the same rules itself (links
read with `readlinkat` and resolved here, `..` popped from its own stack of fds, never asked of the
kernel). Errors are OSErrors (ELOOP for a refused link, EXDEV for an escape); saferoot turns them
into UnsafePath.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path
from typing import Literal

Links = Literal["refuse", "in_root"]

MAX_LINKS = 40

_SYS_OPENAT2 = 437  # the same number on every architecture since Linux 5.6
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
#: None: not probed yet; tests set it to False to exercise the fallback walk
use_openat2: bool | None = None


def _openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    tmpfile = getattr(os, "O_TMPFILE", 0)
    creates = flags & os.O_CREAT or (tmpfile and flags & tmpfile == tmpfile)
    how = _OpenHow(flags, mode if creates else 0, resolve)  # a mode without O_CREAT is EINVAL
    for _ in range(16):  # EAGAIN: a concurrent rename or mount; the kernel asks us to retry
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _have_openat2() -> bool:
    global use_openat2
    if use_openat2 is None:
        try:
            os.close(_openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_NO_MAGICLINKS))  # AT_FDCWD
            use_openat2 = True
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter that denies it
                raise
            use_openat2 = False
    return use_openat2


def path_parts(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p not in ("", ".")]


def open_root(root: Path) -> int:
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _walk(rootfd: int, root: Path, rel: str, flags: int, mode: int, links: Links) -> int:
    """The fallback resolver: openat(O_PATH|O_NOFOLLOW) per component, links resolved by us."""
    stack = [os.dup(rootfd)]
    parts = path_parts(rel)
    followed = 0
    try:
        while True:
            if not parts:  # the root itself
                return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
            part = parts.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                elif links == "refuse":
                    raise OSError(errno.EXDEV, "leaves the root", rel)
                continue
            last = not parts
            if last and flags & os.O_NOFOLLOW:
                return os.open(part, flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
            try:
                fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                if last and flags & os.O_CREAT:
                    return os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=stack[-1])
                raise
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(part, dir_fd=stack[-1])
                os.close(fd)
                followed += 1
                if links == "refuse" or followed > MAX_LINKS:
                    raise OSError(errno.ELOOP, "symbolic link", rel)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts = path_parts(target) + parts
                continue
            if not last:
                if not stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    raise OSError(errno.ENOTDIR, "not a directory", rel)
                stack.append(fd)
                continue
            os.close(fd)
            # the last component, opened for real; O_NOFOLLOW: a link swapped in meanwhile is ELOOP
            return os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def open_at(rootfd: int, root: Path, rel: str, flags: int, mode: int, links: Links) -> int:
    if _have_openat2():
        resolve = RESOLVE_NO_MAGICLINKS | (
            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS if links == "refuse" else RESOLVE_IN_ROOT
        )
        return _openat2(rootfd, "/".join(path_parts(rel)) or ".", flags | os.O_CLOEXEC, mode, resolve)
    return _walk(rootfd, root, rel, flags, mode, links)
