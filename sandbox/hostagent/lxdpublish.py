"""LXD instances' apps published on their host by the agent's DNAT rules (publish.py, as for lxc and
libvirt), never by LXD proxy devices: sandbox's project blocks those (`restricted.devices.proxy=
block`), because a proxy device can connect to LXD's own unix socket, which answers as root.

- `lxd-publish` (a JSON request: name, port, address, app_port, workspace; or name, workspace and
  `remove`), called by the control machine after it starts an instance and before it deletes one:
  publishes only to an instance of the project `sandbox` that is the caller's workspace's, at the
  address of its routed NIC (`eth0`'s `ipv4.address`, which LXD routes from the host), and records
  what it published in HOST_ROOT/lxd-published/NAME.json (root's: a certificate holder cannot write
  it). Idempotent: a publish that changes nothing runs no iptables-restore.
- `settle()`, the first thing `lxd-trust` does in every command: makes every recorded instance's
  rules again (after a reboot, iptables holds none) or removes them with the record (the instance is
  gone, or its NIC has another address now); and replaces each proxy device of an instance in the
  project (an earlier sandbox's `sbx-publish`) by the same publishing through DNAT, then removes every
  proxy device there, since LXD refuses to block proxy devices in a project that still holds one.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox.backends.lxdconfig import NIC, PUBLISH_DEVICE, WORKSPACE_KEY
from sandbox.hostagent.instancereq import INSTANCE, BadRequest
from sandbox.hostagent.lxdops import IN_PROJECT, LxdEngineError, _wait, call
from sandbox.hostagent.main import host_root, op, read_request
from sandbox.hostagent.publish import publish, remove
from sandbox.hosts.publishing import PUBLISH_BASE

RECORDS = "lxd-published"
MAX_WS = 200  # the workspace tag, compared only: WS_ID@HOSTNAME
#: an earlier sandbox's proxy device: listen=tcp:ADDRESS:PORT connect=tcp:ADDRESS:APP_PORT
PROXY_END = re.compile(r"tcp:([0-9.]{7,15}):([0-9]{1,5})")


def _records() -> Path:
    d = host_root() / RECORDS
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


@contextmanager
def _locked() -> Iterator[None]:
    """One publish, removal or settle at a time on this host (another workspace's agent, another
    command's `lxd-trust`): a settle never sees a record without its instance, nor the reverse."""
    with (_records() / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _ipv4(value: object) -> str | None:
    try:
        return str(value) if isinstance(value, str) and str(ipaddress.IPv4Address(value)) == value else None
    except ValueError:
        return None


def _port(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise BadRequest(f"bad port: {str(value)[:40]!r}")
    return value


def nic_address(inst: dict[str, Any]) -> str | None:
    """The address LXD routes to the instance: its routed NIC `eth0`'s (sandbox's NIC)."""
    nic = (inst.get("devices") or {}).get(NIC)
    if not isinstance(nic, dict) or nic.get("type") != "nic" or nic.get("nictype") != "routed":
        return None
    return _ipv4(nic.get("ipv4.address"))


def _instance(name: str) -> dict[str, Any] | None:
    try:
        meta = call("GET", f"/1.0/instances/{name}{IN_PROJECT}").get("metadata")
    except LxdEngineError as e:
        if e.code == 404:
            return None
        raise
    return meta if isinstance(meta, dict) else None


def _record(name: str, pub: dict[str, Any] | None) -> None:
    path = _records() / f"{name}.json"
    if pub is None:
        path.unlink(missing_ok=True)
    else:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pub))
        tmp.replace(path)


@op("lxd-publish")
def lxd_publish(args: list[str]) -> dict[str, Any]:
    if args:
        raise BadRequest("lxd-publish takes its request on stdin")
    req = read_request()
    if not isinstance(req, dict):
        raise BadRequest("lxd-publish wants {name, port, address, app_port, workspace} or {name, remove}")
    name, workspace = req.get("name"), req.get("workspace")
    if not isinstance(name, str) or not INSTANCE.fullmatch(name):
        raise BadRequest(f"bad name: {str(name)[:80]!r}")
    if not isinstance(workspace, str) or not 0 < len(workspace) <= MAX_WS:
        raise BadRequest("bad workspace")
    with _locked():
        inst = _instance(name)
        theirs = inst is not None and (inst.get("config") or {}).get(WORKSPACE_KEY) != workspace
        if req.get("remove") is True:
            if theirs:  # (LxdBackend.destroy leaves it alone too)
                return {"removed": False}
            remove(name)
            _record(name, None)
            return {"removed": True}
        port, app_port, address = (
            _port(req.get("port")),
            _port(req.get("app_port")),
            _ipv4(req.get("address")),
        )
        if inst is None:
            raise LxdEngineError(f"no instance {name} in LXD's project to publish")
        if theirs:
            raise BadRequest(f"instance {name} is not this workspace's")
        if address is None or nic_address(inst) != address:
            raise BadRequest(f"instance {name}'s routed NIC does not have address {str(address)[:40]!r}")
        publish(name, port, address, app_port)
        _record(name, {"port": port, "address": address, "app_port": app_port})
    return {"published": f"{port} -> {address}:{app_port}"}


def _old_proxy(name: str, inst: dict[str, Any]) -> dict[str, Any] | None:
    """What an earlier sandbox's proxy device published, if it is one (its port in sandbox's range,
    its address the instance's own: a device is anyone's who held the certificate)."""
    dev = (inst.get("devices") or {}).get(PUBLISH_DEVICE)
    listen = PROXY_END.fullmatch(str(dev.get("listen", ""))) if isinstance(dev, dict) else None
    connect = PROXY_END.fullmatch(str(dev.get("connect", ""))) if isinstance(dev, dict) else None
    if listen is None or connect is None or connect.group(1) != nic_address(inst):
        return None
    port, app_port = int(listen.group(2)), int(connect.group(2))
    if not PUBLISH_BASE < port <= 65535 or not 1 <= app_port <= 65535:
        return None
    return {"port": port, "address": connect.group(1), "app_port": app_port}


def _has_proxy(inst: dict[str, Any]) -> bool:
    return any(isinstance(d, dict) and d.get("type") == "proxy" for d in (inst.get("devices") or {}).values())


def _drop_proxies(inst: dict[str, Any]) -> None:
    """The instance without its proxy devices (LXD unplugs them from a running one)."""
    keys = ("architecture", "config", "ephemeral", "profiles", "stateful", "description")
    body = {k: inst[k] for k in keys}
    body["devices"] = {k: d for k, d in (inst.get("devices") or {}).items() if d.get("type") != "proxy"}
    done = call("PUT", f"/1.0/instances/{inst['name']}{IN_PROJECT}", body)
    if done.get("type") == "async":
        _wait(done, 60)


def _recorded(path: Path) -> tuple[int, str, int] | None:
    try:
        pub = json.loads(path.read_text())
        port, address, app_port = int(pub["port"]), str(pub["address"]), int(pub["app_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return port, address, app_port


def _listed() -> dict[str, dict[str, Any]]:
    """The project's instances by name (none when there is no project yet)."""
    try:
        listed = call("GET", f"/1.0/instances{IN_PROJECT}&recursion=1").get("metadata")
    except LxdEngineError as e:
        if e.code != 404:
            raise
        listed = []
    return {
        i["name"]: i
        for i in listed or []
        if isinstance(i, dict) and isinstance(i.get("name"), str) and INSTANCE.fullmatch(i["name"])
    }


def settle() -> dict[str, list[str]]:
    """Before `lxd-trust` restricts the project again: proxy devices replaced by DNAT and removed,
    every recorded instance's rules made again or removed (see the module's doc)."""
    out: dict[str, list[str]] = {"republished": [], "unpublished": [], "proxies_removed": []}
    with _locked():
        records = {p.stem: p for p in _records().glob("*.json")}  # read before the listing (see _locked)
        found = _listed()
        for name, inst in found.items():
            if not _has_proxy(inst):
                continue
            old = _old_proxy(name, inst)
            if old is not None:  # DNAT first: the app stays reachable
                publish(name, old["port"], old["address"], old["app_port"])
                _record(name, old)
                records[name] = _records() / f"{name}.json"
            _drop_proxies(inst)
            out["proxies_removed"].append(name)
        for name, path in records.items():
            pub, now = _recorded(path), found.get(name)
            if pub is not None and now is not None and nic_address(now) == pub[1]:
                publish(name, *pub)  # (no restore when the rules are there)
                out["republished"].append(name)
                continue
            if INSTANCE.fullmatch(name):
                remove(name)
            path.unlink(missing_ok=True)
            out["unpublished"].append(name)
    return out
