"""An overlayfs mount whose upper directory becomes the app layer.

While it is mounted, the overlay is registered with the id range its build commands run as
(`jailed`), so `rootfs.run_in_root` can run them in a jail on the same layers (see jail.py).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import BuildError
from sandbox.fsutil import unmount_all
from sandbox.subids import runtime_ids
from sandbox.workspace import Workspace

OPTIONS = "redirect_dir=off,metacopy=off"


@dataclass(frozen=True)
class Layers:
    """An overlay being built: its dirs and the host ids image root is shifted to in build commands."""

    lower: Path
    upper: Path
    scratch: Path
    merged: Path
    uid: int
    gid: int
    count: int

    def mount(self) -> None:
        opts = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.scratch},{OPTIONS}"
        p = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.merged)],
            capture_output=True,
            text=True,
            check=False,
        )
        if p.returncode != 0:
            raise BuildError(
                f"cannot mount overlayfs: {p.stderr.strip()}",
                hint="sandbox build needs root and a kernel with overlayfs (modprobe overlay)",
            )

    def unmount(self) -> None:
        p = subprocess.run(["umount", str(self.merged)], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise BuildError(f"cannot unmount {self.merged}: {p.stderr.strip()}")


_ACTIVE: dict[str, Layers] = {}


def build_ids(ws: Workspace) -> tuple[int, int, int]:
    """(uid start, gid start, count): the subordinate ids of the workspace's containers (hostsetup)."""
    uids, gids = runtime_ids(ws.runtime)
    return uids.start, gids.start, min(uids.count, gids.count)


def jailed(root: Path) -> Layers | None:
    """The overlay mounted at `root` by `overlay()`, if any."""
    return _ACTIVE.get(str(root))


@contextlib.contextmanager
def overlay(lower: Path, work: Path, ids: tuple[int, int, int]) -> Iterator[tuple[Path, Path]]:
    """Mount lower+upper at work/merged; yield (merged, upper); always unmount.

    `ids` = (uid start, gid start, count): the host ids that image ids 0.. become for commands run
    in it with `run_in_root` (the subordinate range of sandbox's containers).
    """
    upper, scratch, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, scratch, merged):
        d.mkdir(parents=True)
    layers = Layers(lower, upper, scratch, merged, *ids)
    layers.mount()
    _ACTIVE[str(merged)] = layers
    try:
        yield merged, upper
    finally:
        _ACTIVE.pop(str(merged), None)
        unmount_all(work)
