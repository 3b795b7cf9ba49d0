"""What the instance ops of the host agent (`lxc`, `libvirt`) share: every value of a request checked
before it names a path or reaches a tool, the workspace's backend context on this host, and the
publishing of each instance's app on the host's address (publish.py), remembered per instance.

Names match `[a-z0-9][a-z0-9-]{0,62}`, digests `sha256:<64 hex>`, the workspace id
`[A-Za-z0-9_-]{1,64}`, addresses are IPv4 addresses of the workspace's subnet; anything else is a
BadRequest before anything is touched.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sandbox.backends.base import BackendContext, ImageAccess, InstanceSpec
from sandbox.errors import SandboxError
from sandbox.events import Event, EventSink
from sandbox.hostagent.main import host_root, read_request
from sandbox.hostagent.publish import publish, unpublish
from sandbox.settings import Network
from sandbox.store import ImageStore

WS_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
INSTANCE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
SNAP = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # as the profile's; unquoted in the instance's env file
BRIDGE = re.compile(r"[a-z][a-z0-9_-]{0,14}")  # as settings.Network.bridge


class BadRequest(SandboxError):
    """A request the host agent refuses (a bug or a hostile caller)."""


class Keeper(Protocol):
    """What keeps an engine's image copies and temp files on this host (gc's methods)."""

    def images(self) -> list[str]: ...

    def forget_image(self, digest: str) -> None: ...

    def clean_stale(self) -> list[str]: ...


class HostOps:
    """The instances of one workspace on this host, for one request; its events go back with the
    answer. gc's methods are the same for every engine: on `keeper`."""

    keeper: Keeper

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _sink(self, e: Event) -> None:
        self.events.append(e.to_dict())

    def images(self, args: dict[str, Any]) -> list[str]:
        return self.keeper.images()

    def forget_image(self, args: dict[str, Any]) -> None:
        self.keeper.forget_image(str_arg(args, "digest", DIGEST))

    def clean_stale(self, args: dict[str, Any]) -> list[str]:
        return self.keeper.clean_stale()


H = TypeVar("H", bound=HostOps)
#: the methods every instance op has for `sandbox gc`
GC_METHODS = ("images", "forget_image", "clean_stale")


def method_table(cls: type[H], names: tuple[str, ...]) -> dict[str, Callable[[H, dict[str, Any]], Any]]:
    """The methods a request may name, by name (nothing else of `cls` can be called)."""
    return {name: getattr(cls, name) for name in names}


def dispatch(methods: Mapping[str, Callable[[H, dict[str, Any]], Any]], make: Callable[[Any], H]) -> Any:
    """Run the method a request (JSON on stdin) names, if it is one of `methods`, on `make(ctx)`."""
    req = read_request()
    if not isinstance(req, dict) or req.get("method") not in methods:
        raise BadRequest(f"unknown method {req.get('method') if isinstance(req, dict) else req!r}")
    host = make(req.get("ctx") or {})
    args = req.get("args") or {}
    if not isinstance(args, dict):
        raise BadRequest("bad args")
    return {"result": methods[str(req["method"])](host, args), "events": host.events}


