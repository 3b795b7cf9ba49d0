"""The pure renderer of router configs: RouterConfig → nginx.conf (an nginx of the env's own) or
include files (a system nginx). Both share the pieces http.j2 (the env's upstream and server) and
stream.j2 (its forwarded ports). No I/O but reading the templates.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.config import netvalues
from sandbox.config.names import ENV_NAME_RE
from sandbox.routing.nginx import RouterError

TEMPLATES = Path(__file__).parent / "templates"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"  # Debian's libnginx-mod-stream
# Debian's libnginx-mod-http-lua (and the ndk module it needs, loaded first): the env's balancer
LUA_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so")
MAINTENANCE_PAGE = (
    "<!doctype html><title>Back soon</title><h1>We are updating</h1>"
    "<p>This site is being updated and will be back in a moment.</p>\n"
)
READONLY_BODY = "read-only for a moment: try again shortly\n"
MAX_ALLOW = 256  # allowlist entries the control socket takes (templates/control.j2)


@dataclass(frozen=True)
class PortForward:
    """A profile port: address:host on the host → container port of every routed instance."""

    address: str
    host: int
    proto: str
    backends: tuple[str, ...]


#: the account nginx's workers run as on a router host (Debian's nobody:nogroup)
ROUTER_USER, ROUTER_GROUP = "nobody", "nogroup"


@dataclass(frozen=True)
class RouterConfig:
    env: str
    listen: str
    port: int
    server_name: str
    backends: tuple[str, ...]  # "ADDR:PORT"
    drain_timeout: float = 30.0
    maintenance: tuple[str, ...] | None = None  # None: off; else the addresses that still get through
    readonly: bool = False
    ports: tuple[PortForward, ...] = ()
    #: the backends are on other machines (production hosts): no idle upstream connection is kept, so
    #: a request never waits on a connection to a host that died (a new one fails to connect within
    #: the connect timeout, and nginx tries another backend: safe for any method, nothing was sent)
    remote: bool = False


@functools.cache
def _jinja() -> Any:
    """The templates' environment. No bytecode cache on disk: compiling the four templates takes
    about 7 ms, and root must never load compiled code from a directory that the calling user's
    environment (XDG_CACHE_HOME, HOME) chose."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined  # only when a config is written

    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def _refuse(field: str, problem: str) -> RouterError:
    return RouterError(
        f"router config refused: {field}: {problem}",
        hint="a value that could change the nginx config's structure never reaches it; fix the profile "
        "(or the command's arguments)",
    )


def check_config(cfg: RouterConfig, **extra: Any) -> None:
    """Refuse any value that is not what its field must be, before anything is templated.

    The profile schema checks the same at load; this is the second line: whatever reaches the
    renderer (from the state DB, a CLI option, a future caller) is checked again. `extra` are
    further values of the render call (prefix, workspace: paths; user, group: account names).
    """

    def check(field: str, fn: Any, value: Any) -> None:
        try:
            fn(value)
        except ValueError as e:
            raise _refuse(field, str(e)) from None

    if not isinstance(cfg.env, str) or not re.fullmatch(ENV_NAME_RE, cfg.env):
        raise _refuse("env", f"{cfg.env!r} is not an environment name")
    check("listen", netvalues.ipv4, cfg.listen)
    check("port", netvalues.port, cfg.port)
    check("server_name", netvalues.server_name, cfg.server_name)
    check("drain_timeout", netvalues.duration, cfg.drain_timeout)
    for i, b in enumerate(cfg.backends):
        check(f"backends[{i}]", netvalues.backend, b)
    if cfg.maintenance is not None and not isinstance(cfg.maintenance, tuple | list):
        raise _refuse("maintenance", f"{cfg.maintenance!r} is not None or a list of addresses/CIDRs")
    for i, a in enumerate(cfg.maintenance or ()):
        check(f"maintenance[{i}]", netvalues.network, a)
    if len(cfg.maintenance or ()) > MAX_ALLOW:
        raise _refuse("maintenance", f"{len(cfg.maintenance or ())} addresses: at most {MAX_ALLOW}")
    if not isinstance(cfg.readonly, bool):
        raise _refuse("readonly", f"{cfg.readonly!r} is not true or false")
    for i, p in enumerate(cfg.ports):
        check(f"ports[{i}].address", netvalues.ipv4, p.address)
        check(f"ports[{i}].host", netvalues.port, p.host)
        if p.proto not in ("tcp", "udp"):
            raise _refuse(f"ports[{i}].proto", f"{p.proto!r} is not tcp or udp")
        for j, b in enumerate(p.backends):
            check(f"ports[{i}].backends[{j}]", netvalues.backend, b)
    for field, value in extra.items():
        check(field, netvalues.account if field in ("user", "group") else netvalues.safe_path, value)


