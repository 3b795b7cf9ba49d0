"""The schema of `sandbox.yaml` (pydantic), used when the file is new or changed."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.errors import ConfigError


class NetworkModel(BaseModel):
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


class RoutersModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    port_range: tuple[int, int] = Field((18000, 18999), description="Ports for `router.port: auto`.")
    nginx: Literal["own", "system", "auto"] = Field(
        "own",
        description="own: an nginx process per env; system: an include file per env in the host's "
        "nginx; auto: system when that nginx runs, else own.",
    )
    system_conf: str = Field("/etc/nginx/nginx.conf", description="The system nginx's main config.")
    include_dir: str = Field(
        "/etc/nginx/conf.d", description="Directory the system config includes in its http block."
    )
    stream_include_dir: str | None = Field(
        None,
        description="Directory the system config includes in a stream block (needed for profile ports).",
    )
    pid_file: str = Field("/run/nginx.pid", description="The system nginx's pid file.")

    @field_validator("system_conf", "include_dir", "stream_include_dir", "pid_file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must be an absolute path")
        return v

    @field_validator("port_range")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 65535:
            raise ValueError("must be [start, end] with 1 <= start <= end <= 65535")
        return v


class SettingsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    network: NetworkModel = Field(default_factory=NetworkModel, description="sandbox's bridge and subnet.")
    routers: RoutersModel = Field(default_factory=RoutersModel, description="Router settings.")
    owner: str | None = Field(None, description="Default owner of envs (else $SUDO_USER or $USER).")


def validate_settings(path: Path) -> dict[str, Any]:
    """The checked settings of `path` as plain data; ConfigError with file:line otherwise."""
    if not path.read_text().strip():
        return SettingsModel().model_dump()  # an empty sandbox.yaml just marks the workspace
    import yaml

    from sandbox.config.validate import error_issue
    from sandbox.config.yamlmarks import load_yaml

    try:
        if yaml.safe_load(path.read_text()) is None:  # only comments: all defaults
            return SettingsModel().model_dump()
    except yaml.YAMLError:
        pass  # load_yaml below reports it with file:line
    raw = load_yaml(path, "sandbox.yaml")
    try:
        return SettingsModel.model_validate(raw).model_dump()
    except ValidationError as e:
        raise ConfigError([error_issue(err, raw, SettingsModel) for err in e.errors()]) from e
