"""The lxc backend on a host: `lxc` (one backend method per call, JSON in and out), `lxc-tty` and
`lxc-logs` (attached to the caller's terminal through `ssh -t`).

The methods are a fixed table; every name, digest and number is checked again here, so a request can
only ever be one of these backend calls. The backend is the same LxcBackend as on the control
machine, made with this host's runtime dir (HOST_ROOT/ws/WORKSPACE) and image store (HOST_ROOT/store).
"""

from __future__ import annotations

import base64
import os
import sys
from typing import Any

from sandbox.backends.base import InstanceSpec
from sandbox.backends.lxc import LxcBackend
from sandbox.hostagent.instancereq import (
    DIGEST,
    GC_METHODS,
    INSTANCE,
    SNAP,
    BadRequest,
    HostOps,
    Publishing,
    dispatch,
    host_context,
    int_arg,
    method_table,
    spec_arg,
    str_arg,
    tty_request,
)
from sandbox.hostagent.main import op


class HostLxc(HostOps):
    """The lxc backend of one workspace on this host, plus publishing of each instance's app."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        super().__init__()
        self.backend = self.keeper = LxcBackend(host_context(ctx, self._sink))
        self.publishing = Publishing(lambda name: self.backend.lxcpath / name)

    def _spec(self, args: dict[str, Any]) -> InstanceSpec:
        return spec_arg(args, self.backend.ctx.network.subnet)

    # -- the methods -------------------------------------------------------------------------------
    def check(self, args: dict[str, Any]) -> None:
        self.backend.check()

    def prepare_image(self, args: dict[str, Any]) -> None:
        self.backend.prepare_image(str_arg(args, "digest", DIGEST))

    def create(self, args: dict[str, Any]) -> None:
        spec = self._spec(args)
        self.backend.create(spec)
        self.publishing.remember(spec.name, args, str(spec.address))

    def clone(self, args: dict[str, Any]) -> None:
        spec = self._spec(args)
        self.backend.clone(str_arg(args, "src", INSTANCE), spec)
        self.publishing.remember(spec.name, args, str(spec.address))

    def start(self, args: dict[str, Any]) -> None:
        name = str_arg(args, "name", INSTANCE)
        self.backend.start(name)
        self.publishing.start(name)

    def stop(self, args: dict[str, Any]) -> None:
        self.backend.stop(str_arg(args, "name", INSTANCE), float(args.get("timeout", 10.0)))

    def destroy(self, args: dict[str, Any]) -> None:
        name = str_arg(args, "name", INSTANCE)
        self.publishing.stop(name)
        self.backend.destroy(name)

    def state(self, args: dict[str, Any]) -> str:
        return self.backend.state(str_arg(args, "name", INSTANCE))

    def exec(self, args: dict[str, Any]) -> dict[str, Any]:
        argv = args.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequest("bad argv")
        env = args.get("env") or {}
        user = args.get("user")
        timeout = args.get("timeout")
        r = self.backend.exec(
            str_arg(args, "name", INSTANCE),
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
            str_arg(args, "name", INSTANCE),
            path,
            base64.b64decode(str(args.get("data", ""))),
            int_arg(args, "mode"),
            int_arg(args, "uid"),
            int_arg(args, "gid"),
        )

    def snapshot(self, args: dict[str, Any]) -> dict[str, str]:
        return self.backend.snapshot(str_arg(args, "name", INSTANCE), str_arg(args, "snap", SNAP))

    def restore(self, args: dict[str, Any]) -> None:
        self.backend.restore(str_arg(args, "name", INSTANCE), str_arg(args, "snap", SNAP))

    def delete_snapshot(self, args: dict[str, Any]) -> None:
        self.backend.delete_snapshot(str_arg(args, "name", INSTANCE), str_arg(args, "snap", SNAP))

    def instances(self, args: dict[str, Any]) -> list[str]:
        return self.backend.instances()


INSTANCE_METHODS = ("check", "prepare_image", "create", "clone", "start", "stop", "destroy", "state")
SNAPSHOT_METHODS = ("snapshot", "restore", "delete_snapshot")
METHODS = method_table(
    HostLxc, (*INSTANCE_METHODS, "exec", "put_file", *SNAPSHOT_METHODS, "instances", *GC_METHODS)
)


@op("lxc")
def lxc(argv: list[str]) -> Any:
    return dispatch(METHODS, HostLxc)


def _tty_request(argv: list[str]) -> tuple[HostLxc, dict[str, Any]]:
    ctx, args = tty_request(argv)
    return HostLxc(ctx), args


@op("lxc-tty")
def lxc_tty(argv: list[str]) -> Any:
    """An interactive command in an instance, on the terminal ssh -t gives this process."""
    host, args = _tty_request(argv)
    cmd = args.get("argv")
    if not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd) or not cmd:
        raise BadRequest("bad argv")
    user = args.get("user")
    r = host.backend.exec(
        str_arg(args, "name", INSTANCE), cmd, user=str(user) if user else None, interactive=True
    )
    sys.stdout.flush()
    os._exit(r.code)


@op("lxc-logs")
def lxc_logs(argv: list[str]) -> Any:
    """The instance's app logs (followed with `follow`), streamed to ssh's stdout."""
    host, args = _tty_request(argv)
    cmd = host.backend.logs_argv(
        str_arg(args, "name", INSTANCE), bool(args.get("follow")), int_arg(args, "lines", 100)
    )
    os.execvp(cmd[0], cmd)
