"""The lxc backend on a host: `lxc` (one backend method per call, JSON in and out), `lxc-tty` and
`lxc-logs` (attached to the caller's terminal through `ssh -t`).

The methods are a fixed table; every name, digest and number is checked again here, so a request can
only ever be one of these backend calls. The backend is the same LxcBackend as on the control
machine, made with this host's runtime dir (HOST_ROOT/ws/WORKSPACE) and image store (HOST_ROOT/store).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.backends.base import BackendContext, ImageAccess, InstanceSpec
from sandbox.backends.lxc import LxcBackend
from sandbox.errors import SandboxError
from sandbox.events import Event
from sandbox.hostagent.main import host_root, op, read_request
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


def _network(net: object) -> Network:
    """The workspace's bridge and subnet, checked as the settings check them (both end up in the lxc
    config of every container: a newline there would add lines of the caller's choosing)."""
    if not isinstance(net, dict):
        raise BadRequest("bad network")
    bridge = _str({"bridge": net.get("bridge", "sandbox0")}, "bridge", BRIDGE)
    subnet = net.get("subnet", "10.213.0.0/24")
    try:
        ok = isinstance(subnet, str) and str(ipaddress.IPv4Network(subnet)) == subnet
    except ValueError:
        ok = False
    if not ok:
        raise BadRequest(f"bad subnet: {subnet!r}")
    return Network(bridge=bridge, subnet=str(subnet))


