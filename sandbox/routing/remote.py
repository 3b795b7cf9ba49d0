"""The router on another machine (profile `router.host`): the same own-nginx driver, run there by the
host agent (sandbox/hostagent/routerops.py). Each call is one short command over the multiplexed ssh
connection (a swap costs a few ms more than locally, and still reloads nothing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandbox.hosts.agent import HostAgent
from sandbox.routing.render import ROUTER_GROUP, ROUTER_USER, RouterConfig, render_nginx_conf


class RemoteRouter:
    def __init__(self, agent: HostAgent, workspace_id: str, env: str) -> None:
        self.agent = agent
        self.ws = workspace_id
        self.env = env
        self._prefix: str | None = None

    def _call(self, method: str, wait: float | None = 120, **args: Any) -> Any:
        request = {"ws": self.ws, "env": self.env, "method": method, **args}
        return self.agent.call("router", request=request, timeout=wait)

    def apply(self, cfg: RouterConfig, user: str = "nobody") -> None:
        """Rendered here (the host has no template engine), checked and served there."""
        if self._prefix is None:
            self._prefix = str(self._call("prefix"))
        text = render_nginx_conf(cfg, Path(self._prefix), ROUTER_USER, ROUTER_GROUP)
        self._call("apply", cfg={**dataclasses.asdict(cfg), "ports": []}, text=text)

    def stop(self, timeout: float = 10.0) -> None:
        self._call("stop", timeout + 30, timeout=timeout)

    def remove(self) -> None:
        self._call("remove")

    def drain(self, timeout: float, backend: str | None = None) -> bool:
        return bool(self._call("drain", timeout + 30, timeout=timeout, backend=backend))

    def abort(self, backends: Sequence[str]) -> None:
        self._call("abort", backends=list(backends))

    def lock(self, holder: str, take: bool = True) -> None:
        """The env's deploy lock on the router host (two control machines never promote at once)."""
        self.agent.call(
            "lock",
            request={
                "ws": self.ws,
                "env": self.env,
                "holder": holder,
                "action": "take" if take else "release",
            },
        )
