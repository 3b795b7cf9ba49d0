"""Working inside an image's root directory from the host, safely.

`resolve_in_root` follows symlinks the way a chroot would (absolute targets
are taken relative to the image root), so a symlink in the image can never
make sandbox write to the host; a path that climbs above the root through
`..` is refused. `run_in_root` runs a command in the image, jailed (jail.py): shifted ids in a
user namespace, its own mount/pid/net namespaces, a minimal /dev, no path to the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sandbox.build.overlay import jailed
from sandbox.errors import BuildError

MAX_LINKS = 40
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
JAIL = Path(__file__).with_name("jail.py")


class RootEscape(BuildError):
    """A path would leave the image root."""


def resolve_in_root(root: Path, dest: str) -> Path:
    """Host path for image path `dest`, resolving symlinks relative to `root`.

    The last component is not followed if it is a symlink (callers replace it).
    """
    parts = [p for p in dest.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not resolved:
                raise RootEscape(f"{dest} climbs above the image root")
            resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if parts and candidate.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise RootEscape(f"{dest}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            target_parts = [p for p in target.split("/") if p not in ("", ".")]
            # a relative link that climbs above the root is an escape, not a clamp
            depth = len(resolved)
            for tp in target_parts:
                depth += -1 if tp == ".." else 1
                if depth < 0:
                    raise RootEscape(
                        f"{dest}: symlink /{'/'.join([*resolved, part])} -> {target} "
                        "points outside the image root"
                    )
            parts = target_parts + parts
            continue
        resolved.append(part)
    path = root.joinpath(*resolved)
    if not resolved:
        return root
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(path.parent)
    if os.path.commonpath([real_root, real_parent]) != real_root:
        raise RootEscape(f"{dest} resolves outside the image root")
    return path


def run_in_root(
    root: Path,
    command: list[str],
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    *,
    network: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `command` in the image being built at `root` (an `overlay()` mount), jailed.

    The command runs as the image's root shifted to sandbox's subordinate ids, in its own user,
    mount, pid, ipc, uts and (unless `network`) net namespaces, pivoted into the image with a
    minimal /dev (see jail.py): whatever it does, it can change only the image.
    """
    layers = jailed(root)
    if layers is None:
        raise BuildError(
            f"{root} is not an image being built: build commands run only in a build overlay",
            hint="this is a bug in sandbox",
        )
    base_env = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "PYTHONHASHSEED": "0",
        "TERM": "dumb",
    }
    base_env.update(env or {})
    stage = Path(tempfile.mkdtemp(dir=layers.upper.parent.parent, prefix=".jail-"))
    spec = {
        "lower": str(layers.lower),
        "upper": str(layers.upper),
        "work": str(layers.scratch),
        "stage": str(stage),
        "uid": layers.uid,
        "gid": layers.gid,
        "count": layers.count,
        "network": network,
        "argv": command,
        "env": base_env,
    }
    layers.unmount()  # one overlay instance per upper dir at a time
    try:
        return subprocess.run(
            [sys.executable, "-I", str(JAIL), json.dumps(spec)],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        # only empty mount points are left (the jail's mounts lived in its own mount namespace);
        # rmdir, never rm -r: a mount point that is not empty is left alone
        for d in (*(stage / n for n in ("lower", "layers", "root")), stage):
            with contextlib.suppress(OSError):
                d.rmdir()
        layers.mount()


def read_ids(root: Path, db: str) -> dict[str, tuple[int, int]]:
    """name → (id, primary gid) from the image's /etc/passwd or /etc/group."""
    out: dict[str, tuple[int, int]] = {}
    try:
        text = (root / "etc" / db).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 4 and f[2].isdigit():
            gid = int(f[3]) if db == "passwd" and f[3].isdigit() else int(f[2])
            out[f[0]] = (int(f[2]), gid)
    return out


def home_of(root: Path, user: str) -> str | None:
    """The home directory of `user` in the image's /etc/passwd."""
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user and len(f) >= 6:
            return f[5]
    return None
