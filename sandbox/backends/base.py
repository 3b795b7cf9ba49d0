"""The backend contract, the context backends are made with, and the registry of backends by name.

A backend runs *instances* (one container or VM each) of an image from the
store. It knows nothing of envs, profiles or routers: the env layer owns those
and calls the backend through this contract. A backend gets everything it
needs when it is made (a `BackendContext`: runtime dir, network, images, event
sink); it never loads settings or opens the store itself. Backends are imported
lazily by the `BackendRegistry`, so a user needs only the SDK of the backend
they use; sandbox/envs/registry.py makes the registry of a workspace.
"""

from __future__ import annotations

import abc
import importlib
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from sandbox.errors import SandboxError, ToolMissing
from sandbox.events import EventSink, null_sink
from sandbox.fsutil import pid_alive, remove_tree
from sandbox.imageformats import tools
from sandbox.settings import Network
from sandbox.store import ImageStore


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
    app_port: int | None = None  # the port the image's app listens on (a host publishes it)


@dataclass(frozen=True)
class ExecResult:
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class ImageAccess:
    """How a backend reaches images: the store, and derived images the layer above makes."""

    store: ImageStore
    #: the VM flavour of an image (kernel, init, guest agent added): digest -> derived digest.
    #: Provided by the env layer (it calls sandbox.build.vmflavour); None where no VM backend is used.
    derive_vm: Callable[[str, EventSink], str] | None = None


@dataclass(frozen=True)
class BackendContext:
    """What every backend is made with (one per workspace; see sandbox/envs/registry.py)."""

    workspace_id: str  # ws.id: labels / names of what the backend creates
    runtime: Path  # ws.runtime: the backends' state dirs (lxc path, rootfs, docker, libvirt)
    tmp: Path  # ws.tmp
    network: Network  # sandbox.settings.Network (bridge, subnet)
    images: ImageAccess
    sink: EventSink = null_sink


class Backend(abc.ABC):
    """The contract every backend implements (create from image, start, stop, destroy, exec …)."""

    name: ClassVar[str]
    #: what this backend can do beyond the basics: "snapshot", "clone", "init" (systemd: cron and
    #: services run), "logs", "static-address" (uses InstanceSpec.address; otherwise the backend
    #: picks the address and envs asks `address()` after start), "remote" (profile `remote:`)
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ctx: BackendContext, remote: str | None = None) -> None:
        self.ctx = ctx
        self.sink = ctx.sink
        self.store = ctx.images.store
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

    def published(self, spec: InstanceSpec) -> str | None:
        """HOST:PORT where the instance's app is reachable from this machine, when that is not its own
        address and the app's port (an instance on a production host); None otherwise."""
        return None

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

    # -- gc's contract: what the backend holds, so `sandbox gc` can remove what no env uses --------
    def instances(self) -> list[str]:
        """Names of all instances this backend holds for the workspace (to find orphans); default none."""
        return []

    def images(self) -> list[str]:
        """Digests of the image copies this backend keeps (unpacked, imported, made into disks).

        gc calls `forget_image` on those no env uses. Default: none (the backend keeps no copies,
        or its daemon manages them).
        """
        return []

    def forget_image(self, digest: str) -> None:  # noqa: B027  (optional: not every backend keeps copies)
        """Drop the backend's copy of an image no instance uses any more; default: nothing to drop."""

    def clean_stale(self) -> list[str]:
        """Remove temp dirs and files that dead processes left behind; returns the paths removed.

        Default: none (the backend leaves no temp files of its own).
        """
        return []


#: temp names backends make beside what they build: .KIND-PID-... (PID: the process making it)
_STALE = re.compile(r"\.([a-z]+)-(\d+)-")


def remove_stale_temps(dirs: list[Path], kinds: tuple[str, ...]) -> list[str]:
    """Remove `.KIND-PID-*` entries of `dirs` whose process is gone (for `Backend.clean_stale`)."""
    removed = []
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            m = _STALE.match(p.name)
            if m and m.group(1) in kinds and not pid_alive(int(m.group(2))):
                if p.is_dir() and not p.is_symlink():
                    remove_tree(p)
                else:
                    p.unlink(missing_ok=True)
                removed.append(str(p))
    return removed


#: the built-in backends, imported on first use
BUILTIN: dict[str, str | type[Backend]] = {
    "lxc": "sandbox.backends.lxc:LxcBackend",
    "lxd": "sandbox.backends.lxd:LxdBackend",
    "docker": "sandbox.backends.docker:DockerBackend",
    "libvirt": "sandbox.backends.libvirt:LibvirtBackend",
}
#: the pip extra that brings each backend's SDK (`pip install 'sandbox[docker]'`)
EXTRAS = {"lxd": "lxd", "docker": "docker", "libvirt": "libvirt"}


class BackendRegistry:
    """Backends by name, made on first use with one context (tests register fakes)."""

    def __init__(
        self, ctx: BackendContext, factories: Mapping[str, str | type[Backend]] | None = None
    ) -> None:
        self.ctx = ctx
        self._factories: dict[str, str | type[Backend]] = dict(BUILTIN if factories is None else factories)
        self._made: dict[tuple[str, str | None], Backend] = {}

    def register(self, name: str, factory: str | type[Backend]) -> None:
        """Make `name` a backend: a Backend class, or "module:Class" imported on first use."""
        self._factories[name] = factory
        for key in [k for k in self._made if k[0] == name]:
            del self._made[key]

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str, remote: str | None = None) -> Backend:
        """The backend registered as `name` (for `remote`, None: this host), made once."""
        made = self._made.get((name, remote))
        if made is None:
            made = self._made[(name, remote)] = self._class(name)(self.ctx, remote)
        return made

    def _class(self, name: str) -> type[Backend]:
        factory = self._factories.get(name)
        if factory is None:
            raise UnsupportedOperation(
                f"backend {name!r} is not available yet",
                hint=f"available backends: {', '.join(self.names())}",
            )
        if not isinstance(factory, str):
            return factory
        module, _, cls = factory.partition(":")
        try:
            backend_cls: type[Backend] = getattr(importlib.import_module(module), cls)
        except ModuleNotFoundError as e:
            if e.name == module:
                raise UnsupportedOperation(
                    f"backend {name!r} is not available yet", hint=f"available: {', '.join(self.names())}"
                ) from e
            extra = EXTRAS.get(name, name)
            raise BackendError(
                f"the {name} backend needs the Python package {e.name!r}, which is not installed",
                hint=f"pip install 'sandbox[{extra}]' (into sandbox's venv)",
            ) from e
        return backend_cls


def run(
    argv: list[str], timeout: float | None = 60, check_tool: str | None = None
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text output that turns a missing tool into a clear BackendError."""
    try:
        return tools.run(argv, timeout, check_tool)
    except ToolMissing as e:
        raise BackendError(e.message, hint=e.hint) from e
