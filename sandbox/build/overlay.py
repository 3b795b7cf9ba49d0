"""An overlayfs mount whose upper directory becomes the app layer."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sandbox.errors import BuildError
from sandbox.fsutil import unmount_all


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
