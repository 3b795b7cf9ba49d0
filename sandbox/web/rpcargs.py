"""The root side's checks of an RPC call's arguments: they come from the unprivileged HTTP side,
so each is checked again here (type, length, range, name rules); a bad one is a 400."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.config.names import ENV_NAME_RE
from sandbox.web.roles import User
from sandbox.web.rpcproto import RPCError


@dataclass(frozen=True)
class Call:
    """One authenticated call: its user (None for login, logout, hook), session, source, arguments."""

    user: User | None
    session: str | None
    source: str
    args: dict[str, Any]


def str_arg(args: Mapping[str, Any], key: str, limit: int = 1100) -> str:
    v = args.get(key)
    if not isinstance(v, str) or len(v) > limit:
        raise RPCError(400, f"argument {key!r} must be a string of at most {limit} characters")
    return v


def env_name_arg(args: Mapping[str, Any]) -> str:
    name = str_arg(args, "name", 60)
    if not re.fullmatch(ENV_NAME_RE, name):
        raise RPCError(400, f"invalid environment name {name[:60]!r}", hint="PROFILE or PROFILE-SUFFIX")
    return name


def whole_arg(args: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    """args[key] (default when absent): a JSON whole number from lo to hi, not a boolean."""
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise RPCError(400, f"{key} must be a whole number from {lo} to {hi}")
    return v
