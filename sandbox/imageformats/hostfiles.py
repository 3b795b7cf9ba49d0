"""The files that make an instance itself by name, the same on every backend and in the LXD tarball."""

from __future__ import annotations


def host_files(name: str) -> dict[str, str]:
    """/etc/hostname and /etc/hosts of an instance called `name` (path relative to its root → text)."""
    return {
        "etc/hostname": f"{name}\n",
        "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost ip6-localhost\n",
    }
