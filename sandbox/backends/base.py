"""The backend contract and the registry of backends by name.

A backend runs *instances* (one container or VM each) of an image from the
store. It knows nothing of envs, profiles or routers: `sandbox/envs.py` owns
those and calls the backend through this contract. Backends are imported
lazily, so a user needs only the SDK of the backend they use.
"""

from __future__ import annotations

import abc
import importlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from sandbox.errors import SandboxError
from sandbox.events import EventSink, null_sink
from sandbox.workspace import Workspace


class UnsupportedOperation(SandboxError):
    """The backend cannot do this (see its capabilities)."""


class BackendError(SandboxError):
    """A backend operation failed (the backend's own error, translated)."""


@dataclass(frozen=True)
class MountSpec:
    src: str  # absolute host path
    dest: str  # absolute path in the instance
    readonly: bool = False
    is_file: bool = False  # a single file rather than a directory


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a backend needs to create one instance."""

    name: str  # unique within the workspace, e.g. "staging-42-0"
    env: str
    index: int
    image: str  # image digest (sha256:…)
    address: str | None = None  # static IPv4 on sandbox's network, when the backend uses it
    env_vars: Mapping[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory: int | None = None  # bytes
    pids: int | None = None
    mounts: tuple[MountSpec, ...] = ()
    capabilities: tuple[str, ...] = ()  # Linux capabilities the app keeps (docker drops all others)


@dataclass(frozen=True)
class ExecResult:
    code: int
    stdout: str
    stderr: str


class Backend(abc.ABC):
    """The contract every backend implements (create from image, start, stop, destroy, exec …)."""

    name: ClassVar[str]
    #: what this backend can do beyond the basics: "snapshot", "clone", "init" (systemd: cron and
    #: services run), "logs", "static-address" (uses InstanceSpec.address; otherwise the backend
    #: picks the address and envs asks `address()` after start), "remote" (profile `remote:`)
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ws: Workspace, sink: EventSink = null_sink, remote: str | None = None) -> None:
        self.ws = ws
        self.sink = sink
        #: where the backend's daemon runs (profile `remote:`); None is this host
        self.remote = remote
        if remote is not None and "remote" not in self.capabilities:
            raise UnsupportedOperation(
                f"the {self.name} backend has no remote hosts (remote: {remote!r})",
                hint="remove `remote:` from the profile, or pick the lxd, docker or libvirt backend",
            )

    def require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise UnsupportedOperation(
                f"the {self.name} backend cannot {capability}",
                hint=f"{self.name} supports: {', '.join(sorted(self.capabilities)) or 'the basics only'}",
            )

    @abc.abstractmethod
    def check(self) -> None:
        """Raise a SandboxError with the fix if the host lacks what this backend needs."""

    @abc.abstractmethod
    def prepare_image(self, digest: str) -> None:
        """Make the image usable by this backend (unpack or import it), once per image."""

    @abc.abstractmethod
    def create(self, spec: InstanceSpec) -> None:
        """Create a stopped instance of spec.image."""

    @abc.abstractmethod
    def start(self, name: str) -> None: ...

    @abc.abstractmethod
    def stop(self, name: str, timeout: float = 10.0) -> None: ...

    @abc.abstractmethod
    def destroy(self, name: str) -> None:
        """Stop (if needed) and remove the instance and its data; no error if it is gone."""

    @abc.abstractmethod
    def state(self, name: str) -> str:
        """ "running", "stopped" or "missing"."""

    @abc.abstractmethod
    def address(self, name: str) -> str:
        """The IPv4 address the host reaches the instance at."""

    @abc.abstractmethod
    def exec(
        self,
        name: str,
        argv: list[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        interactive: bool = False,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run argv in the instance (as `user`); interactive attaches the terminal and returns its code."""

    @abc.abstractmethod
    def put_file(self, name: str, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        """Write a file into a running instance (owner ids as the instance sees them)."""

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        """A host command that prints (and with `follow`, streams) the instance's app logs."""
        self.require("logs")
        raise NotImplementedError

    def snapshot(self, name: str, snap: str) -> dict[str, str]:
        self.require("snapshot")
        raise NotImplementedError

    def restore(self, name: str, snap: str) -> None:
        self.require("snapshot")
        raise NotImplementedError

    def delete_snapshot(self, name: str, snap: str) -> None:
        self.require("snapshot")
        raise NotImplementedError

    def clone(self, src: str, spec: InstanceSpec) -> None:
        """Create `spec` as a copy of instance `src` (its data, not only its image)."""
        self.require("clone")
        raise NotImplementedError

    def instances(self) -> list[str]:
        """Names of all instances this backend holds for the workspace (to find orphans)."""
        return []

    def images(self) -> list[str]:
        """Digests of the image copies this backend keeps (gc drops the unused ones)."""
        return []

    def clean_stale(self) -> list[str]:
        """Remove temporary files left by dead processes; what was removed."""
        return []

    def forget_image(self, digest: str) -> None:  # noqa: B027  (optional: not every backend keeps copies)
        """Drop the backend's copy of an image no instance uses any more."""


_REGISTRY: dict[str, str] = {
    "lxc": "sandbox.backends.lxc:LxcBackend",
    "lxd": "sandbox.backends.lxd:LxdBackend",
    "docker": "sandbox.backends.docker:DockerBackend",
    "libvirt": "sandbox.backends.libvirt:LibvirtBackend",
}
#: the pip extra that brings each backend's SDK (`pip install 'sandbox[docker]'`)
EXTRAS = {"lxd": "lxd", "docker": "docker", "libvirt": "libvirt"}


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str, ws: Workspace, sink: EventSink = null_sink, remote: str | None = None) -> Backend:
    """The backend registered as `name`, imported on first use."""
    target = _REGISTRY.get(name)
    if target is None:
        raise UnsupportedOperation(
            f"backend {name!r} is not available yet",
            hint=f"available backends: {', '.join(backend_names())}",
        )
    module, _, cls = target.partition(":")
    try:
        backend_cls: type[Backend] = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise UnsupportedOperation(
                f"backend {name!r} is not available yet", hint=f"available: {', '.join(backend_names())}"
            ) from e
        extra = EXTRAS.get(name, name)
        raise BackendError(
            f"the {name} backend needs the Python package {e.name!r}, which is not installed",
            hint=f"pip install 'sandbox[{extra}]' (into sandbox's venv)",
        ) from e
    return backend_cls(ws, sink, remote)


def run(
    argv: list[str], timeout: float | None = 60, check_tool: str | None = None
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text output that turns a missing tool into a clear error."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        tool = check_tool or argv[0]
        raise BackendError(f"{tool} is not installed", hint=f"apt-get install {tool}") from e


class BackendRegistry:
    """Backends by name, made on first use (temporary shape until backends get their context)."""

    def __init__(self, ws: Workspace, sink: EventSink = null_sink) -> None:
        self.ws = ws
        self.sink = sink
        self._made: dict[tuple[str, str | None], Backend] = {}
        self._factories: dict[str, type[Backend]] = {}

    def register(self, name: str, factory: type[Backend]) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted({*backend_names(), *self._factories})

    def get(self, name: str, remote: str | None = None) -> Backend:
        key = (name, remote)
        if key not in self._made:
            factory = self._factories.get(name)
            self._made[key] = (
                factory(self.ws, self.sink, remote)
                if factory
                else get_backend(name, self.ws, self.sink, remote)
            )
        return self._made[key]
