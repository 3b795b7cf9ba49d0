"""The router on another machine (profile `router.host`): the same own-nginx driver, run there by the
host agent (sandbox/hostagent/routerops.py). Each call is one short command over the multiplexed ssh
connection (a swap costs a few ms more than locally, and still reloads nothing)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sandbox.hosts.agent import HostAgent
from sandbox.routing.render import RouterConfig


class RemoteRouter:
    def __init__(self, agent: HostAgent, workspace_id: str, env: str) -> None:
        self.agent = agent
        self.ws = workspace_id
        self.env = env

    def _call(self, method: str, wait: float | None = 120, **args: Any) -> Any:
        request = {"ws": self.ws, "env": self.env, "method": method, **args}
        return self.agent.call("router", request=request, timeout=wait)

    def apply(self, cfg: RouterConfig, user: str = "nobody") -> None:
        self._call("apply", cfg={**dataclasses.asdict(cfg), "ports": []})

    def stop(self, timeout: float = 10.0) -> None:
        self._call("stop", timeout + 30, timeout=timeout)

    def remove(self) -> None:
        self._call("remove")

    def drain(self, timeout: float, backend: str | None = None) -> bool:
        return bool(self._call("drain", timeout + 30, timeout=timeout, backend=backend))

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
