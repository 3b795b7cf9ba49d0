"""Which checks run for which backend, and how bad a problem is."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sandbox.doctor import daemons, hostchecks, kernel
from sandbox.doctor.base import BACKENDS, DEFAULT_BACKEND, Check, Host
from sandbox.workspace import Workspace

OPTIONAL: dict[str, Callable[[Host, bool], list[Check]]] = {
    "lxd": daemons.lxd,
    "docker": daemons.docker,
    "libvirt": daemons.libvirt,
}


def run_checks(
    host: Host | None = None, backend: str | None = None, ws: Workspace | None = None
) -> list[Check]:
    """Every check of what all backends need, and of `backend` (None: all of them).

    A problem is a failure when its backend is required (the one asked for, else the default lxc)
    and a warning otherwise, or when it only limits what works (low inotify limits, no stream module).
    """
    host = host or Host()
    if backend is not None and backend not in BACKENDS:
        raise ValueError(backend)
    required = backend or DEFAULT_BACKEND
    lxc = required == "lxc"
    out = [
        hostchecks.root(host, True),
        kernel.overlayfs(host, True),
        *kernel.user_namespaces(host, True),
    ]
    if backend in (None, "lxc"):
        out += [kernel.cgroups(host, lxc), *hostchecks.lxc_tools(host, lxc)]
    out += [
        *hostchecks.build_tools(host, True),
        hostchecks.apt_sources(host, True),
        *hostchecks.nginx(host, True),
        *hostchecks.subids(host, hostchecks.runtime_dir(ws) if ws else None, True),
        *hostchecks.disks(ws, True),
        *kernel.limits(host, True),
    ]
    wanted = [b for b in OPTIONAL if backend in (None, b)]
    # sockets wait at most base.SOCKET_TIMEOUT each; side by side, the slowest bounds the run
    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        for checks in pool.map(lambda b: OPTIONAL[b](host, b == required), wanted):
            out += checks
    return out


def exit_code(checks: list[Check]) -> int:
    """1 when a required backend cannot work (a failed check), else 0."""
    return 1 if any(c.status == "fail" for c in checks) else 0
