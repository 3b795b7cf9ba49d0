"""Strict checks of production-host values: host names and SSH targets (pure, no pydantic).

An SSH target is `[USER@]HOST[:PORT]`, HOST being a name (or an alias of the user's ~/.ssh/config)
or an IPv4 address. Nothing that ssh could read as an option (a leading `-`), no spaces, quotes,
`%` tokens or control characters: the target ends up in an ssh argv, after `--`, never in a shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HOST_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
HOST_NAME_HINT = "lower-case letters, digits and '-', starting with a letter (at most 31), e.g. web1"
_USER = r"[a-z_][a-z0-9_.-]{0,31}"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
TARGET_RE = re.compile(rf"(?:(?P<user>{_USER})@)?(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?")
TARGET_HINT = "USER@HOST, USER@HOST:PORT or an alias of ~/.ssh/config, e.g. deploy@10.0.0.11"


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        s = f"{self.user}@{self.host}" if self.user else self.host
        return f"{s}:{self.port}" if self.port else s


def host_name(value: object) -> str:
    if not isinstance(value, str) or not HOST_NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name ({HOST_NAME_HINT})")
    return value


def ssh_target(value: object) -> SshTarget:
    """Parse `[USER@]HOST[:PORT]`; ValueError (naming the problem) for anything else."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an SSH target ({TARGET_HINT})")
    if value.startswith("-"):
        raise ValueError(f"{value!r} looks like an ssh option, not a target ({TARGET_HINT})")
    m = TARGET_RE.fullmatch(value)
    if m is None or ".." in m["host"]:
        raise ValueError(f"{value!r} is not an SSH target ({TARGET_HINT})")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is not 1-65535")
    return SshTarget(m["host"], m["user"], port)
