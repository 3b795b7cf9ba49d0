"""Working inside an image's root directory from the host, safely.

`resolve_in_root` follows symlinks the way a chroot would (absolute targets
are taken relative to the image root), so a symlink in the image can never
make sandbox write to the host; a path that climbs above the root through
`..` is refused. `run_in_root` runs a command chrooted into the image in a
private mount namespace with its own /proc, so nothing stays mounted.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sandbox.errors import BuildError
from sandbox.saferoot import Links, read_in_root

#: image roots at build time are read and written with chroot rules (saferoot's "in_root"): they
#: have usr-merge and absolute links, which resolve inside the image, never on the host
IN_ROOT: Links = "in_root"
ID_DB_LIMIT = 16 << 20
MAX_LINKS = 40
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
    host_dev: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `command` chrooted in `root`, in a private mount+pid namespace with /proc.

    With `host_dev`, the host's /dev is bind-mounted at the root's /dev (in that namespace only),
    for a root without device nodes (a flattened image) whose package scripts need /dev/null.
    """
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
    argv = [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        f"--mount-proc={root}/proc",
        *(
            ["/bin/sh", "-c", 'mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"']
            if host_dev
            else ["chroot"]
        ),
        str(root),
        *command,
    ]
    try:
        return subprocess.run(
            argv, env=base_env, input=input_text, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as e:
        raise BuildError(f"{e.filename} is not installed", hint="apt-get install util-linux coreutils") from e


def read_ids(root: Path, db: str) -> dict[str, tuple[int, int]]:
    """name → (id, primary gid) from the image's /etc/passwd or /etc/group (read with saferoot)."""
    out: dict[str, tuple[int, int]] = {}
    try:
        text = read_in_root(root, f"etc/{db}", ID_DB_LIMIT, links=IN_ROOT).decode(errors="replace")
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
    try:
        text = read_in_root(root, "etc/passwd", ID_DB_LIMIT, links=IN_ROOT).decode(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        f = line.split(":")
        if f[0] == user and len(f) >= 6:
            return f[5]
    return None
