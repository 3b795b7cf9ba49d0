"""The profile schema: how an environment runs an image (pydantic models, Field descriptions as docs).

A profile is `profiles/NAME.yaml`; an environment named `NAME` or `NAME-SUFFIX` uses it.
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sandbox.config import netvalues
from sandbox.config.fields import EnvKey, EnvValue, RecipeName, fail
from sandbox.config.names import PROFILE_NAME_HINT, PROFILE_NAME_RE
from sandbox.config.profile_hosts import Host, HostName, SshTarget, check_hosts, check_profile
from sandbox.config.units import Duration, Size, format_size

"""No '-': an environment is named PROFILE or PROFILE-SUFFIX."""
IMAGE_REF_HINT = "an image reference: RECIPE, RECIPE:TAG, sha256:DIGEST or a digest prefix (6+ hex digits)"
MIN_MEMORY = 32 << 20
PARTIAL = "partial"
"""Validation context key: True while validating one file of an extends chain (recipe/image optional)."""
ONE_FILE = "one_file"
"""Validation context key: True while validating one file alone; rules across keys wait for the merge."""
NEITHER = "give 'recipe' or 'image' (in this file or a parent)"
NEITHER_HINT = "recipe: NAME runs the latest image of recipes/NAME.yaml; image: REF runs that image"

REMOTE_SCHEMES: dict[str, tuple[str, ...]] = {
    "lxc": (),
    "lxd": ("https",),
    "docker": ("ssh", "tcp", "unix"),
    "libvirt": ("qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix"),
}

_TAG = r"[a-z0-9][a-z0-9._-]{0,62}"
_IMAGE_REF = re.compile(rf"sha256:[0-9a-f]{{6,64}}|{_TAG}(?::{_TAG})?")


def _profile_name(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not re.fullmatch(PROFILE_NAME_RE, value):
            fail(f"{value!r} is not a valid {what}", PROFILE_NAME_HINT)
        return value

    return AfterValidator(check)


CAPABILITIES = frozenset(
    [
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "SYSLOG",
        "WAKE_ALARM",
        "",
    ]
)


def _capability(value: str) -> str:
    name = value.upper().removeprefix("CAP_")
    if name not in CAPABILITIES:
        close = sorted(c for c in CAPABILITIES if c.startswith(name)) or difflib.get_close_matches(
            name, CAPABILITIES, n=1
        )
        fail(
            f"{value!r} is not a Linux capability",
            f"did you mean {close[0]}?" if close else "e.g. NET_BIND_SERVICE (see capabilities(7))",
        )
    return name


def _image_ref(value: str) -> str:
    if not _IMAGE_REF.fullmatch(value):
        fail(f"{value!r} is not an image reference", IMAGE_REF_HINT)
    return value


def _ipv4(value: str) -> str:
    try:
        return netvalues.ipv4(value)
    except ValueError as e:
        fail(str(e), "e.g. 127.0.0.1 or 0.0.0.0 (all interfaces)")


def _single_line(value: str) -> str:
    if not value or any(c in value for c in "\n\r\0"):
        fail("must be a non-empty single line")
    return value


def _mount_dest(value: str) -> str:
    if not value.startswith("/"):
        fail(f"dest {value!r} must be an absolute path in the instance")
    if ".." in value.split("/"):
        fail(f"dest {value!r} must not contain '..'")
    if posixpath.normpath(value) in ("/", "//"):
        fail("dest must not be '/'")
    return _single_line(value)


def _url_path(value: str) -> str:
    if not value.startswith("/"):
        fail(f"{value!r} must be a URL path starting with '/'", "e.g. /healthz")
    return _single_line(value)


def _server_name(value: str) -> str:
    try:
        return netvalues.server_name(value)
    except ValueError as e:
        fail(str(e), netvalues.SERVER_NAME_HINT)


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return netvalues.network(value)
    except ValueError as e:
        fail(str(e), "e.g. 10.0.0.5 or 10.0.0.0/8")


def _router_port(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535):
        return value
    fail(f"router port must be 1-65535 or 'auto', got {value!r}", "'auto' picks a free port")


def _positive(what: str) -> AfterValidator:
    def check(value: float) -> float:
        if value <= 0:
            fail(f"{what} must be more than 0")
        return value

    return AfterValidator(check)


def _min_memory(value: int) -> int:
    if value < MIN_MEMORY:
        fail(f"memory {format_size(value) if value else 0} is less than the minimum of 32M")
    return value


ProfileName = Annotated[str, _profile_name("profile name")]
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]
StrictBool = Annotated[bool, Strict()]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
IPv4 = Annotated[str, AfterValidator(_ipv4)]
Line = Annotated[str, AfterValidator(_single_line)]
PositiveDuration = Annotated[Duration, _positive("duration")]

STRICT = ConfigDict(extra="forbid")


class Resources(BaseModel):
    """Limits applied to each instance."""

    model_config = STRICT
    cpus: Annotated[StrictFloat, Field(gt=0, le=64)] | None = Field(
        None, description="CPU limit in cores (e.g. 0.5, 2); unlimited when omitted."
    )
    memory: Annotated[Size, AfterValidator(_min_memory)] | None = Field(
        None, description="Memory limit, e.g. 512M or 1G (at least 32M); unlimited when omitted."
    )
    pids: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Maximum number of processes; unlimited when omitted."
    )


class PortMap(BaseModel):
    """A host port forwarded to a port of the instance."""

    model_config = STRICT
    host: Port = Field(description="Port on the host (1-65535).")
    container: Port = Field(description="Port inside the instance (1-65535).")
    address: IPv4 = Field("127.0.0.1", description="Host IPv4 address to listen on.")
    proto: Literal["tcp", "udp"] = Field("tcp", description="Protocol: tcp or udp.")


class Mount(BaseModel):
    """A host directory or file bind-mounted into the instance."""

    model_config = STRICT
    src: Line = Field(description="Host path: absolute, or relative to the workspace root; must exist.")
    dest: Annotated[str, AfterValidator(_mount_dest)] = Field(
        description="Absolute path inside the instance (no '..')."
    )
    readonly: StrictBool = Field(False, description="Mount read-only.")


class Health(BaseModel):
    """When an instance counts as healthy; with both path and command set, both must pass."""

    model_config = STRICT
    path: Annotated[str, AfterValidator(_url_path)] | None = Field(
        None, description="HTTP path that must answer 2xx; the recipe app's health path when omitted."
    )
    command: Line | None = Field(
        None, description="Command run inside the instance; exit status 0 means healthy."
    )
    interval: PositiveDuration = Field(0.5, description="Time between two checks, e.g. 0.5s.")
    timeout: PositiveDuration = Field(120.0, description="How long to wait for health before giving up.")

    @model_validator(mode="after")
    def _interval_below_timeout(self) -> Health:
        if self.interval > self.timeout:
            fail("health interval must not be longer than the timeout")
        return self


class Router(BaseModel):
    """The nginx in front of the environment's instances (staging routes exactly as prod does)."""

    model_config = STRICT
    listen: IPv4 = Field("127.0.0.1", description="IPv4 address nginx listens on.")
    port: Annotated[int | Literal["auto"], BeforeValidator(_router_port)] = Field(
        "auto", description="Port nginx listens on (1-65535), or 'auto' for a free one."
    )
    server_name: Annotated[str, AfterValidator(_server_name)] = Field(
        "_", description="nginx server_name; '_' matches any host."
    )
    drain_timeout: Duration = Field(
        30.0, description="How long a removed instance keeps serving open requests, e.g. 30s."
    )
    host: HostName | None = Field(
        None,
        description="Host running nginx: one of `hosts` or another machine (then `ssh` too); this one "
        "when omitted.",
    )
    ssh: SshTarget | None = Field(
        None, description="SSH target of the router's host; taken from `hosts` when `host` is one of them."
    )


