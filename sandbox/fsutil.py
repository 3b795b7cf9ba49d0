"""Small filesystem primitives shared by the store, the builder, the backends and state."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from sandbox.errors import SandboxError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Write `path` via a temp file in the same dir: fsync, rename, fsync dir.

    An interruption at any point leaves either the old file or the new one,
    never a partial file (only a `.tmp-*` that `ImageStore.clean` removes).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_file(path, mode) as f:
        f.write(data)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path.resolve()).rstrip("/")
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == prefix or mp.startswith(prefix + "/"):
                    found.append(mp)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def unmount_all(path: Path) -> None:
    """Unmount everything at or below `path`, deepest first (lazily if busy)."""
    for mp in mounts_under(path):
        if subprocess.run(["umount", mp], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever is mounted below `path` and refuses if it cannot."""
    if not path.exists():
        return
    unmount_all(path)
    left = mounts_under(path)
    if left:
        raise SandboxError(
            f"could not remove {path}: still mounted: {', '.join(left)}",
            hint=f"unmount them by hand (umount -l {left[0]}), then retry the command",
        )
    try:
        shutil.rmtree(path)
    except OSError as e:
        raise SandboxError(
            f"could not remove {path}: {e.strerror or e}",
            hint="check what holds files there (fuser -vm), then retry the command",
        ) from e


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited. A process that exited but is not reaped yet
    (a zombie) is not alive: a daemon such as nginx's master belongs to PID 1 once it detaches, and
    a PID 1 that reaps late (a test host's, seconds) or never (a container's without an init) would
    otherwise keep a stopped router "running" until the caller's timeout."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False  # reaped meanwhile
    except OSError:
        return True  # no /proc to tell: it exists
    # "PID (COMM) STATE ...": COMM may hold anything, even ") ", so the state follows the last ')'
    return stat[stat.rfind(b")") + 2 :][:1] != b"Z"


def tree_stats(paths: Iterable[Path]) -> dict[str, list[int]]:
    """(mtime_ns, size) of every file below `paths`, and an entry count per directory."""
    out: dict[str, list[int]] = {}
    for top in paths:
        if top.is_file():
            st = top.stat()
            out[str(top)] = [st.st_mtime_ns, st.st_size]
            continue
        for dirpath, dirs, files in os.walk(top):
            dirs.sort()
            out[dirpath] = [0, len(files) + len(dirs)]  # a new or removed file changes the count
            for name in sorted(files):
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                out[p] = [st.st_mtime_ns, st.st_size]
    return out


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created with its parents) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def private_dir(path: Path, mode: int = 0o700, gid: int | None = None) -> Path:
    """`path` (made with its parents) closed to other host users: `mode`, and group `gid` if given.

    0700 for what only sandbox (root) reads; 0710 with the containers' root group for a dir their
    root must traverse (lxc's rootfs and instance dirs) but no other host user may.
    """
    path.mkdir(parents=True, exist_ok=True)
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, mode)
    return path


#: a pipe's buffer while a blob streams through it
PIPE_SIZE = 1 << 20


def wide_pipe(fd: int) -> None:
    """A 1 MB pipe buffer on `fd` (when it is a pipe): 16 times fewer wake-ups than the default 64 KB
    while a blob streams through."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def pipe_through(
    argv: list[str], chunks: Iterable[bytes], take: Callable[[bytes], object]
) -> tuple[int, str, BaseException | None]:
    """Run the filter `argv` (zstd, say): a thread writes `chunks` into its stdin while this one
    gives each piece of its stdout to `take`, so both ends move at once. A filter that stops reading
    (it refused its input) still has `chunks` read through, to their end. Returns its exit code, its
    stderr, and what iterating `chunks` raised (or None); what `take` raises kills it and is raised."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    sink, source = proc.stdin, proc.stdout.fileno()
    wide_pipe(sink.fileno())
    wide_pipe(source)
    failed: list[BaseException] = []

    def feed() -> None:
        taking = True
        try:
            for chunk in chunks:
                if taking:
                    try:
                        sink.write(chunk)
                    except OSError:  # the filter stopped: what is left is still read through
                        taking = False
        except BaseException as e:
            failed.append(e)
        finally:
            with contextlib.suppress(OSError):
                sink.close()

    feeder = threading.Thread(target=feed, name=f"{argv[0]}-feed", daemon=True)
    feeder.start()
    try:
        while chunk := os.read(source, PIPE_SIZE):
            take(chunk)
    except BaseException:
        proc.kill()
        raise
    finally:
        feeder.join()
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        proc.wait()
    return proc.returncode, err, failed[0] if failed else None