def _str(args: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise BadRequest(f"bad {key}: {v!r}")
    return v


def _int(args: dict[str, Any], key: str, default: int | None = None) -> int:
    v = args.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRequest(f"bad {key}: {v!r}")
    return v


class HostLxc:
    """The lxc backend of one workspace on this host, plus publishing of each instance's app."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        ws = _str(ctx, "ws", WS_ID)
        network = _network(ctx.get("network") or {})
        root = host_root()
        runtime = root / "ws" / ws
        runtime.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        self.events: list[dict[str, Any]] = []
        self.backend = LxcBackend(
            BackendContext(
                workspace_id=ws,
                runtime=runtime,
                tmp=runtime / "tmp",
                network=network,
                images=ImageAccess(ImageStore(root / "store")),
                sink=self._sink,
            )
        )

    def _sink(self, e: Event) -> None:
        self.events.append(e.to_dict())

    def _publish_file(self, name: str) -> Path:
        return self.backend.lxcpath / name / "publish.json"

    def _published(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._publish_file(name).read_text())
            return data
        except (OSError, ValueError):
            return None

    def _spec(self, args: dict[str, Any]) -> InstanceSpec:
        s = args.get("spec")
        if not isinstance(s, dict):
            raise BadRequest("bad spec")
        env_vars = s.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(
            isinstance(v, str) and ENV_KEY.fullmatch(k) for k, v in env_vars.items()
        ):
            raise BadRequest("bad env_vars")
        return InstanceSpec(
            name=_str(s, "name", INSTANCE),
            env=_str(s, "env", INSTANCE),
            index=_int(s, "index"),
            image=_str(s, "image", DIGEST),
            address=self._address(s.get("address")),
            env_vars=dict(env_vars),
            cpus=float(s["cpus"]) if s.get("cpus") is not None else None,
            memory=_int(s, "memory") if s.get("memory") is not None else None,
            pids=_int(s, "pids") if s.get("pids") is not None else None,
        )

    def _address(self, value: object) -> str:
        """An IPv4 address of the workspace's subnet (it is written into the container's lxc config)."""
        try:
            subnet = ipaddress.IPv4Network(self.backend.ctx.network.subnet)
            ok = isinstance(value, str) and str(ipaddress.IPv4Address(value)) == value
            ok = ok and ipaddress.IPv4Address(value) in subnet
        except ValueError:
            ok = False
        if not ok:
            raise BadRequest(f"bad address: {value!r}")
        return str(value)

    def _remember_publish(self, name: str, args: dict[str, Any], address: str) -> None:
        pub = args.get("publish")
        if pub is None:
            return
        port, app_port = _int(pub, "port"), _int(pub, "app_port")
        self._publish_file(name).write_text(
            json.dumps({"port": port, "app_port": app_port, "address": address})
        )

    # -- the methods -------------------------------------------------------------------------------
    def check(self, args: dict[str, Any]) -> None:
        self.backend.check()

    def prepare_image(self, args: dict[str, Any]) -> None:
        self.backend.prepare_image(_str(args, "digest", DIGEST))

    def create(self, args: dict[str, Any]) -> None:
        spec = self._spec(args)
        self.backend.create(spec)
        self._remember_publish(spec.name, args, str(spec.address))

    def clone(self, args: dict[str, Any]) -> None:
        spec = self._spec(args)
        self.backend.clone(_str(args, "src", INSTANCE), spec)
        self._remember_publish(spec.name, args, str(spec.address))

    def start(self, args: dict[str, Any]) -> None:
        name = _str(args, "name", INSTANCE)
        self.backend.start(name)
        pub = self._published(name)
        if pub is not None:
            publish(name, int(pub["port"]), str(pub["address"]), int(pub["app_port"]))

    def stop(self, args: dict[str, Any]) -> None:
        self.backend.stop(_str(args, "name", INSTANCE), float(args.get("timeout", 10.0)))

    def destroy(self, args: dict[str, Any]) -> None:
        name = _str(args, "name", INSTANCE)
        pub = self._published(name)
        if pub is not None:
            unpublish(name, int(pub["port"]), str(pub["address"]), int(pub["app_port"]))
        self.backend.destroy(name)

    def state(self, args: dict[str, Any]) -> str:
        return self.backend.state(_str(args, "name", INSTANCE))

    def exec(self, args: dict[str, Any]) -> dict[str, Any]:
        argv = args.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequest("bad argv")
        env = args.get("env") or {}
        user = args.get("user")
        timeout = args.get("timeout")
        r = self.backend.exec(
            _str(args, "name", INSTANCE),
            argv,
            user=str(user) if user is not None else None,
            env={str(k): str(v) for k, v in env.items()},
            timeout=float(timeout) if timeout is not None else None,
        )
        return {"code": r.code, "stdout": r.stdout, "stderr": r.stderr}

    def put_file(self, args: dict[str, Any]) -> None:
        path = args.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise BadRequest("bad path")
        self.backend.put_file(
            _str(args, "name", INSTANCE),
            path,
            base64.b64decode(str(args.get("data", ""))),
            _int(args, "mode"),
            _int(args, "uid"),
            _int(args, "gid"),
        )

    def snapshot(self, args: dict[str, Any]) -> dict[str, str]:
        return self.backend.snapshot(_str(args, "name", INSTANCE), _str(args, "snap", SNAP))

    def restore(self, args: dict[str, Any]) -> None:
        self.backend.restore(_str(args, "name", INSTANCE), _str(args, "snap", SNAP))

    def delete_snapshot(self, args: dict[str, Any]) -> None:
        self.backend.delete_snapshot(_str(args, "name", INSTANCE), _str(args, "snap", SNAP))

    def instances(self, args: dict[str, Any]) -> list[str]:
        return self.backend.instances()

    def images(self, args: dict[str, Any]) -> list[str]:
        return self.backend.images()

    def forget_image(self, args: dict[str, Any]) -> None:
        self.backend.forget_image(_str(args, "digest", DIGEST))

    def clean_stale(self, args: dict[str, Any]) -> list[str]:
        return self.backend.clean_stale()


METHODS: dict[str, Callable[[HostLxc, dict[str, Any]], Any]] = {
    name: getattr(HostLxc, name)
    for name in [
        "check",
        "prepare_image",
        "create",
        "clone",
        "start",
        "stop",
        "destroy",
        "state",
        "exec",
        "put_file",
        "snapshot",
        "restore",
        "delete_snapshot",
        "instances",
        "images",
        "forget_image",
        "clean_stale",
    ]
}


@op("lxc")
def lxc(argv: list[str]) -> Any:
    req = read_request()
    if not isinstance(req, dict) or req.get("method") not in METHODS:
        raise BadRequest(f"unknown method {req.get('method') if isinstance(req, dict) else req!r}")
    host = HostLxc(req.get("ctx") or {})
    args = req.get("args") or {}
    if not isinstance(args, dict):
        raise BadRequest("bad args")
    return {"result": METHODS[str(req["method"])](host, args), "events": host.events}


def _tty_request(argv: list[str]) -> tuple[HostLxc, dict[str, Any]]:
    if len(argv) != 1:
        raise BadRequest("expected one argument")
    req = json.loads(base64.urlsafe_b64decode(argv[0]))
    if not isinstance(req, dict) or not isinstance(req.get("args"), dict):
        raise BadRequest("bad request")
    return HostLxc(req.get("ctx") or {}), req["args"]


@op("lxc-tty")
def lxc_tty(argv: list[str]) -> Any:
    """An interactive command in an instance, on the terminal ssh -t gives this process."""
    host, args = _tty_request(argv)
    cmd = args.get("argv")
    if not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd) or not cmd:
        raise BadRequest("bad argv")
    user = args.get("user")
    r = host.backend.exec(
        _str(args, "name", INSTANCE), cmd, user=str(user) if user else None, interactive=True
    )
    sys.stdout.flush()
    os._exit(r.code)


@op("lxc-logs")
def lxc_logs(argv: list[str]) -> Any:
    """The instance's app logs (followed with `follow`), streamed to ssh's stdout."""
    host, args = _tty_request(argv)
    cmd = host.backend.logs_argv(
        _str(args, "name", INSTANCE), bool(args.get("follow")), _int(args, "lines", 100)
    )
    os.execvp(cmd[0], cmd)
