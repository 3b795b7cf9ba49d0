"""The pure renderer of router configs: RouterConfig → nginx.conf (an nginx of the env's own) or
include files (a system nginx). Both share the pieces http.j2 (the env's upstream and server) and
stream.j2 (its forwarded ports). No I/O but reading the templates.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    from jinja2 import (  # only when a config is written
        Environment,
        FileSystemBytecodeCache,
        FileSystemLoader,
        StrictUndefined,
    )

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sandbox" / "jinja"
    cache.mkdir(parents=True, exist_ok=True)
    return Environment(
        bytecode_cache=FileSystemBytecodeCache(str(cache)),  # compiled once, not on every `up`
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


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
    """The whole nginx.conf of a router of its own (pure)."""
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
    text: str = (
        _jinja().get_template("include.j2").render(**_variables(cfg, prefix), part=part, workspace=workspace)
    )
    return text
