"""The base layer: mmdebstrap installs exactly the locked packages from a local repository."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from sandbox.build.argv import safe_arg
from sandbox.build.lock import Lock
from sandbox.errors import BuildError, ToolMissing
from sandbox.events import Event, EventSink

PGID_FILE = "mmdebstrap.pgid"
FILE_MIRROR_HOOK = "/usr/share/mmdebstrap/hooks/file-mirror-automount"


def mmdebstrap_argv(lock: Lock, target: Path, source_line: str) -> list[str]:
    """The mmdebstrap command for a locked base layer (pure)."""
    names = ",".join(safe_arg(p.name, "package name") for p in sorted(lock.packages, key=lambda p: p.name))
    return [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        f"--variant={safe_arg(lock.variant, 'variant')}",
        f"--architectures={safe_arg(lock.architecture, 'architecture')}",
        # dpkg's fsync per file is the bulk of an install; the result is written
        # and fsynced by sandbox itself, so it is safe to skip here
        "--dpkgopt=force-unsafe-io",
        f"--include={names}",
        f"--hook-dir={FILE_MIRROR_HOOK}",
        "--",  # operands only from here: a suite like --setup-hook=... is no option
        safe_arg(lock.suite, "suite"),
        safe_arg(str(target), "target"),
        safe_arg(source_line, "source"),
    ]


def _die_with_parent() -> None:
    # if sandbox is killed (even kill -9), mmdebstrap gets SIGTERM and cleans up its mounts
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_mmdebstrap(lock: Lock, target: Path, source_line: str, sink: EventSink) -> None:
    if shutil.which("mmdebstrap") is None:
        raise ToolMissing("mmdebstrap is not installed", hint="apt-get install mmdebstrap")
    argv = mmdebstrap_argv(lock, target, source_line)
    env = {
        **os.environ,
        "SOURCE_DATE_EPOCH": str(lock.source_date_epoch),
        "PYTHONHASHSEED": "0",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": str(target.parent),
    }
    tail: collections.deque[str] = collections.deque(maxlen=40)
    steps = [
        "running apt-get update",
        "downloading packages",
        "extracting archives",
        "installing essential packages",
        "installing remaining packages",
        "cleaning package lists",
    ]
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that all of it can be stopped
        preexec_fn=_die_with_parent,
    )
    (target.parent / PGID_FILE).write_text(f"{proc.pid}\n")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip()
            tail.append(line)
            if line.startswith("I: "):
                msg = line[3:]
                idx = next((i for i, s in enumerate(steps) if msg.startswith(s)), None)
                sink(
                    Event(
                        "progress",
                        phase="base",
                        message=msg,
                        current=None if idx is None else idx + 1,
                        total=len(steps),
                    )
                )
        proc.wait()
    except BaseException:
        stop_group(proc.pid, grace=20.0)
        raise
    if proc.returncode != 0:
        raise BuildError(
            f"mmdebstrap failed (exit {proc.returncode}):\n" + "\n".join(tail),
            hint="the lines above are mmdebstrap's own; `sandbox lock` re-resolves packages",
        )


def remove_mountpoint_dirs(rootfs: Path, repo: Path) -> None:
    """Remove the empty directories mmdebstrap's file-mirror hook made for `repo` in the rootfs.

    Only directories that are empty and owned by no package are removed, so
    /srv or /tmp stay even when the workspace lives below them.
    """
    owned: set[str] = set()
    for listing in (rootfs / "var/lib/dpkg/info").glob("*.list"):
        owned.update(listing.read_text(errors="replace").splitlines())
    p = repo
    while p != p.parent:
        host = rootfs / p.relative_to("/")
        if str(p) in owned or host.is_symlink() or not host.is_dir() or any(host.iterdir()):
            break
        host.rmdir()
        p = p.parent


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left; wait until it is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        if not _group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-pgid, os.WNOHANG)
            time.sleep(0.05)


def stop_leftover_mmdebstrap(workdir: Path) -> None:
    """Stop the mmdebstrap a dead build started in `workdir` (recorded by its process group id)."""
    try:
        pgid = int((workdir / PGID_FILE).read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    # the leader may be gone while dpkg/apt of its group still run; if it lives, it must be ours
    if cmdline and b"mmdebstrap" not in cmdline:
        return
    stop_group(pgid, grace=10.0)
