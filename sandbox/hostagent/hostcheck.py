"""`host-check [docker|lxd|libvirt] [router-only] [router]`: what this host has and lacks for
sandbox's instances (lxc, the docker engine with `docker`, LXD with `lxd`, libvirtd and qemu with
`libvirt`; none with `router-only`) and, with `router`, for the router; each item with its fix."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sandbox.hostagent.main import op
from sandbox.routing.render import LUA_MODULES
from sandbox.subids import SUBID_FILES

PACKAGES = "lxc uidmap iptables python3"


def _item(name: str, ok: bool, detail: str, fix: str | None = None) -> dict[str, Any]:
    return {"item": name, "ok": ok, "detail": detail, "fix": None if ok else fix}


def _free(path: str) -> int:
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


@op("host-check")
def host_check(args: list[str]) -> list[dict[str, Any]]:
    out = [
        _item("root", os.geteuid() == 0, f"euid {os.geteuid()}", "log in as root or give the user sudo"),
        _item(
            "python3",
            tuple(map(int, platform.python_version_tuple()[:2])) >= (3, 11),
            platform.python_version(),
            "apt-get install python3 (3.11 or newer)",
        ),
        *_engine(args),
    ]
    free = _free(
        "/var/lib/docker"
        if "docker" in args
        else "/var/lib/lxd"
        if "lxd" in args
        else "/var/lib/sandbox-host"
    )
    out.append(
        _item(
            "disk",
            free > 2 << 30,
            f"{free >> 30} GiB free under /var/lib",
            "free space under /var/lib (2 GiB at least)",
        )
    )
    if "router" in args:
        missing = [m for m in LUA_MODULES if not Path(m).exists()]
        out.append(
            _item(
                "nginx",
                shutil.which("nginx") is not None and not missing,
                "nginx with its Lua module (the router's balancer)",
                "apt-get install nginx-light libnginx-mod-http-lua",
            )
        )
    return out


def _engine(args: list[str]) -> list[dict[str, Any]]:
    if "router-only" in args:
        return []
    if "docker" in args:
        return _docker()
    if "lxd" in args:
        return _lxd()
    return _libvirt() if "libvirt" in args else _lxc()


def _lxd() -> list[dict[str, Any]]:
    from sandbox.hostagent.lxdops import status

    answers, daemon, initialised, storage = status()
    return [
        _item("lxd", answers, daemon, "apt-get install lxd, and start it (`sandbox host prepare PROFILE`)"),
        _item(
            "lxd storage",
            initialised,
            storage,
            "`sandbox host prepare PROFILE` (a dir pool and a root disk in the default profile), or lxd init",
        ),
        _tools("iptables", ("iptables",), "apt-get install iptables"),  # publishing (lxdpublish.py)
    ]


def _tools(name: str, tools: tuple[str, ...], fix: str) -> dict[str, Any]:
    missing = [t for t in tools if shutil.which(t) is None]
    return _item(name, not missing, "missing " + ", ".join(missing) if missing else ", ".join(tools), fix)


def _libvirt() -> list[dict[str, Any]]:
    """libvirtd answers, qemu and the disk tools are there; KVM or TCG (both run VMs)."""
    from sandbox.backends.vmaccel import kvm_device_usable

    try:
        p = subprocess.run(
            ["virsh", "-c", "qemu:///system", "version"], capture_output=True, text=True, timeout=30
        )
        ok, detail = p.returncode == 0, (p.stdout if p.returncode == 0 else p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, detail = False, str(e)
    kvm = kvm_device_usable()
    return [
        _item(
            "libvirtd",
            ok,
            " / ".join(detail.splitlines()[-2:])[:300],
            "apt-get install libvirt-daemon-system, and start libvirtd",
        ),
        _tools("qemu", ("qemu-system-x86_64", "qemu-img"), "apt-get install qemu-system-x86 qemu-utils"),
        _tools("mkfs.ext4", ("mkfs.ext4",), "apt-get install e2fsprogs"),
        _item(
            "acceleration",
            True,
            "kvm: /dev/kvm usable (probed at the first boot; TCG if KVM cannot boot a kernel)"
            if kvm
            else "tcg: no usable /dev/kvm (VMs are emulated: slow)",
        ),
        *_publishing(),
    ]


def _publishing() -> list[dict[str, Any]]:
    """What publishes each app (iptables) and makes the bridge (ip)."""
    return [
        _tools("iptables", ("iptables",), "apt-get install iptables"),
        _tools("ip", ("ip",), "apt-get install iproute2"),
    ]


def _docker() -> list[dict[str, Any]]:
    from sandbox.hostagent.dockerops import DOCKER_SOCK, DockerEngineError, engine_version

    try:
        ok, detail = True, f"docker engine {engine_version()} on {DOCKER_SOCK}"
    except DockerEngineError as e:
        ok, detail = False, e.message
    return [_item("docker", ok, detail, "apt-get install docker.io, and start dockerd")]


def _lxc() -> list[dict[str, Any]]:
    out = [
        _item(
            "user namespaces",
            Path("/proc/self/ns/user").exists(),
            "/proc/self/ns/user",
            "enable CONFIG_USER_NS",
        ),
        _item(
            "overlayfs",
            "overlay" in Path("/proc/filesystems").read_text(),
            "/proc/filesystems",
            "modprobe overlay",
        ),
        _item(
            "cgroups",
            Path("/sys/fs/cgroup").is_dir(),
            "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1 (lxc handles both)",
            "mount the cgroup hierarchy at /sys/fs/cgroup",
        ),
    ]
    out.append(_tools("lxc", ("lxc-start", "lxc-attach", "lxc-info", "lxc-stop"), "apt-get install lxc"))
    out += _publishing()
    ids = [f for f in SUBID_FILES if f.is_file() and "root:" in f.read_text()]
    out.append(
        _item(
            "subordinate ids",
            len(ids) == len(SUBID_FILES),
            "root has ranges in /etc/subuid and /etc/subgid" if len(ids) == 2 else "root has no range",
            "`sandbox host prepare PROFILE` (adds root:1000000:1000000 style ranges)",
        )
    )
    return out
