"""Where an instance on a host is reachable: HOST_ADDRESS:PUBLISHED_PORT.

The published port follows from the instance's address, which the control machine's state hands out
once per workspace (unique), so two instances never share a port on one host, and nothing needs to
be recorded on the host to find it again. With the default /24 subnet the ports are 20001-20254.
"""

from __future__ import annotations

import ipaddress

from sandbox.errors import SandboxError

PUBLISH_BASE = 20000


def published_port(address: str, subnet: str) -> int:
    """The port on its host at which the instance with `address` (in `subnet`) is published."""
    net = ipaddress.IPv4Network(subnet)
    offset = int(ipaddress.IPv4Address(address)) - int(net.network_address)
    # neither the network nor the broadcast address is an instance's
    if not 0 < offset < net.num_addresses - 1 or PUBLISH_BASE + offset > 65535:
        raise SandboxError(
            f"instance address {address} cannot be published on a host (subnet {subnet})",
            hint="hosts need a network.subnet of at most 45000 addresses, e.g. a /24",
        )
    return PUBLISH_BASE + offset
