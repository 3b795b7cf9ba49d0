"""An overlayfs mount whose upper directory becomes the app layer."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sandbox.errors import BuildError
from sandbox.fsutil import mounts_under


@contextlib.contextmanager
def overlay(lower: Path, work: Path) -> Iterator[tuple[Path, Path]]:
    """Mount lower+upper at work/merged; yield (merged, upper); always unmount."""
    upper, scratch, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, scratch, merged):
        d.mkdir(parents=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={scratch},redirect_dir=off,metacopy=off"
    p = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode != 0:
        raise BuildError(
            f"cannot mount overlayfs: {p.stderr.strip()}",
            hint="sandbox build needs root and a kernel with overlayfs (modprobe overlay)",
        )
    try:
        yield merged, upper
    finally:
        unmount_all(work)


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
        raise BuildError(
            f"cannot remove {path}: still mounted: {', '.join(left)}",
            hint="unmount them by hand (umount -l), then run the build again",
        )
    shutil.rmtree(path)
