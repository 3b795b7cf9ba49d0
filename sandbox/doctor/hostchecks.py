"""Host checks: root, the tools (lxc, nginx, mmdebstrap), the apt sources, the subordinate ids, disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sandbox.backends.lxctools import PACKAGES as LXC_PACKAGES
from sandbox.backends.lxctools import TOOLS as LXC_TOOLS
from sandbox.build.hostapt import host_codename, host_sources
from sandbox.doctor.base import Check, Host, apt, gib, ok, problem
from sandbox.errors import SandboxError
from sandbox.routing.render import LUA_MODULES, STREAM_MODULE
from sandbox.subids import (
    RECORD,
    SUBID_COUNT,
    IdRange,
    _read_record,
    choose_range,
    others_overlapping,
    read_subids,
)
from sandbox.workspace import Workspace

#: free space below which a build or an `up` fails / is at risk
DISK_FAIL = 1 << 30
DISK_WARN = 5 << 30


def root(host: Host, required: bool) -> Check:
    if host.euid == 0:
        return ok("root", "all", "running as root")
    return problem(
        "root",
        "all",
        f"running as uid {host.euid}: sandbox must run as root (it mounts overlays, maps ids, makes "
        "bridges); checked anyway: the kernel, tools, limits, apt sources and disk; files and "
        "sockets only root may read show as problems",
        "run sandbox as root",
        "sudo sandbox doctor",
        required=required,
    )


def tools(
    host: Host, name: str, backend: str, names: tuple[str, ...], packages: tuple[str, ...], required: bool
) -> Check:
    found = {t: host.which(t) for t in names}
    missing = [t for t, p in found.items() if p is None]
    if not missing:
        return ok(name, backend, ", ".join(str(p) for p in found.values()))
    return problem(
        name,
        backend,
        "missing " + ", ".join(missing),
        "install " + " ".join(packages),
        apt(*packages),
        required=required,
    )


def lxc_tools(host: Host, required: bool) -> list[Check]:
    return [
        tools(host, "lxc tools", "lxc", LXC_TOOLS, ("lxc",), required),
        tools(host, "ip", "lxc", ("ip",), (LXC_PACKAGES["ip"],), required),
    ]


def build_tools(host: Host, required: bool) -> list[Check]:
    return [
        tools(host, "mmdebstrap", "all", ("mmdebstrap",), ("mmdebstrap",), required),
        tools(host, "uidmap", "all", ("newuidmap", "newgidmap"), ("uidmap",), required=False),
    ]


def nginx(host: Host, required: bool) -> list[Check]:
    """Every env's router is nginx with the Lua module (its balancer); forwarded ports need stream."""
    out = [tools(host, "nginx", "all", ("nginx",), ("nginx-light",), required)]
    missing = [m for m in LUA_MODULES if not host.path(m).exists()]
    if missing:
        out.append(
            problem(
                "nginx lua module",
                "all",
                "missing " + ", ".join(missing),
                "install nginx's Lua module (the router's balancer)",
                apt("libnginx-mod-http-lua"),
                required=required,
            )
        )
    else:
        out.append(ok("nginx lua module", "all", ", ".join(LUA_MODULES)))
    if host.path(STREAM_MODULE).exists():
        out.append(ok("nginx stream module", "all", STREAM_MODULE))
    else:
        out.append(
            problem(
                "nginx stream module",
                "all",
                f"missing {STREAM_MODULE} (only profiles that forward ports need it)",
                "install nginx's stream module",
                apt("libnginx-mod-stream"),
                required=required,
                soft=True,
            )
        )
    return out


def apt_sources(host: Host, required: bool) -> Check:
    """Images are built from the host's own apt sources (sandbox/build/hostapt.py)."""
    codename = host_codename(host.path("/etc/os-release")) or "stable"
    try:
        text = host_sources(
            codename,
            sources_list=host.path("/etc/apt/sources.list"),
            sources_dir=host.path("/etc/apt/sources.list.d"),
            codename=codename,
        )
    except SandboxError as e:
        return problem("apt sources", "all", e.message, e.hint or "add a 'deb' entry", required=required)
    n = sum(1 for line in text.splitlines() if line.startswith("URIs:"))
    return ok("apt sources", "all", f"{n} source(s) in /etc/apt/sources.list*, host suite {codename}")


