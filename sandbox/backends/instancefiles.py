"""What makes an instance itself, the same on every backend: its hostname, hosts and the env the app sees.

Backends with a filesystem of their own (lxc, lxd, libvirt) write `instance_files`; docker passes
`instance_env` as the container's environment. The env files use systemd's EnvironmentFile quoting,
which `parse_env_file` reads back (for `sandbox exec`, which runs with the app's environment).
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from sandbox.backends.base import BackendError, InstanceSpec
from sandbox.events import Event, EventSink
from sandbox.imageformats.hostfiles import host_files
from sandbox.saferoot import UnsafePath, lstat_in_root, read_in_root, write_in_root

APP_ENV_FILE = "etc/sandbox/app.env"  # the recipe's env, written by the build
INSTANCE_ENV_FILE = "etc/sandbox/instance.env"  # sandbox's and the profile's, written per instance


def instance_meta(d: Path) -> dict[str, str]:
    """What a backend recorded of an instance in its dir (`sandbox.json`: image, address, ...); {}
    when there is none."""
    try:
        data: dict[str, str] = json.loads((d / "sandbox.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def instance_env(spec: InstanceSpec) -> dict[str, str]:
    return {
        "SANDBOX_ENV": spec.env,
        "SANDBOX_INSTANCE": spec.name,
        "SANDBOX_IMAGE": spec.image,
        **spec.env_vars,
    }


def instance_files(spec: InstanceSpec) -> dict[str, str]:
    """Path relative to the instance's root → text."""
    env = instance_env(spec)
    return {
        **host_files(spec.name),
        INSTANCE_ENV_FILE: "".join(f'{k}="{quote_env(v)}"\n' for k, v in sorted(env.items())),
    }


def write_instance_files(root: Path, spec: InstanceSpec, uid: int, gid: int) -> None:
    """`instance_files` into the directory tree `root` (an instance's upper dir), owned by uid:gid.

    The tree belongs to the instance (a clone's or a restored snapshot's upper dir was written by
    container root): no link in it is followed, a link or FIFO at a file's name is replaced, and a
    parent that is not a plain directory is an error (saferoot)."""
    for rel, text in instance_files(spec).items():
        try:
            write_in_root(root, rel, text.encode(), file_mode(rel), uid, gid, parents=(0o755, uid, gid))
        except UnsafePath as e:
            raise BackendError(
                f"cannot write the instance file /{rel} of {spec.name}: {e.message}",
                hint="the instance (or the one it was cloned from) replaced a directory of it by a link "
                "or a file; remove that entry inside it, then retry",
            ) from e


def file_mode(rel: str) -> int:
    """instance.env holds the profile's env (secrets): root of the instance only (systemd reads it)."""
    return 0o600 if rel == INSTANCE_ENV_FILE else 0o644


def read_layered(layers: Sequence[Path], rel: str, what: str, sink: EventSink | None = None) -> bytes | None:
    """The file `rel` of an overlay of `layers` (upper first), read on the host side, or None.

    Each layer is read with saferoot's rules (no link followed, regular files only, 1 MiB at most,
    never blocking), so a file the instance planted cannot make sandbox read a host file. A
    whiteout in an upper layer hides the lower ones. A refused entry is skipped with a warning if
    `sink` is given, else it is a BackendError naming `what` (the instance).
    """
    for layer in layers:
        st = lstat_in_root(layer, rel)
        if st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None  # an overlayfs whiteout: deleted in the instance
        try:
            return read_in_root(layer, rel)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            return None
        except UnsafePath as e:
            if sink is None:
                raise BackendError(
                    f"cannot read /{rel} of {what}: {e.message}",
                    hint=f"replace /{rel} in {what} by a regular file (as root: sandbox exec {what} -- ...)",
                ) from e
            sink(Event("warning", phase="exec", message=f"{what}: ignored /{rel}: {e.message}"))
            return None
    return None


def quote_env(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_env_file(text: str) -> dict[str, str]:
    """KEY="value" lines as sandbox writes them (systemd EnvironmentFile quoting)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key or key.startswith("#"):
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        out[key.strip()] = value
    return out
