"""Working inside an image's root directory from the host, safely.

Files of the image are read and written through sandbox/saferoot.py with chroot rules
(`IN_ROOT`: links resolve inside the image, never on the host). `run_in_root` runs a command
chrooted into the image in a private mount namespace with its own /proc, so nothing stays mounted.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sandbox.errors import BuildError
from sandbox.saferoot import Links, read_in_root

#: image roots at build time are read and written with chroot rules (saferoot's "in_root"): they
#: have usr-merge and absolute links, which resolve inside the image, never on the host
IN_ROOT: Links = "in_root"
ID_DB_LIMIT = 16 << 20
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
