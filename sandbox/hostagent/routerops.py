"""The router on a router host (profile `router.host`): `router` runs the same OwnRouter as on the
control machine (an nginx of the env's own, `nginx -t` before every reload, the running config kept
when a new one is rejected, swaps through its control socket with no reload); `lock` is the deploy
lock that stops two control machines from promoting one env at once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sandbox.fsutil import atomic_write, file_lock
from sandbox.hostagent.instancereq import INSTANCE, WS_ID, BadRequest, str_arg
from sandbox.hostagent.main import host_root, op, read_request
from sandbox.routing.own import OwnRouter
from sandbox.routing.render import ROUTER_GROUP, ROUTER_USER, RouterConfig, check_config

ENV = INSTANCE


def _strs(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRequest(f"bad {what}")
    return tuple(v)


def router_config(d: Any) -> RouterConfig:
    """A RouterConfig from its JSON form (every value is checked again by the renderer)."""
    if not isinstance(d, dict):
        raise BadRequest("bad router config")
    maintenance = d.get("maintenance")
    return RouterConfig(
        env=str_arg(d, "env", ENV),
        listen=str(d.get("listen")),
        port=int(d.get("port", 0)),
        server_name=str(d.get("server_name", "_")),
        backends=_strs(d.get("backends", []), "backends"),
        drain_timeout=float(d.get("drain_timeout", 30.0)),
        maintenance=None if maintenance is None else _strs(maintenance, "maintenance"),
        readonly=bool(d.get("readonly", False)),
        remote=bool(d.get("remote", True)),
    )


def _routers(ws: str) -> Path:
    root = host_root()
    d = root / "ws" / ws / "routers"
    d.mkdir(parents=True, exist_ok=True)
    for p in (root, root / "ws", root / "ws" / ws, d):  # nginx's workers (nobody) reach the page
        os.chmod(p, 0o755)
    return d


@op("router")
def router(argv: list[str]) -> Any:
    req = read_request()
    if not isinstance(req, dict):
        raise BadRequest("bad request")
    r = OwnRouter(_routers(str_arg(req, "ws", WS_ID)), str_arg(req, "env", ENV))
    method = req.get("method")
    if method == "prefix":  # where the control side renders the config for
        return str(r.prefix)
    if method == "apply":
        cfg, text = router_config(req.get("cfg")), req.get("text")
        if not isinstance(text, str):
            raise BadRequest("bad config text")
        # rendered on the control machine (no template engine here) for this prefix; the values it
        # came from are checked again, and nginx -t checks the text before any reload
        check_config(cfg, prefix=r.prefix, user=ROUTER_USER, group=ROUTER_GROUP)
        r.serve(cfg, text, ROUTER_USER)
        return None
    if method == "stop":
        r.stop(float(req.get("timeout", 10.0)))
        return None
    if method == "remove":
        r.remove()
        return None
    if method == "abort":
        r.abort(_strs(req.get("backends", []), "backends"))
        return None
    if method == "drain":
        backend = req.get("backend")
        return r.drain(float(req.get("timeout", 30.0)), str(backend) if backend is not None else None)
    raise BadRequest(f"unknown router method {method!r}")


class LockHeld(BadRequest):
    """Another control machine holds the env's deploy lock on the router host."""


@op("lock")
def lock(argv: list[str]) -> Any:
    """take | release the deploy lock of (workspace, env) for `holder` (control machine + workspace).
    The same holder may take it again (a resumed promotion); another one is refused, named."""
    req = read_request()
    if not isinstance(req, dict):
        raise BadRequest("bad request")
    ws, env = str_arg(req, "ws", WS_ID), str_arg(req, "env", ENV)
    holder = str(req.get("holder", ""))[:200]
    d = host_root() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{ws}-{env}.json"
    with file_lock(d / ".lock"):
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = None
        if req.get("action") == "release":
            if current and current.get("holder") == holder:
                path.unlink()
            return None
        if current and current.get("holder") != holder:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(current.get("ts", 0))))
            raise LockHeld(
                f"{env} is being deployed by another control machine "
                f"({current.get('holder')}, since {since} UTC)",
                hint=f"wait for it to finish; if that machine is gone, remove {path} on the router host",
            )
        atomic_write(path, json.dumps({"holder": holder, "ts": time.time()}).encode())
    return None
