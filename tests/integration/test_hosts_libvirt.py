"""`backend: libvirt` with `hosts:` for real: one VM on a host, reached over ssh.

"The host" is this machine behind an sshd of the test's own on 127.0.0.1 (tests/unit/
test_hosts_sshd.py, strict host key), with the real libvirtd. Its host agent keeps its store and VM
files in the test's tmp dir (SANDBOX_HOST_ROOT, set for the sshd's sessions); the domain is defined
over the host's libvirt socket forwarded by the ssh connection. One env of one instance: `up` ships
the VM flavour, the agent makes the disk on the host, the VM boots (TCG here: about a minute; the
KVM probe is skipped with SANDBOX_LIBVIRT_ACCEL=tcg), the app answers at HOST_ADDRESS:PUBLISHED_PORT
and through the router, exec works through the guest agent, and `down` leaves no domain, instance
disk or DNAT rule behind. One VM boot in all.

The host's address is the gateway of the test's own bridge (made by the host's `check`): a connection
this machine makes to its own address goes through nat OUTPUT, where publishing DNATs it too.
Traffic goes to 127.0.0.1 and to that bridge's addresses only. The agent bundle lands in
/var/lib/sandbox-host/agent (the control side's fixed path): that file is removed at the end, and
the dirs only if empty (another loopback-host test may be using them).
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.hosts.agent import HostAgent
from sandbox.hosts.transport import LocalTransport
from sandbox.workspace import Workspace
from tests.integration import conftest as it
from tests.unit.test_hosts_sshd import Sshd, make_sshd, sshd_problem

pytestmark = pytest.mark.integration

BRIDGE = "sbxhvirt0"
SUBNET = ipaddress.ip_network("10.229.0.0/24")
HOST_ADDRESS = "10.229.0.1"  # the bridge's gateway: an address of "the host"
AGENT_ROOT = Path("/var/lib/sandbox-host")


def allowed(host: str) -> bool:
    return ipaddress.ip_address(host) in SUBNET


@dataclass
class OnHost:
    ws: Path
    host_root: Path
    sshd: Sshd


@pytest.fixture
def onhost(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnHost]:
    it.require(it.libvirt_problem())
    problem = sshd_problem()
    it.require(None if problem is None else f"loopback sshd: {problem}")
    # the session's VM build (store and VM lock): `up` finds the VM flavour it ships in the cache
    ws = it.workspace_like(request.getfixturevalue("vm_built"), tmp_path, "ws")
    host_root = tmp_path / "hostroot"
    host_root.mkdir()
    restore = it.grant_traverse(host_root)  # qemu (libvirt-qemu) reads the VM's disks below it
    sshd = make_sshd(
        tmp_path / "sshd",
        f"SetEnv SANDBOX_HOST_ROOT={host_root} SANDBOX_LIBVIRT_ACCEL=tcg\n",
        keep_run=("libvirt",),  # with a /run of its own, its sessions still reach libvirtd's socket
    )
    sshd.client("ctl")  # its known_hosts and ssh config
    (ws / "sandbox.yaml").write_text(
        f"network: {{bridge: {BRIDGE}, subnet: {SUBNET}}}\nrouters: {{port_range: [19600, 19649]}}\n"
        f"hosts: {{ssh_config: {sshd.dir / 'ssh_config-ctl'}}}\n"
    )
    (ws / "profiles").mkdir()
    (ws / "profiles" / "vmh.yaml").write_text(
        "name: vmh\nrecipe: web\nbackend: libvirt\ninstances: 1\n"
        "resources: {memory: 512M}\nenv: {APP_ENV: onhost}\n"
        f"hosts:\n  - {{name: lo1, ssh: '{sshd.target}', address: {HOST_ADDRESS}}}\n"
        "health: {path: /healthz, interval: 0.5s, timeout: 420s}\n"
        "router: {listen: 127.0.0.1, port: auto}\n"
    )
    sshd.start()
    try:
        yield OnHost(ws, host_root, sshd)
    finally:
        with contextlib.suppress(Exception):
            if any(e["name"] == "vmh-1" for e in it.ok(it.sandbox(ws, "ls", "--json"))):
                it.sandbox(ws, "down", "vmh-1", timeout=300)
        sshd.stop()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        shutil.rmtree(host_root, ignore_errors=True)  # a 2 GB (sparse) disk and the shipped image
        for d, mode in restore:
            if d.exists():
                d.chmod(mode)
        Path(HostAgent(LocalTransport()).path).unlink(missing_ok=True)
        for d in (AGENT_ROOT / "agent", AGENT_ROOT):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty


def domains() -> list[str]:
    p = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return p.stdout.split()


def test_a_vm_on_a_host_serves_at_its_published_port_and_goes_away(onhost: OnHost) -> None:
    ws = onhost.ws
    wsid = Workspace(ws).id
    t0 = time.monotonic()
    v = it.ok(it.sandbox(ws, "up", "vmh-1", "--wait", "--json", timeout=900))
    up_s = time.monotonic() - t0
    [inst] = it.ok(it.sandbox(ws, "status", "vmh-1", "--json"))["instances"]
    assert inst["host"] == "lo1" and inst["health"] == "healthy", inst
    assert inst["endpoint"] == f"{HOST_ADDRESS}:20002", inst  # 20000 + the address's offset
    assert f"sbx-{wsid}-vmh-1-0" in domains()
    # the VM's files are on the host (the agent's root), none on this machine's runtime dir
    idir = onhost.host_root / "ws" / wsid / "libvirt" / "instances" / "vmh-1-0"
    assert (idir / "disk.qcow2").is_file() and (idir / "config.img").is_file()
    assert not (Workspace(ws).runtime / "libvirt" / "instances" / "vmh-1-0").exists()

    doc = it.healthz(f"http://{inst['endpoint']}/", allowed, 10)  # the DNAT of the host's agent
    assert doc["env"] == "onhost", doc
    assert it.healthz(v["url"], allowed, 10)["image"] == doc["image"]  # through the router
    line = it.exec_out(ws, "vmh-1", "sh", "-c", "echo $SANDBOX_INSTANCE $APP_ENV")
    assert line == "vmh-1-0 onhost", line
    assert it.exec_out(ws, "vmh-1", "id", "-un", user="app") == "app"

    t1 = time.monotonic()
    it.ok(it.sandbox(ws, "down", "vmh-1", timeout=300))
    down_s = time.monotonic() - t1
    assert f"sbx-{wsid}-vmh-1-0" not in domains()
    assert not idir.exists()
    rules = subprocess.run(["iptables", "-w", "10", "-t", "nat", "-S"], capture_output=True, text=True)
    assert "sandbox:vmh-1-0" not in rules.stdout
    print(f"libvirt on a host: up --wait {up_s:.1f}s, down {down_s:.1f}s")
