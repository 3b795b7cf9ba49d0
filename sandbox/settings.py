"""Workspace settings (`sandbox.yaml`): the network sandbox's backends use, the routers (port range,
own or system nginx), production hosts, and the web frontend's webhooks and schedules.

Every setting is declared once, below, as a field of a frozen dataclass: its name, type, default,
description and checks. Reading them costs nothing when the file is absent or unchanged (a cached
copy, no pydantic, no YAML); when it changed, `settings_schema` derives pydantic models from these
same fields and validates the file with file:line errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from sandbox.fsutil import atomic_write, private_dir, tree_stats
from sandbox.workspace import Workspace

T = TypeVar("T")
NginxKind = Literal["own", "system", "auto"]
HookFormat = Literal["github", "gitea", "standard", "gitlab-token"]
# the rules of sandbox.config.names and the recipe name (settings sit below config: repeated here)
PROFILE_NAME = r"^[a-z][a-z0-9]{0,30}$"
RECIPE_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
# a git branch without path tricks: segments of [A-Za-z0-9._-] joined by '/', none empty or starting
# with '.' or '-', no '..', no '.lock' end; nothing a shell or a path would read specially
BRANCH_NAME = (
    r"(?!.*\.\.)(?!.*\.lock(/|$))[A-Za-z0-9_][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,99}){0,9}"
)


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
    """The bridge and subnet of this workspace's instances (two workspaces on one host need different
    ones)."""

    bridge: str = setting("sandbox0", description="Bridge sandbox owns.", pattern=r"^[a-z][a-z0-9_-]{0,14}$")
    subnet: str = setting(
        "10.213.0.0/24",
        description="IPv4 subnet of instances; the first host is the gateway.",
        check=ipv4_subnet,
    )


@dataclass(frozen=True)
class Routers:
    """The nginx routers in front of envs: an nginx of their own, or include files in the host's."""

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
    """How sandbox reaches production hosts (a profile's `hosts:`) over SSH."""

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


def unique_names(entries: tuple[Any, ...]) -> tuple[Any, ...]:
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ValueError(f"the name {e.name!r} is used twice; names must be unique")
        seen.add(e.name)
    return entries


def _size_limit(v: int) -> int:
    if not 1024 <= v <= 25 * 1024 * 1024:
        raise ValueError("must be 1024 to 26214400 bytes (GitHub sends at most 25 MiB)")
    return v


def _tolerance(v: int) -> int:
    if not 1 <= v <= 3600:
        raise ValueError("must be 1 to 3600 seconds")
    return v


@dataclass(frozen=True)
class Pipeline:
    """What a webhook or a schedule runs: build the recipe (at the pushed commit), up an env of
    `profile` (PROFILE-<short sha>), verify it, and optionally promote it into `promote`."""

    recipe: str = setting(description="The recipe to build.", pattern=RECIPE_NAME)
    profile: str = setting("staging", description="Profile of the env it deploys to.", pattern=PROFILE_NAME)
    verify: bool = setting(True, description="Verify the new env (its health checks) before going on.")
    promote: str | None = setting(
        None,
        description="Promote the verified image into this env afterwards (e.g. prod).",
        pattern=PROFILE_NAME,
    )
    refresh: bool = setting(False, description="Rebuild with the newest packages (security updates).")


@dataclass(frozen=True)
class Hook:
    """A webhook from git hosting, received at /hooks/NAME."""

    name: str = setting(
        description="Its name, in the URL /hooks/NAME.", pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$"
    )
    format: HookFormat = setting(
        description="github (X-Hub-Signature-256), gitea (X-Gitea-Signature, Forgejo too), standard "
        "(Standard Webhooks: webhook-id/-timestamp/-signature; GitLab's signing token), or gitlab-token "
        "(GitLab's plain X-Gitlab-Token, not a signature: only when chosen here)."
    )
    branches: dict[str, Pipeline] = setting(description="Branch name -> the pipeline a push to it runs.")
    secret_file: str | None = setting(
        None, description="File holding the secret (one line); readable by root only.", check=absolute_path
    )
    secret_env: str | None = setting(
        None, description="Environment variable holding the secret.", pattern=r"^[A-Z_][A-Z0-9_]{0,63}$"
    )
    tolerance: int = setting(
        300, description="standard: seconds a webhook-timestamp may be off from now.", check=_tolerance
    )
    max_body: int = setting(1024 * 1024, description="Largest body accepted, in bytes.", check=_size_limit)

    @staticmethod
    def check_entry(d: dict[str, Any]) -> None:
        """The rules across keys: one secret source, branch names."""
        import re  # only when validating

        if (d.get("secret_file") is None) == (d.get("secret_env") is None):
            raise ValueError(
                "give exactly one of secret_file or secret_env (the secret itself never goes in sandbox.yaml)"
            )
        if not d.get("branches"):
            raise ValueError("branches: name at least one branch and its pipeline")
        for branch in d["branches"]:
            if not re.fullmatch(BRANCH_NAME, branch):
                raise ValueError(
                    f"branches: {branch!r} is not a branch name sandbox accepts (letters, digits, '.', '_', "
                    "'-', segments joined by '/'; no '..', no leading '.' or '-')"
                )


@dataclass(frozen=True)
class Schedule:
    """A pipeline run by `sandbox serve` at the times of a cron expression (UTC)."""

    name: str = setting(description="Its name, shown as the trigger.", pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    cron: str = setting(description="When: minute hour day month weekday (UTC), or @daily, @hourly ...")
    pipeline: Pipeline = setting(description="What it runs.")


@dataclass(frozen=True)
class Settings:
    """The workspace settings: `sandbox.yaml` at the workspace root (optional, every key defaulted)."""

    network: Network = setting(factory=Network, description="sandbox's bridge and subnet.")
    routers: Routers = setting(factory=Routers, description="Router settings.")
    hosts: Hosts = setting(factory=Hosts, description="Production hosts (profile hosts:) over SSH.")
    owner: str | None = setting(None, description="Default owner of envs (else $SUDO_USER or $USER).")
    hooks: tuple[Hook, ...] = setting(
        (),
        description="Webhooks of the web frontend: a push to a branch runs a pipeline.",
        check=unique_names,
    )
    schedules: tuple[Schedule, ...] = setting(
        (), description="Pipelines the web frontend runs by the clock.", check=unique_names
    )

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


def entry_type(tp: Any) -> type | None:
    """The dataclass of the entries of `tuple[Entry, ...]` or `dict[str, Entry]`, else None."""
    args = get_args(tp)
    if get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
    elif get_origin(tp) is dict and len(args) == 2:
        item = args[1]
    else:
        return None
    return item if is_dataclass(item) and isinstance(item, type) else None


def build(cls: type[T], d: dict[str, Any]) -> T:
    """An instance of the settings dataclass `cls` from plain data; absent keys keep their defaults."""
    types = field_types(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in d:
            continue
        value = d[f.name]
        tp = types[f.name]
        item = entry_type(tp)
        if is_dataclass(tp) and isinstance(tp, type):
            value = build(tp, value or {})
        elif item is not None and get_origin(tp) is tuple:
            value = tuple(build(item, v) for v in value)
        elif item is not None:
            value = {k: build(item, v) for k, v in value.items()}
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