def mode_lines(maintenance: Sequence[str] | None, readonly: bool) -> list[str]:
    """The env's mode as the control socket's `PUT /mode` lines (pure): `maintenance on|off`, one
    `allow NETWORK` per allowed address (canonical CIDR: 10.0.0.5 is 10.0.0.5/32, 10.1.2.3/8 is
    10.0.0.0/8; duplicates dropped), then `readonly on|off`. ValueError for a value that is not an
    address/CIDR, more than MAX_ALLOW of them, or a readonly that is not a bool."""
    if not isinstance(readonly, bool):
        raise ValueError(f"readonly {readonly!r} is not true or false")
    lines = ["maintenance " + ("off" if maintenance is None else "on")]
    seen: set[str] = set()
    for a in maintenance or ():
        net = str(netvalues.network(a))
        if net not in seen:
            seen.add(net)
            lines.append("allow " + net)
    if len(seen) > MAX_ALLOW:
        raise ValueError(f"{len(seen)} allowed addresses: at most {MAX_ALLOW}")
    lines.append("readonly " + ("on" if readonly else "off"))
    return lines


def mode_value(maintenance: Sequence[str] | None, readonly: bool) -> str:
    """The mode as the shared dict keeps it (key `mode`): the `mode_lines` joined by spaces."""
    return " ".join(mode_lines(maintenance, readonly))


def lua_string(text: str) -> str:
    """`text` as a double-quoted Lua string literal (backslash, quote, control characters escaped)."""
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n"}
    out = (named.get(ch, f"\\{ord(ch):03d}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch) for ch in text)
    return '"' + "".join(out) + '"'


# a unix socket's path holds at most 107 bytes (sun_path is 108 with its NUL); nginx refuses a
# longer one with "too long path in the unix domain socket", so the router would not start
MAX_SOCKET_PATH = 107
SHORT_CONTROL_DIR = Path("/run/sandbox/ctl")


def control_socket(prefix: Path) -> Path:
    """The env's control socket, in a directory only root may enter (made by the driver):
    PREFIX/control/sock, or, when a deep workspace makes that too long for a unix socket,
    /run/sandbox/ctl/<24 hex of sha256(PREFIX)>.sock (unique per router, 46 bytes)."""
    path = prefix / "control" / "sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    return SHORT_CONTROL_DIR / (hashlib.sha256(os.fsencode(prefix)).hexdigest()[:24] + ".sock")


def _variables(cfg: RouterConfig, prefix: Path) -> dict[str, Any]:
    """What the shared pieces (http.j2: upstream + server, stream.j2: ports) are rendered from.

    Every name a piece defines carries the env, so that several envs can share one nginx.
    """
    ident = cfg.env.replace("-", "_")
    return {
        "env": cfg.env,
        "ident": ident,
        "prefix": str(prefix),
        "upstream": "app_" + ident,
        "dict": "sandbox_" + ident,
        "control_socket": str(control_socket(prefix)),
        "backends": cfg.backends,
        "listen": cfg.listen,
        "port": cfg.port,
        "server_name": cfg.server_name,
        # the mode the dict starts with after a (re)start of nginx, until the control socket sets it
        "mode": mode_value(cfg.maintenance, cfg.readonly),
        "maintenance_page": lua_string(MAINTENANCE_PAGE.strip()),
        "readonly_body": lua_string(READONLY_BODY),
        "ports": cfg.ports,
        "upstream_keepalive": 0 if cfg.remote else 32,
        "connect_timeout": "1s" if cfg.remote else "5s",
    }


def render_nginx_conf(cfg: RouterConfig, prefix: Path, user: str = "nobody", group: str = "nogroup") -> str:
    """The whole nginx.conf of a router of its own (pure); RouterError for a value it must not carry."""
    check_config(cfg, prefix=prefix, user=user, group=group)
    text: str = (
        _jinja()
        .get_template("nginx.conf.j2")
        .render(
            **_variables(cfg, prefix),
            user=user,
            group=group,
            drain_timeout=max(1, int(cfg.drain_timeout)),
            stream_module=STREAM_MODULE if cfg.ports else "",
            lua_modules=LUA_MODULES,
        )
    )
    return text


def render_include(cfg: RouterConfig, prefix: Path, part: str, workspace: str) -> str:
    """The include file of one env for a system nginx (pure): `part` is "http" or "stream"."""
    check_config(cfg, prefix=prefix, workspace=workspace)
    if part not in ("http", "stream"):
        raise _refuse("part", f"{part!r} is not http or stream")
    text: str = (
        _jinja().get_template("include.j2").render(**_variables(cfg, prefix), part=part, workspace=workspace)
    )
    return text
