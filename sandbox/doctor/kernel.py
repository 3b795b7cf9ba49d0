"""Kernel checks: overlayfs, user namespaces, cgroups, and the inotify and keys limits."""

from __future__ import annotations

from sandbox.doctor.base import Check, Host, ok, problem

#: (sysctl, value recommended by LXD's "Server settings for a LXD production setup"): each
#: container's init takes inotify instances and watches, and a kernel keyring per container
LIMITS = (
    ("fs.inotify.max_user_instances", 1048576),
    ("fs.inotify.max_user_watches", 1048576),
    ("kernel.keys.maxkeys", 2000),
    ("kernel.keys.maxbytes", 2000000),
)
SYSCTL_FILE = "/etc/sysctl.d/60-sandbox.conf"


def overlayfs(host: Host, required: bool) -> Check:
    """Image layers and build steps are overlay mounts."""
    fs = host.read("/proc/filesystems") or ""
    if any(line.split()[-1:] == ["overlay"] for line in fs.splitlines()):
        return ok("overlayfs", "all", "overlay in /proc/filesystems")
    mod = host.path(f"/lib/modules/{host.release}/kernel/fs/overlayfs")
    if any(mod.glob("overlay.ko*")):
        return problem(
            "overlayfs",
            "all",
            f"not loaded; the module is in {mod}",
            "load the overlay module (the first mount usually loads it)",
            "modprobe overlay",
            required=required,
            soft=True,
        )
    return problem(
        "overlayfs",
        "all",
        "not in /proc/filesystems and no overlay module for kernel " + host.release,
        "a kernel with overlayfs (CONFIG_OVERLAY_FS): Debian's and Ubuntu's stock kernels have it",
        required=required,
    )


def user_namespaces(host: Host, required: bool) -> list[Check]:
    """Containers and build commands run in user namespaces that root creates with id maps."""
    name = "user namespaces"
    if not host.path("/proc/self/ns/user").exists():
        return [
            problem(
                name,
                "all",
                "no /proc/self/ns/user: the kernel has no user namespaces",
                "a kernel with CONFIG_USER_NS (Debian's and Ubuntu's stock kernels have it)",
                required=required,
            )
        ]
    out = []
    most = host.sysctl("user.max_user_namespaces")
    if most is not None and most < 100:
        out.append(
            problem(
                name,
                "all",
                f"user.max_user_namespaces = {most}",
                "allow user namespaces (one per container and build step)",
                "sysctl -w user.max_user_namespaces=15000",
                required=required,
                soft=most > 0,
            )
        )
    else:
        out.append(ok(name, "all", f"user.max_user_namespaces = {most if most is not None else 'unset'}"))
    clone = host.sysctl("kernel.unprivileged_userns_clone")
    if clone == 0:
        # root makes sandbox's namespaces; other tools (rootless builds, browsers) need this
        out.append(
            problem(
                "unprivileged user namespaces",
                "all",
                "kernel.unprivileged_userns_clone = 0 (root still creates sandbox's namespaces)",
                "allow them if a tool run without root needs them",
                "sysctl -w kernel.unprivileged_userns_clone=1",
                required=required,
                soft=True,
            )
        )
    return out


def cgroups(host: Host, required: bool) -> Check:
    """lxc puts each container in a cgroup; the backend writes v2 limits on a unified hierarchy at
    /sys/fs/cgroup (sandbox/backends/lxctools.py: cgroup_v2) and v1 limits otherwise."""
    v1: list[str] = []
    v2: list[str] = []
    for line in (host.read("/proc/self/mounts") or "").splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] in ("cgroup2", "cgroup"):
            (v2 if f[2] == "cgroup2" else v1).append(f[1])
    if "/sys/fs/cgroup" in v2:
        return ok("cgroups", "lxc", "v2: cgroup2 mounted at /sys/fs/cgroup (unified)")
    if v1:
        hybrid = f"; cgroup2 at {v2[0]} (hybrid)" if v2 else ""
        return ok(
            "cgroups", "lxc", f"v1: {len(v1)} hierarchies under /sys/fs/cgroup{hybrid} (lxc writes v1 limits)"
        )
    return problem(
        "cgroups",
        "lxc",
        "no cgroup filesystem in /proc/self/mounts" + (f" but cgroup2 at {v2[0]}" if v2 else ""),
        "mount the unified cgroup hierarchy at /sys/fs/cgroup",
        "mount -t cgroup2 cgroup2 /sys/fs/cgroup",
        required=required,
    )


def limits(host: Host, required: bool) -> list[Check]:
    """Below LXD's recommended values, many containers fail in odd ways (a warning, not a failure)."""
    out = []
    for key, want in LIMITS:
        have = host.sysctl(key)
        if have is None:
            out.append(ok(key, "all", "not in /proc/sys (not limited by this kernel)"))
        elif have >= want:
            out.append(ok(key, "all", f"{have} (recommended {want})"))
        else:
            out.append(
                problem(
                    key,
                    "all",
                    f"{have}, below the recommended {want} (LXD's production setup)",
                    f"raise it, and make it last: echo '{key} = {want}' >> {SYSCTL_FILE}",
                    f"sysctl -w {key}={want}",
                    required=required,
                    soft=True,
                )
            )
    return out
