"""Working inside an image's root directory from the host, safely.

Files of the image are read and written through sandbox/saferoot.py with chroot rules
(`IN_ROOT`: links resolve inside the image, never on the host). `run_in_root` runs a command in the
image, jailed (jail.py): shifted ids in a
user namespace, its own mount/pid/net namespaces, a minimal /dev, no path to the host.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from sandbox.build.overlay import jailed
from sandbox.errors import BuildError
from sandbox.saferoot import Links, read_in_root

#: image roots at build time are read and written with chroot rules (saferoot's "in_root"): they
#: have usr-merge and absolute links, which resolve inside the image, never on the host
IN_ROOT: Links = "in_root"
ID_DB_LIMIT = 16 << 20
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
JAIL = Path(__file__).with_name("jail.py")


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