def _subid_check(host: Host, file: str, recorded: IdRange | None, required: bool) -> Check:
    name = file.rsplit("/", 1)[-1]
    path = host.path(file)
    flag = "--add-subuids" if name == "subuid" else "--add-subgids"
    try:
        entries = read_subids(path)
    except OSError as e:
        return problem(name, "all", f"cannot read {file} ({e.strerror})", "run as root", required=required)
    except ValueError as e:  # not text
        return problem(name, "all", f"{file} is not readable text ({e})", f"repair {file}", required=required)
    if recorded is not None:
        clash = others_overlapping(entries, recorded, "root")
        if clash:
            return problem(
                name,
                "all",
                f"the runtime's ids {recorded.start}-{recorded.end - 1} overlap "
                + ", ".join(str(e) for e in clash),
                "remove or move the other user's range: it could own every container's files",
                f"usermod {flag.replace('add', 'del')} {clash[0].range.start}-{clash[0].range.end - 1} "
                f"{clash[0].owner}",
                required=required,
            )
    try:
        want = recorded or choose_range(entries)
    except SandboxError as e:
        return problem(name, "all", e.message, e.hint or f"tidy {file}", required=required)
    own = [
        e for e in entries if e.owner == "root" and e.range.start <= want.start and want.end <= e.range.end
    ]
    if own:
        return ok(name, "all", f"root:{want.start}:{want.count}, shared with no one ({own[0]})")
    return problem(
        name,
        "all",
        f"root has no private range of {SUBID_COUNT} ids in {file}; sandbox adds "
        f"root:{want.start}:{want.count} at the first start",
        "add it now (or let sandbox add it, as root)",
        f"usermod {flag} {want.start}-{want.end - 1} root",
        required=required,
        soft=True,
    )


def _record(runtime: Path | None) -> tuple[IdRange, IdRange] | None:
    """The runtime dir's recorded ranges (sandbox/subids.py), None if none yet or unreadable
    (`sandbox up` then says what is wrong with it)."""
    if runtime is None:
        return None
    try:
        return _read_record(runtime / RECORD)
    except (OSError, SandboxError):
        return None


def subids(host: Host, runtime: Path | None, required: bool) -> list[Check]:
    rec = _record(runtime)
    return [
        _subid_check(host, "/etc/subuid", rec[0] if rec else None, required),
        _subid_check(host, "/etc/subgid", rec[1] if rec else None, required),
    ]


def runtime_dir(ws: Workspace) -> Path | None:
    """Where the workspace's containers live, as `Workspace.runtime` decides, without creating it."""
    env = os.environ.get("SANDBOX_RUNTIME")
    if env:
        return Path(env)
    try:
        return Path((ws.state / "runtime").read_text().strip())
    except OSError:
        return None


def _existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def disk(name: str, path: Path, required: bool) -> Check:
    where = _existing(path)
    try:
        free = shutil.disk_usage(where).free
    except OSError as e:
        return problem(name, "all", f"{where}: {e.strerror}", "check the path", required=required)
    found = f"{gib(free)} free on {where}"
    if free >= DISK_WARN:
        return ok(name, "all", found)
    return problem(
        name,
        "all",
        found,
        f"free space there ({gib(DISK_WARN)} or more; `sandbox gc --images` removes unused images)",
        "sandbox gc --images",
        required=required,
        soft=free >= DISK_FAIL,
    )


def disks(ws: Workspace | None, required: bool) -> list[Check]:
    if ws is None:
        return [
            problem(
                "disk",
                "all",
                "no workspace here: the store and runtime dirs are unknown",
                "run doctor inside a workspace, or give one with -C DIR",
                required=required,
                soft=True,
            )
        ]
    runtime = runtime_dir(ws)
    return [
        disk("disk: images", ws.images, required),
        disk("disk: runtime", runtime if runtime is not None else ws.state, required),
    ]
