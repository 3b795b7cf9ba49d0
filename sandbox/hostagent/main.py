"""The host agent's entry: `python3 AGENT.pyz OP [ARGS...]`.

Requests that carry data read one JSON document from stdin (or a byte stream, for blobs); every
answer is one JSON document on stdout. An expected error is `{"error": CLASS, "message", "hint"}`
with exit 3, so the control side raises it again with the host's name; anything else is a crash
(exit 1, traceback on stderr).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError

#: where the agent keeps its state on a host: the image store (shared by workspaces: blobs are
#: content-addressed) and one runtime dir per workspace
HOST_ROOT = "/var/lib/sandbox-host"
ERROR_EXIT = 3


class AgentUsage(SandboxError):
    """A request the agent refuses before touching anything: an unknown op or a malformed argument
    (the control side and the agent are of different versions, or something forged the request)."""


def host_root() -> Path:
    """HOST_ROOT, or $SANDBOX_HOST_ROOT (tests and test hosts keep their state in a dir of theirs)."""
    return Path(os.environ.get("SANDBOX_HOST_ROOT") or HOST_ROOT)


#: op → the module that registers it (imported when that op runs)
MODULES = {
    "ping": "ops",
    "caps": "storeops",
    "have": "storeops",
    "recv-image": "imagerecv",
    "lxc": "lxcops",
    "docker-load": "dockerops",
    "docker-ping": "dockerops",
    "lxd-trust": "lxdops",
    "lxd-import": "lxdops",
    "lxd-init": "lxdops",
    "lxd-publish": "lxdpublish",
    "lxc-tty": "lxcops",
    "lxc-logs": "lxcops",
    "libvirt": "libvirtops",
    "libvirt-logs": "libvirtops",
    "host-check": "hostcheck",
    "router": "routerops",
    "lock": "routerops",
    "session": "session",
}

Op = Callable[[list[str]], Any]
OPS: dict[str, Op] = {}


def op(name: str) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        OPS[name] = fn
        return fn

    return register


#: the request of the op running in a session (sandbox/hostagent/session.py), instead of stdin
SESSION_REQUEST: list[Any] = []


def read_request() -> Any:
    """The op's request: one JSON document on stdin, or the one its session line carried."""
    if SESSION_REQUEST:
        return SESSION_REQUEST[-1]
    return json.loads(sys.stdin.buffer.read() or b"null")


def run_op(args: list[str]) -> tuple[int, dict[str, Any]]:
    """(exit code, answer document) of op `args[0]` with its arguments `args[1:]`; a crash (an
    unexpected exception) is raised."""
    module = MODULES.get(args[0]) if args else None
    if module is not None:  # only the module of this op: a request pays for its own imports only
        importlib.import_module(f"sandbox.hostagent.{module}")
    if not args or args[0] not in OPS:
        return ERROR_EXIT, {"error": "AgentUsage", "message": f"unknown op {args[:1]!r}", "hint": None}
    try:
        result = OPS[args[0]](args[1:])
    except SandboxError as e:
        return ERROR_EXIT, e.to_dict()
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # a malformed value in the request
        return ERROR_EXIT, AgentUsage(
            f"malformed request to {args[0]}: {type(e).__name__}: {e}"[:500]
        ).to_dict()
    return 0, {"ok": result}


def main(argv: list[str] | None = None) -> int:
    code, doc = run_op(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(json.dumps(doc) + "\n")
    return code
