"""Workspace settings (`sandbox.yaml`): the network sandbox's backends use, router port range."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.errors import ConfigError
from sandbox.workspace import Workspace


class Network(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bridge: str = Field("sandbox0", pattern=r"^[a-z][a-z0-9_-]{0,14}$", description="Bridge sandbox owns.")
    subnet: str = Field(
        "10.213.0.0/24", description="IPv4 subnet of instances; the first host is the gateway."
    )

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        net = ipaddress.ip_network(v, strict=True)
        if net.version != 4 or net.prefixlen > 28:
            raise ValueError("must be an IPv4 network of /28 or larger")
        return v


class Routers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    port_range: tuple[int, int] = Field((18000, 18999), description="Ports for `router.port: auto`.")

    @field_validator("port_range")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 65535:
            raise ValueError("must be [start, end] with 1 <= start <= end <= 65535")
        return v


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    network: Network = Field(default_factory=Network)
    routers: Routers = Field(default_factory=Routers)
    owner: str | None = Field(None, description="Default owner of envs (else $SUDO_USER or $USER).")


def load_settings(ws: Workspace) -> Settings:
    path = ws.root / "sandbox.yaml"
    if not path.is_file() or not path.read_text().strip():
        return Settings()  # an empty sandbox.yaml just marks the workspace
    from sandbox.config.validate import error_issue  # only when there is a file to check
    from sandbox.config.yamlmarks import load_yaml

    raw = load_yaml(path, "sandbox.yaml")
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([error_issue(err, raw, Settings) for err in e.errors()]) from e
