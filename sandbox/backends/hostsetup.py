"""Host prerequisites for unprivileged containers: subordinate id ranges and sandbox's bridge."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from sandbox.backends.base import BackendError
from sandbox.subids import SUBID_FILES, IdRange, SubIdOverlap, ensure_subids, runtime_ids, subid_range

__all__ = ["SUBID_FILES", "IdRange", "SubIdOverlap", "ensure_subids", "runtime_ids", "subid_range"]


def gateway(subnet: str) -> tuple[str, int]:
    """(gateway address, prefix length) of a subnet: its first host address."""
    net = ipaddress.ip_network(subnet, strict=True)
    return str(next(net.hosts())), net.prefixlen


def ensure_bridge(bridge: str, subnet: str) -> None:
    """Create sandbox's bridge with the subnet's gateway address, once; idempotent."""
    gw, prefix = gateway(subnet)
    if not _exists(bridge):
        try:
            _ip(["link", "add", bridge, "type", "bridge"])
        except BackendError:
            if not _exists(bridge):  # another `sandbox up` may have created it meanwhile
                raise
    addrs = _ip_run(["-4", "-o", "addr", "show", "dev", bridge]).stdout
    if f" {gw}/{prefix} " not in addrs:
        p = _ip_run(["addr", "add", f"{gw}/{prefix}", "dev", bridge])
        if p.returncode != 0 and "File exists" not in p.stderr:
            raise BackendError(f"cannot give {bridge} the address {gw}/{prefix}: {p.stderr.strip()}")
    _ip(["link", "set", bridge, "up"])


def _exists(bridge: str) -> bool:
    return _ip_run(["link", "show", bridge]).returncode == 0


def _ip_run(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`ip ARGS`, its exit status left to the caller; a missing `ip` is a BackendError."""
    try:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BackendError("the ip tool is missing", hint="apt-get install iproute2") from e


def _ip(args: list[str]) -> None:
    p = _ip_run(args)
    if p.returncode != 0:
        raise BackendError(
            f"ip {' '.join(args)} failed: {p.stderr.strip()}", hint="sandbox needs root to create its bridge"
        )


# every container's root is the same host uid, so per-user kernel limits are shared by all of
# them; the defaults (128 inotify instances) stop systemd from booting after ~16 containers
HOST_LIMITS = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 1048576,
    "kernel/keys/maxkeys": 2000,
    "kernel/keys/maxbytes": 2000000,
}


def raise_host_limits(proc_sys: Path = Path("/proc/sys")) -> list[str]:
    """Raise per-user kernel limits that many containers share; returns what was changed."""
    changed = []
    for key, want in HOST_LIMITS.items():
        path = proc_sys / key
        try:
            current = int(path.read_text().split()[0])
            if current < want:
                path.write_text(f"{want}\n")
                changed.append(f"{key.replace('/', '.')} {current} → {want}")
        except (OSError, ValueError):
            continue
    return changed
