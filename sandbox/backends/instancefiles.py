"""What makes an instance itself, the same on every backend: its hostname, hosts and the env the app sees.

Backends with a filesystem of their own (lxc, lxd, libvirt) write `instance_files`; docker passes
`instance_env` as the container's environment. The env files use systemd's EnvironmentFile quoting,
which `parse_env_file` reads back (for `sandbox exec`, which runs with the app's environment).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sandbox.backends.base import InstanceSpec
from sandbox.imageformats.hostfiles import host_files

APP_ENV_FILE = "etc/sandbox/app.env"  # the recipe's env, written by the build
INSTANCE_ENV_FILE = "etc/sandbox/instance.env"  # sandbox's and the profile's, written per instance


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
    """`instance_files` into the directory tree `root` (an instance's upper dir), owned by uid:gid."""
    for rel, text in instance_files(spec).items():
        parent = root
        for part in rel.split("/")[:-1]:
            parent = parent / part
            if not parent.exists():
                parent.mkdir(mode=0o755)
                os.chown(parent, uid, gid)
        path = root / rel
        path.write_text(text)
        os.chown(path, uid, gid)
        os.chmod(path, file_mode(rel))


def file_mode(rel: str) -> int:
    """instance.env holds the profile's env (secrets): root of the instance only (systemd reads it)."""
    return 0o600 if rel == INSTANCE_ENV_FILE else 0o644


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
