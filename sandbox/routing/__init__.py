"""The router in front of an env's instances: the `RouterDriver` contract, its own-nginx and
system-nginx drivers, and the pure renderer of their configs. Knows nothing of envs or
promotions; the env layer renders a `RouterConfig` from its state and applies it."""

from sandbox.routing.base import RouterDriver, RouterKind, router_for, router_kind
from sandbox.routing.nginx import RouterError, port_in_use
from sandbox.routing.render import PortForward, RouterConfig

__all__ = [
    "PortForward",
    "RouterConfig",
    "RouterDriver",
    "RouterError",
    "RouterKind",
    "port_in_use",
    "router_for",
    "router_kind",
]
