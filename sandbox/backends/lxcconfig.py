"""The LXC container config for one instance (pure: tested against fixture files)."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.backends.base import MountSpec

CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class LxcInstanceConfig:
    name: str
    lower: str  # the image's unpacked, id-shifted rootfs (shared by every instance)
    upper: str  # this instance's writable layer
    uid_start: int
    uid_count: int
    gid_start: int
    gid_count: int
    bridge: str
    address: str
    prefix: int
    gateway: str
    console_log: str
    cgroup_v2: bool
    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None
    mounts: tuple[MountSpec, ...] = ()


def _fstab(path: str) -> str:
    """Escape a path for an fstab-style line (space, tab, newline, backslash as octal)."""
    return "".join(f"\\{ord(ch):03o}" if ch in " \t\n\\" else ch for ch in path)


def render_lxc_config(c: LxcInstanceConfig) -> str:
    lines = [
        "# written by sandbox; recreated on every `sandbox up`",
        f"lxc.uts.name = {c.name}",
        "lxc.include = /usr/share/lxc/config/common.conf",
        "lxc.include = /usr/share/lxc/config/userns.conf",
        f"lxc.idmap = u 0 {c.uid_start} {c.uid_count}",
        f"lxc.idmap = g 0 {c.gid_start} {c.gid_count}",
        f"lxc.rootfs.path = overlay:{c.lower}:{c.upper}",
        "lxc.mount.auto = cgroup:mixed proc:mixed sys:mixed",
        "lxc.net.0.type = veth",
        f"lxc.net.0.link = {c.bridge}",
        "lxc.net.0.flags = up",
        "lxc.net.0.name = eth0",
        f"lxc.net.0.ipv4.address = {c.address}/{c.prefix}",
        f"lxc.net.0.ipv4.gateway = {c.gateway}",
        # no AppArmor on the hosts sandbox targets; a profile would need the kernel's support
        "lxc.apparmor.profile = unconfined",
        "lxc.signal.halt = SIGRTMIN+3",
        f"lxc.console.logfile = {c.console_log}",
        "lxc.tty.max = 0",
    ]
    key = "lxc.cgroup2" if c.cgroup_v2 else "lxc.cgroup"
    if c.memory is not None:
        lines.append(
            f"{key}.memory.max = {c.memory}" if c.cgroup_v2 else f"{key}.memory.limit_in_bytes = {c.memory}"
        )
    if c.cpus is not None:
        quota = max(1000, int(c.cpus * CPU_PERIOD_US))
        if c.cgroup_v2:
            lines.append(f"{key}.cpu.max = {quota} {CPU_PERIOD_US}")
        else:
            lines += [f"{key}.cpu.cfs_period_us = {CPU_PERIOD_US}", f"{key}.cpu.cfs_quota_us = {quota}"]
    if c.pids is not None:
        lines.append(f"{key}.pids.max = {c.pids}")
    for m in c.mounts:
        kind = "file" if m.is_file else "dir"
        opts = f"bind,create={kind}" + (",ro" if m.readonly else "")
        lines.append(f"lxc.mount.entry = {_fstab(m.src)} {_fstab(m.dest.lstrip('/'))} none {opts} 0 0")
    return "\n".join(lines) + "\n"