def str_arg(args: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise BadRequest(f"bad {key}: {v!r}")
    return v


def int_arg(args: dict[str, Any], key: str, default: int | None = None) -> int:
    v = args.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRequest(f"bad {key}: {v!r}")
    return v


def network_arg(net: object) -> Network:
    """The workspace's bridge and subnet, checked as the settings check them (both end up in the lxc
    config of every container and in a VM's domain: a newline there would add lines of the caller's
    choosing)."""
    if not isinstance(net, dict):
        raise BadRequest("bad network")
    bridge = str_arg({"bridge": net.get("bridge", "sandbox0")}, "bridge", BRIDGE)
    subnet = net.get("subnet", "10.213.0.0/24")
    try:
        ok = isinstance(subnet, str) and str(ipaddress.IPv4Network(subnet)) == subnet
    except ValueError:
        ok = False
    if not ok:
        raise BadRequest(f"bad subnet: {subnet!r}")
    return Network(bridge=bridge, subnet=str(subnet))


def host_context(ctx: dict[str, Any], sink: EventSink) -> BackendContext:
    """The backend context of workspace ctx["ws"] on this host: its runtime dir HOST_ROOT/ws/WS, the
    host's image store HOST_ROOT/store (shared by workspaces: blobs are content-addressed)."""
    ws = str_arg(ctx, "ws", WS_ID)
    network = network_arg(ctx.get("network") or {})
    root = host_root()
    runtime = root / "ws" / ws
    runtime.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    return BackendContext(
        workspace_id=ws,
        runtime=runtime,
        tmp=runtime / "tmp",
        network=network,
        images=ImageAccess(ImageStore(root / "store")),
        sink=sink,
    )


def address_arg(value: object, subnet: str) -> str:
    """An IPv4 address of the workspace's subnet (it is written into the instance's config)."""
    try:
        ok = isinstance(value, str) and str(ipaddress.IPv4Address(value)) == value
        ok = ok and ipaddress.IPv4Address(value) in ipaddress.IPv4Network(subnet)
    except ValueError:
        ok = False
    if not ok:
        raise BadRequest(f"bad address: {value!r}")
    return str(value)


def spec_arg(args: dict[str, Any], subnet: str) -> InstanceSpec:
    s = args.get("spec")
    if not isinstance(s, dict):
        raise BadRequest("bad spec")
    env_vars = s.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(
        isinstance(v, str) and ENV_KEY.fullmatch(k) for k, v in env_vars.items()
    ):
        raise BadRequest("bad env_vars")
    return InstanceSpec(
        name=str_arg(s, "name", INSTANCE),
        env=str_arg(s, "env", INSTANCE),
        index=int_arg(s, "index"),
        image=str_arg(s, "image", DIGEST),
        address=address_arg(s.get("address"), subnet),
        env_vars=dict(env_vars),
        cpus=float(s["cpus"]) if s.get("cpus") is not None else None,
        memory=int_arg(s, "memory") if s.get("memory") is not None else None,
        pids=int_arg(s, "pids") if s.get("pids") is not None else None,
    )


class Publishing:
    """Each instance's app published on this host's addresses: what to publish is remembered in the
    instance's dir at create (publish.json), published at start and removed at destroy."""

    def __init__(self, instance_dir: Callable[[str], Path]) -> None:
        self.instance_dir = instance_dir

    def _file(self, name: str) -> Path:
        return self.instance_dir(name) / "publish.json"

    def _published(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._file(name).read_text())
            return data
        except (OSError, ValueError):
            return None

    @staticmethod
    def checked(args: dict[str, Any]) -> tuple[int, int] | None:
        """(published port, app port) of a request's `publish`, if it has one."""
        pub = args.get("publish")
        if pub is None:
            return None
        if not isinstance(pub, dict):
            raise BadRequest("bad publish")
        port, app_port = int_arg(pub, "port"), int_arg(pub, "app_port")
        if not (1 <= port <= 65535 and 1 <= app_port <= 65535):
            raise BadRequest(f"bad publish: {port} → {app_port}")
        return port, app_port

    def remember(self, name: str, args: dict[str, Any], address: str) -> None:
        pub = self.checked(args)
        if pub is not None:
            data = {"port": pub[0], "app_port": pub[1], "address": address}
            self._file(name).write_text(json.dumps(data))

    def start(self, name: str) -> None:
        pub = self._published(name)
        if pub is not None:
            publish(name, int(pub["port"]), str(pub["address"]), int(pub["app_port"]))

    def stop(self, name: str) -> None:
        pub = self._published(name)
        if pub is not None:
            unpublish(name, int(pub["port"]), str(pub["address"]), int(pub["app_port"]))


def tty_request(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ctx, args) of an op attached to a terminal: one base64 JSON argument."""
    if len(argv) != 1:
        raise BadRequest("expected one argument")
    req = json.loads(base64.urlsafe_b64decode(argv[0]))
    if not isinstance(req, dict) or not isinstance(req.get("args"), dict):
        raise BadRequest("bad request")
    ctx = req.get("ctx") or {}
    if not isinstance(ctx, dict):
        raise BadRequest("bad ctx")
    return ctx, req["args"]
