"""What the lxd backend asks LXD for: instance requests, limits, devices, names (pure; unit-tested).

An instance is unprivileged (LXD's default idmap), gets one `routed` NIC with sandbox's address
for it (LXD configures the address inside before init runs and routes it from the host, so no
bridge and no DHCP are needed, and it coexists with LXC instances on the same subnet: the host
holds a /32 route per LXD instance, more specific than the bridge's subnet route), one disk
device per profile mount, and `user.sandbox.*` keys that tag it as this workspace's.
"""

from __future__ import annotations

import math
import socket
from typing import Any

from sandbox.backends.base import InstanceSpec

WORKSPACE_KEY = "user.sandbox.workspace"
ENV_KEY = "user.sandbox.env"
IMAGE_KEY = "user.sandbox.image"
ADDRESS_KEY = "user.sandbox.address"
NIC = "eth0"
SANDBOX_POOL = "sandbox"  # used when it exists; made by scripts/backends.sh
MOUNT_PREFIX = "sbx-mount-"
#: the proxy device that published an instance's app before sandbox published by DNAT (the host agent
#: replaces and removes it: sandbox/hostagent/lxdpublish.py)
PUBLISH_DEVICE = "sbx-publish"
#: the restricted LXD project of sandbox's instances on a production host (sandbox/hostagent/lxdops.py
#: makes it; the control machine's client certificate is trusted for it alone)
HOST_PROJECT = "sandbox"
#: what the control machine's certificate may do in HOST_PROJECT, which the host agent makes (LXD
#: 5.0's keys; any other `restricted.*` key defaults to block): containers only, unprivileged, no
#: nesting, no raw.lxc or other low-level keys, disks only from a storage pool (the root disk), no
#: NIC that names a network or a host interface (`restricted.networks.access` names none that can
#: exist; sandbox's routed NIC has no parent), snapshots (`sandbox snapshot`); no proxy devices
#: (one can connect to LXD's own unix socket, which answers as root: apps are published by the host
#: agent's DNAT rules, sandbox/hostagent/lxdpublish.py).
PROJECT_CONFIG = {
    "features.images": "true",
    "features.profiles": "true",
    "features.storage.volumes": "true",
    "restricted": "true",
    "restricted.containers.privilege": "unprivileged",
    "restricted.containers.nesting": "block",
    "restricted.containers.lowlevel": "block",
    "restricted.containers.interception": "block",
    "restricted.virtual-machines.lowlevel": "block",
    "restricted.devices.disk": "managed",
    "restricted.devices.nic": "allow",
    "restricted.networks.access": "sandbox/none",
    "restricted.devices.proxy": "block",
    "restricted.devices.unix-char": "block",
    "restricted.devices.unix-block": "block",
    "restricted.devices.unix-hotplug": "block",
    "restricted.devices.usb": "block",
    "restricted.devices.gpu": "block",
    "restricted.devices.infiniband": "block",
    "restricted.devices.pci": "block",
    "restricted.snapshots": "allow",
    "restricted.backups": "block",
    "restricted.cluster.target": "block",
}


def workspace_id(ws_id: str) -> str:
    """Tags this workspace's instances (host + path: two machines may share one remote LXD)."""
    return f"{ws_id}@{socket.gethostname()}"


def image_alias(digest: str) -> str:
    """The LXD alias of a sandbox image: the same image is imported once per LXD host."""
    return f"sandbox-{digest.removeprefix('sha256:')[:12]}"


def limits(spec: InstanceSpec) -> dict[str, str]:
    """Profile resources → LXD limits: cpus (fractions as a CFS allowance), memory, pids."""
    out: dict[str, str] = {}
    if spec.cpus is not None:
        out["limits.cpu"] = str(max(1, math.ceil(spec.cpus)))
        if spec.cpus != int(spec.cpus):
            out["limits.cpu.allowance"] = f"{round(spec.cpus * 100)}ms/100ms"
    if spec.memory is not None:
        out["limits.memory"] = f"{int(spec.memory)}B"
    if spec.pids is not None:
        out["limits.processes"] = str(int(spec.pids))
    return out


def nic(address: str) -> dict[str, str]:
    return {"type": "nic", "nictype": "routed", "ipv4.address": address, "name": NIC}


def devices(spec: InstanceSpec, pool: str | None = None) -> dict[str, dict[str, str]]:
    """The instance's own devices; the root disk is on `pool`, else as LXD's default profile says."""
    out: dict[str, dict[str, str]] = {}
    if pool is not None:
        out["root"] = {"type": "disk", "path": "/", "pool": pool}
    if spec.address is not None:
        out[NIC] = nic(spec.address)
    for i, m in enumerate(spec.mounts):
        dev = {"type": "disk", "source": m.src, "path": m.dest}
        if m.readonly:
            dev["readonly"] = "true"
        out[f"{MOUNT_PREFIX}{i}"] = dev
    return out


def instance_config(spec: InstanceSpec, ws_id: str) -> dict[str, str]:
    return {
        WORKSPACE_KEY: ws_id,
        ENV_KEY: spec.env,
        IMAGE_KEY: spec.image,
        **({ADDRESS_KEY: spec.address} if spec.address else {}),
        **limits(spec),
    }


def create_request(
    spec: InstanceSpec,
    ws_id: str,
    fingerprint: str,
    pool: str | None = None,
) -> dict[str, Any]:
    """POST /1.0/instances body that creates `spec` (stopped) from its imported image, named by LXD's
    fingerprint of it (the sha256 of the bytes LXD holds; an alias is anyone's to point elsewhere)."""
    return {
        "name": spec.name,
        "type": "container",
        "source": {"type": "image", "fingerprint": fingerprint},
        "config": instance_config(spec, ws_id),
        "devices": devices(spec, pool),
    }


def copy_request(
    src: str,
    spec: InstanceSpec,
    ws_id: str,
    profiles: list[str],
    pool: str | None = None,
) -> dict[str, Any]:
    """POST /1.0/instances body that creates `spec` as a copy of instance `src` (without its snapshots);
    `profiles` are the source's (LXD gives a copy none unless told, and so no root disk)."""
    return {
        "name": spec.name,
        "type": "container",
        "profiles": list(profiles),
        "source": {"type": "copy", "source": src, "instance_only": True},
        "config": instance_config(spec, ws_id),
        "devices": devices(spec, pool),
    }


def remote_name(url: str) -> str:
    """A file-name-safe name for a remote URL (https://10.0.0.5:8443 → 10.0.0.5_8443)."""
    hostport = url.split("://", 1)[-1].rstrip("/")
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in hostport)
