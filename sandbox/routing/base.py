"""The router contract: one `RouterDriver` protocol, and the choice of driver for an env.

An env's router is either an nginx process of its own (`OwnRouter`, own.py) or include
files in the host's nginx (`SystemRouter`, system.py). The env layer renders a
`RouterConfig` from its state and hands it to the driver; it never knows which kind runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from sandbox.routing.render import RouterConfig
from sandbox.routing.system import SystemRouter, system_nginx_pid
from sandbox.settings import Routers

RouterKind = Literal["own", "system"]


class RouterDriver(Protocol):
    """What the env layer and the promotion ask of a router."""

    env: str

    def apply(self, cfg: RouterConfig, user: str = "nobody") -> None:
        """Serve `cfg`: its backends and mode are set through the control socket (no reload); the
        config is written, checked and reloaded only when more than its backends and mode changed (a
        failed check keeps the running one)."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving the env (the config stays, so `apply` brings it back)."""

    def remove(self) -> None:
        """Stop serving the env and remove everything of its router."""

    def drain(self, timeout: float, backend: str | None = None) -> bool:
        """Wait until the unrouted `backend` ("ADDR:PORT") has no request in flight, and requests
        that started before the last reload are done; False on timeout."""

    def abort(self, backends: Sequence[str]) -> None:
        """Abort the router's connections to unrouted `backends` on a host that died (its requests in
        flight fail at once; nginx retries the idempotent ones elsewhere)."""


def router_kind(s: Routers) -> RouterKind:
    """What `routers.nginx` means on this host now (auto: system when that nginx runs)."""
    if s.nginx == "auto":
        return "system" if system_nginx_pid(s) and Path(s.include_dir).is_dir() else "own"
    return "system" if s.nginx == "system" else "own"


def router_for(s: Routers, root: Path, env: str, kind: RouterKind, workspace: str) -> RouterDriver:
    """The driver of env `env`'s router of `kind` (router dirs live under `root`)."""
    from sandbox.routing.own import OwnRouter

    return SystemRouter(s, root, env, workspace) if kind == "system" else OwnRouter(root, env)
