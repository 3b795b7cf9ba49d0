"""The resolved profile: one frozen, typed value that travels from config to state to envs and promote.

`profile.py` (pydantic) validates a profile and its `extends` chain and holds every default;
`ResolvedProfile.from_data` turns its JSON dump (`model_dump(mode="json")`, as the profile cache
and the state DB keep it) into this value without importing pydantic. A key missing from older
stored data takes the schema's default, looked up in `profile.py` only then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

RouterPort = int | Literal["auto"]


@dataclass(frozen=True)
class ResourceLimits:
    cpus: float | None
    memory: int | None  # bytes
    pids: int | None


@dataclass(frozen=True)
class PortSpec:
    host: int
    container: int
    address: str
    proto: str


@dataclass(frozen=True)
class MountEntry:
    src: str  # as written: absolute, or relative to the workspace root
    dest: str
    readonly: bool


@dataclass(frozen=True)
class HealthSpec:
    path: str | None
    command: str | None
    interval: float
    timeout: float


@dataclass(frozen=True)
class RouterSpec:
    listen: str
    port: RouterPort
    server_name: str
    drain_timeout: float
    host: str | None = None  # nginx on another machine (a host name); this machine when None
    ssh: str | None = None  # its SSH target, filled from `hosts` when the router runs on one of them


@dataclass(frozen=True)
class HostSpec:
    """A production host (issue 11): where some of the env's instances run, reached over SSH."""

    name: str
    ssh: str  # as written in the profile; hostvalues.ssh_target parses it again before use
    address: str | None  # the router's way to the host; resolved from `ssh` at run time when None
    labels: Mapping[str, str] = field(hash=False)
    instances: int | None  # per-host count; None: spread evenly (placement.place)


@dataclass(frozen=True)
class PromotionSpec:
    compatible: bool
    require_verified: bool
    allow: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile after `extends` and validation: every field typed, every default filled."""

    name: str
    extends: str | None
    description: str
    recipe: str | None
    image: str | None
    backend: str
    remote: str | None
    capabilities: tuple[str, ...]
    instances: int
    resources: ResourceLimits
    ports: tuple[PortSpec, ...]
    env: Mapping[str, str] = field(hash=False)
    mounts: tuple[MountEntry, ...]
    ttl: float | None
    max_per_owner: int | None
    health: HealthSpec
    router: RouterSpec | None
    promotion: PromotionSpec
    hosts: tuple[HostSpec, ...] = ()  # empty: instances run on this machine

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ResolvedProfile:
        """From the JSON form of a validated profile (trusted: it passed the schema)."""
        d = _Section(data, ())
        res, health, promo = d.section("resources"), d.section("health"), d.section("promotion")
        router = data.get("router")
        return cls(
            name=str(data.get("name", "")),  # always there but in hand-made test rows
            extends=d.get("extends"),
            description=str(d.get("description")),
            recipe=d.get("recipe"),
            image=d.get("image"),
            backend=str(d.get("backend")),
            remote=d.get("remote"),
            capabilities=tuple(d.get("capabilities")),
            instances=int(d.get("instances")),
            resources=ResourceLimits(res.get("cpus"), res.get("memory"), res.get("pids")),
            ports=tuple(
                PortSpec(int(p["host"]), int(p["container"]), str(p["address"]), str(p["proto"]))
                for p in d.get("ports")
            ),
            env={str(k): str(v) for k, v in d.get("env").items()},
            mounts=tuple(
                MountEntry(str(m["src"]), str(m["dest"]), bool(m.get("readonly", False)))
                for m in d.get("mounts")
            ),
            ttl=_opt_float(d.get("ttl")),
            max_per_owner=d.get("max_per_owner"),
            health=HealthSpec(
                health.get("path"),
                health.get("command"),
                float(health.get("interval")),
                float(health.get("timeout")),
            ),
            router=None if router is None else _router(_Section(router, ("router",))),
            promotion=PromotionSpec(
                bool(promo.get("compatible")),
                bool(promo.get("require_verified")),
                tuple(_network(a) for a in promo.get("allow")),
            ),
            hosts=tuple(_host(h) for h in d.get("hosts")),
        )

    def to_data(self) -> dict[str, Any]:
        """The JSON form (what the state DB stores; `from_data(to_data())` is the same value)."""
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out

    def with_instances(self, count: int) -> ResolvedProfile:
        return dataclasses.replace(self, instances=count)


def _router(r: _Section) -> RouterSpec:
    port = r.get("port")
    return RouterSpec(
        str(r.get("listen")),
        port if port == "auto" else int(port),
        str(r.get("server_name")),
        float(r.get("drain_timeout")),
        _checked(r.get("host"), "host_name"),
        _checked(r.get("ssh"), "ssh_target"),
    )


def _host(h: Mapping[str, Any]) -> HostSpec:
    count = h.get("instances")
    return HostSpec(
        str(_checked(h["name"], "host_name")),
        str(_checked(h["ssh"], "ssh_target")),
        _opt_str(h.get("address")),
        {str(k): str(v) for k, v in (h.get("labels") or {}).items()},
        None if count is None else int(count),
    )


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _checked(value: Any, check: str) -> str | None:
    """A host name or SSH target, checked again: the stored profile reaches an ssh argv."""
    from sandbox.config import hostvalues

    if value is None:
        return None
    getattr(hostvalues, check)(value)
    return str(value)


def _network(value: Any) -> str:
    """An allowlist entry as text, checked again: the stored profile reaches nginx's config."""
    from sandbox.config import netvalues

    return str(netvalues.network(value))


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


class _Section:
    """A mapping of stored profile data whose missing keys take the schema's defaults."""

    def __init__(self, data: Mapping[str, Any], path: tuple[str, ...]) -> None:
        self.data = data
        self.path = path

    def get(self, key: str) -> Any:
        if key in self.data:
            return self.data[key]
        return schema_default((*self.path, key))

    def section(self, key: str) -> _Section:
        value = self.data.get(key)
        return _Section(value if isinstance(value, Mapping) else {}, (*self.path, key))


def schema_default(path: tuple[str, ...]) -> Any:
    """The default the profile schema gives the key at `path` (e.g. ("health", "timeout"))."""
    from pydantic import BaseModel

    from sandbox.config import profile as schema

    model: type[BaseModel] = schema.Profile
    for key in path[:-1]:
        annotation = model.model_fields[key].annotation
        nested = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        model = next(a for a in nested if issubclass(a, BaseModel))
    return model.model_fields[path[-1]].get_default(call_default_factory=True)
