"""Workspace settings (`sandbox.yaml`): the network sandbox's backends use, the routers (port range,
own or system nginx).

Every setting is declared once, below, as a field of a frozen dataclass: its name, type, default,
description and checks. Reading them costs nothing when the file is absent or unchanged (a cached
copy, no pydantic, no YAML); when it changed, `settings_schema` derives pydantic models from these
same fields and validates the file with file:line errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar, get_type_hints

from sandbox.fsutil import atomic_write, private_dir, tree_stats
from sandbox.workspace import Workspace

T = TypeVar("T")
NginxKind = Literal["own", "system", "auto"]


def setting(
    default: Any = MISSING,
    *,
    description: str,
    factory: Callable[[], Any] | None = None,
    pattern: str | None = None,
    check: Callable[[Any], Any] | None = None,
) -> Any:
    """A settings field: default (or factory), help text, and checks run when sandbox.yaml is validated.

    `pattern` is a regular expression a string must match; `check` returns the value or raises
    ValueError with a message that completes "<key>: ...".
    """
    meta: dict[str, Any] = {"description": description}
    if pattern is not None:
        meta["pattern"] = pattern
    if check is not None:
        meta["check"] = check
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def ipv4_subnet(v: str) -> str:
    import ipaddress  # only when validating

    net = ipaddress.ip_network(v, strict=True)
    if net.version != 4 or net.prefixlen > 28:
        raise ValueError("must be an IPv4 network of /28 or larger")
    return v


def absolute_path(v: str | None) -> str | None:
    if v is not None and not v.startswith("/"):
        raise ValueError("must be an absolute path")
    return v


def port_range(v: tuple[int, int]) -> tuple[int, int]:
    if not 1 <= v[0] <= v[1] <= 65535:
        raise ValueError("must be [start, end] with 1 <= start <= end <= 65535")
    return v


@dataclass(frozen=True)
class Network:
    bridge: str = setting("sandbox0", description="Bridge sandbox owns.", pattern=r"^[a-z][a-z0-9_-]{0,14}$")
    subnet: str = setting(
        "10.213.0.0/24",
        description="IPv4 subnet of instances; the first host is the gateway.",
        check=ipv4_subnet,
    )


@dataclass(frozen=True)
class Routers:
    port_range: tuple[int, int] = setting(
        (18000, 18999), description="Ports for `router.port: auto`.", check=port_range
    )
    nginx: NginxKind = setting(
        "own",
        description="own: an nginx process per env; system: an include file per env in the host's "
        "nginx; auto: system when that nginx runs (its pid file names a live process), else own.",
    )
    system_conf: str = setting(
        "/etc/nginx/nginx.conf", description="The system nginx's main config.", check=absolute_path
    )
    include_dir: str = setting(
        "/etc/nginx/conf.d",
        description="Directory the system config includes in its http block.",
        check=absolute_path,
    )
    stream_include_dir: str | None = setting(
        None,
        description="Directory the system config includes in a stream block (needed for profile ports).",
        check=absolute_path,
    )
    pid_file: str = setting("/run/nginx.pid", description="The system nginx's pid file.", check=absolute_path)


@dataclass(frozen=True)
class Hosts:
    ssh_config: str | None = setting(
        None,
        description="ssh client config for production hosts (ssh -F); ssh's own defaults "
        "(~/.ssh/config, /etc/ssh/ssh_config) when omitted.",
        check=absolute_path,
    )
    connect_timeout: float = setting(5.0, description="Seconds to wait for a host's ssh to connect.")
    compression: Literal["zstd", "gzip", "none"] = setting(
        "zstd",
        description="How image blobs travel to hosts: zstd (gzip for a host without it), gzip, or none "
        "(for a link faster than the CPUs compress).",
    )


@dataclass(frozen=True)
class Settings:
    network: Network = setting(factory=Network, description="sandbox's bridge and subnet.")
    routers: Routers = setting(factory=Routers, description="Router settings.")
    hosts: Hosts = setting(factory=Hosts, description="Production hosts (profile hosts:) over SSH.")
    owner: str | None = setting(None, description="Default owner of envs (else $SUDO_USER or $USER).")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        """Settings from trusted plain data (the cache, or already validated): lists become tuples."""
        return build(cls, d)


_types: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of a settings dataclass."""
    if cls not in _types:
        _types[cls] = get_type_hints(cls)
    return _types[cls]


def build(cls: type[T], d: dict[str, Any]) -> T:
    """An instance of the settings dataclass `cls` from plain data; absent keys keep their defaults."""
    types = field_types(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in d:
            continue
        value = d[f.name]
        tp = types[f.name]
        if is_dataclass(tp) and isinstance(tp, type):
            value = build(tp, value or {})
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def walk(cls: type = Settings, prefix: str = "") -> Iterator[tuple[str, Any, Field[Any]]]:
    """(dotted key, type, field) of every setting, sections first then their keys (for docs and tests)."""
    types = field_types(cls)
    for f in fields(cls):
        tp = types[f.name]
        yield prefix + f.name, tp, f
        if is_dataclass(tp) and isinstance(tp, type):
            yield from walk(tp, f"{prefix}{f.name}.")


def load_settings(ws: Workspace) -> Settings:
    path = ws.root / "sandbox.yaml"
    if not path.is_file():
        return Settings()
    cache_file = ws.state / "fingerprints" / "settings.json"
    stats = tree_stats([path])
    try:
        doc = json.loads(cache_file.read_text())
        if doc["stats"] == stats:
            return Settings.from_dict(doc["settings"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from sandbox.config.settings_schema import validate_settings  # pydantic: only when the file changed

    settings = validate_settings(path)
    if ws.state.is_dir():
        private_dir(cache_file.parent)
        atomic_write(cache_file, json.dumps({"stats": stats, "settings": asdict(settings)}).encode(), 0o600)
    return settings