class Promotion(BaseModel):
    """How `sandbox promote --to` this environment behaves."""

    model_config = STRICT
    compatible: bool = Field(
        True,
        description="Whether system package/user changes are backward compatible; false → maintenance page.",
    )
    require_verified: bool = Field(
        True, description="Only promote images that passed `sandbox verify` on another env (or --force)."
    )
    allow: list[Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]] = Field(
        default_factory=list,
        max_length=256,  # what the router's control socket takes (routing/render.py MAX_ALLOW)
        description="Addresses/CIDRs that still get through the maintenance page (at most 256).",
    )


class Profile(BaseModel):
    """A profile: how an environment runs an image (instances, resources, health, router ...)."""

    model_config = STRICT
    name: ProfileName = Field(
        description="Profile name, equal to the file name; envs are NAME or NAME-SUFFIX."
    )
    extends: Annotated[str, _profile_name("parent profile name")] | None = Field(
        None, description="Parent profile: the name of another profile in the same directory."
    )
    description: str = Field("", description="Free text shown in listings.")
    recipe: RecipeName | None = Field(None, description="Recipe (in recipes/) whose latest image runs.")
    image: Annotated[str, AfterValidator(_image_ref)] | None = Field(
        None, description="Image to run: RECIPE, RECIPE:TAG, sha256:DIGEST or a digest prefix."
    )
    backend: Literal["lxc", "lxd", "docker", "libvirt"] = Field(
        "lxc", description="Backend running instances."
    )
    remote: str | None = Field(
        None,
        description="Host of the backend's daemon: lxd https://HOST:8443, docker ssh://USER@HOST or "
        "tcp://HOST:2376, libvirt a URI such as qemu+ssh://USER@HOST/system; this host when omitted.",
    )
    capabilities: list[Annotated[str, AfterValidator(_capability)]] = Field(
        default_factory=list,
        description="Linux capabilities the app keeps on the docker backend, e.g. NET_BIND_SERVICE; "
        "all others are dropped.",
    )
    instances: Annotated[StrictInt, Field(ge=1, le=64)] = Field(
        1,
        description="Number of instances (1-64); with per-host counts, their sum when omitted.",
    )
    hosts: list[Host] = Field(
        default_factory=list,
        description="Production hosts the instances run on, over SSH (lxc backend); this machine when empty.",
    )
    resources: Resources = Field(default_factory=Resources, description="Limits per instance.")
    ports: list[PortMap] = Field(default_factory=list, description="Host ports forwarded to the instance.")
    env: dict[EnvKey, EnvValue] = Field(default_factory=dict, description="Environment of the app.")
    mounts: list[Mount] = Field(default_factory=list, description="Host paths bind-mounted into instances.")
    ttl: PositiveDuration | None = Field(
        None, description="Lifetime of an environment, e.g. 4h or 7d; forever when omitted."
    )
    max_per_owner: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Most environments of this profile one owner may have; unlimited when omitted."
    )
    health: Health = Field(default_factory=Health, description="Health check of each instance.")
    router: Router | None = Field(None, description="nginx in front of the instances; none when omitted.")
    promotion: Promotion = Field(default_factory=Promotion, description="Rules for promotions to this env.")

    @field_validator("image")
    @classmethod
    def _not_both(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("recipe") is not None:
            fail(
                "give either 'recipe' or 'image', not both", "a profile runs one recipe's image or one image"
            )
        return value

    @model_validator(mode="after")
    def _hosts_fit(self, info: ValidationInfo) -> Profile:
        check_hosts(self.hosts)
        if not (info.context and info.context.get(ONE_FILE)):
            check_profile(self)
        return self

    @model_validator(mode="after")
    def _remote_fits_backend(self) -> Profile:
        if self.remote is not None:
            schemes = REMOTE_SCHEMES[self.backend]
            if not schemes:
                fail(
                    f"the {self.backend} backend has no remote hosts",
                    "remove 'remote' or pick lxd/docker/libvirt",
                )
            if not re.fullmatch(rf"({'|'.join(map(re.escape, schemes))})://[^\s]+", self.remote):
                fail(
                    f"{self.remote!r} is not a remote for the {self.backend} backend",
                    f"use {' or '.join(s + '://...' for s in schemes)}",
                )
        return self

    @model_validator(mode="after")
    def _recipe_or_image(self, info: ValidationInfo) -> Profile:
        partial = bool(info.context and info.context.get(PARTIAL))
        if not partial and self.recipe is None and self.image is None:
            fail(NEITHER, NEITHER_HINT)
        return self
