"""The pure renderer of router configs: RouterConfig → nginx.conf (an nginx of the env's own) or
include files (a system nginx). Both share the pieces http.j2 (the env's upstream and server) and
stream.j2 (its forwarded ports). No I/O but reading the templates.
"""

from __future__ import annotations

import functools
import re
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


@dataclass(frozen=True)
class PortForward:
    """A profile port: address:host on the host → container port of every routed instance."""

    address: str
    host: int
    proto: str
    backends: tuple[str, ...]


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
    for i, a in enumerate(cfg.maintenance or ()):
        check(f"maintenance[{i}]", netvalues.network, a)
    for i, p in enumerate(cfg.ports):
        check(f"ports[{i}].address", netvalues.ipv4, p.address)
        check(f"ports[{i}].host", netvalues.port, p.host)
        if p.proto not in ("tcp", "udp"):
            raise _refuse(f"ports[{i}].proto", f"{p.proto!r} is not tcp or udp")
        for j, b in enumerate(p.backends):
            check(f"ports[{i}].backends[{j}]", netvalues.backend, b)
    for field, value in extra.items():
        check(field, netvalues.account if field in ("user", "group") else netvalues.safe_path, value)


def control_socket(prefix: Path) -> Path:
    """The env's control socket (in a directory only root may enter, made by the driver)."""
    return prefix / "control" / "sock"


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
        "maintenance_var": "sandbox_maintenance_" + ident,
        "backends": cfg.backends,
        "listen": cfg.listen,
        "port": cfg.port,
        "server_name": cfg.server_name,
        "maintenance": cfg.maintenance,
        "maintenance_page": MAINTENANCE_PAGE.strip().replace("\\", "\\\\").replace('"', '\\"'),
        "readonly": cfg.readonly,
        "ports": cfg.ports,
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
