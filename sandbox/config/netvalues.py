"""Strict checks of the values that end up in generated configs (nginx, include headers).

Pure functions without pydantic: the profile schema wraps them (file:line errors at load), and the
router's renderer calls them again before templating (defense in depth: nothing that could carry
`;`, `{`, `}`, quotes, `#`, `$` or a newline ever reaches an nginx config). Each raises ValueError
with a message that names what is wrong; callers add the field.
"""

from __future__ import annotations

import ipaddress
import math
import re

# one nginx server name: a host name, a wildcard (*.example.com / example.*) or '_'
SERVER_NAME_RE = re.compile(r"[A-Za-z0-9_*][A-Za-z0-9_*.-]{0,252}")
SERVER_NAME_HINT = "one host name, e.g. app.example.com, *.example.com or '_' (any host)"
# a path nginx reads unquoted: no space, quote, ; { } # $ \ or control character
SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9._/+@%,:=~-]*")
SAFE_PATH_HINT = "letters, digits and . _ / + @ % , : = ~ - only (no spaces, quotes, ; { } # $ or newlines)"
NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def ipv4(value: object) -> str:
    """An IPv4 address in its canonical dotted form."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an IPv4 address")
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None
    if str(addr) != value:
        raise ValueError(f"{value!r} is not an IPv4 address in dotted form (e.g. {addr})")
    return value


def network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR (host bits may be set: 10.0.0.5/8 is 10.0.0.0/8)."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f.:/]{1,64}", value):
        raise ValueError(f"{value!r} is not an address or CIDR")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an address or CIDR") from None


def port(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port (1-65535)")
    return value


def backend(value: object) -> str:
    """ "IPV4:PORT", the form an upstream server takes."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not ADDRESS:PORT")
    addr, sep, p = value.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", p):
        raise ValueError(f"{value!r} is not ADDRESS:PORT")
    ipv4(addr)
    port(int(p))
    return value


def server_name(value: object) -> str:
    if not isinstance(value, str) or not SERVER_NAME_RE.fullmatch(value):
        raise ValueError(f"server_name {value!r} must be one nginx server name")
    return value


def safe_path(value: object) -> str:
    """An absolute path that nginx can read unquoted (and that stays on one line)."""
    text = str(value)
    if not SAFE_PATH_RE.fullmatch(text) or ".." in text.split("/"):
        raise ValueError(f"path {text!r} has characters a generated config cannot carry")
    return text


def single_line(value: object) -> str:
    """Free text that goes into a comment or a header: one line, no control characters."""
    if not isinstance(value, str) or CONTROL.search(value):
        raise ValueError(f"{value!r} must be one line without control characters")
    return value


def account(value: object) -> str:
    """A user or group name (nginx `user` directive)."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a user/group name")
    return value


def duration(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r} is not a duration in seconds")
    return float(value)
