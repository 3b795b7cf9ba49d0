"""libvirt on production hosts, the control machine's side, without libvirtd.

RemoteLibvirt refuses a host's malformed answers, names a dead host (HostUnreachable), defines the
domain with the host's paths over the forwarded socket and refuses snapshots and clones; the local
LibvirtBackend makes the same files with the same VmFiles on this machine. Publishing jumps to its
chain from nat OUTPUT too, never for loopback. (The host's side: test_hosts_libvirtops.py.)

Nothing here runs libvirtd, qemu or iptables, nor writes outside the test's tmp dir.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import libvirt
import pytest

from sandbox.backends import vmfiles
from sandbox.backends.base import (
    BackendContext,
    BackendError,
    ImageAccess,
    InstanceSpec,
    UnsupportedOperation,
)
from sandbox.backends.libvirt import LibvirtBackend
from sandbox.backends.remotelibvirt import RemoteLibvirt, vm_instance
from sandbox.backends.vmfiles import LIBVIRT_SOCKET
from sandbox.hostagent import publish
from sandbox.hosts.agent import HostAgent
from sandbox.hosts.agentcall import AgentError
from sandbox.hosts.transport import HostUnreachable, LocalTransport
from sandbox.settings import Network
from sandbox.store import ImageStore
from tests.unit.imagefactory import make_tree, put_layer
from tests.unit.test_hosts_libvirtops import BOOT, DIGEST, need_tools, vm_image

# -- the control side ----------------------------------------------------------------------------------

GOOD = {
    "kernel": "/var/lib/sandbox-host/ws/w1/libvirt/images/x/vmlinuz",
    "initrd": "/var/lib/sandbox-host/ws/w1/libvirt/images/x/initrd.img",
    "disk": "/var/lib/sandbox-host/ws/w1/libvirt/instances/prod-0/disk.qcow2",
    "config_disk": "/var/lib/sandbox-host/ws/w1/libvirt/instances/prod-0/config.img",
    "console_log": "/var/lib/sandbox-host/ws/w1/libvirt/instances/prod-0/console.log",
    "domain_type": "qemu",
}


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [GOOD],
        {**GOOD, "domain_type": "xen"},
        {**GOOD, "kernel": "vmlinuz"},  # relative
        {**GOOD, "disk": "/x'/><disk file='/etc/shadow"},  # printable: quoted in the XML (below)
        {**GOOD, "console_log": "/x\n</devices>"},
        {**GOOD, "initrd": 7},
        {k: v for k, v in GOOD.items() if k != "config_disk"},
    ],
)
def test_a_hosts_malformed_create_answer_is_refused(answer: Any) -> None:
    if isinstance(answer, dict) and "'" in str(answer.get("disk")):
        assert vm_instance(answer, "h1").disk == answer["disk"]  # a path may hold quotes: XML-quoted
        return
    with pytest.raises(AgentError) as e:
        vm_instance(answer, "h1")
    assert e.value.host == "h1" and "malformed answer" in e.value.message


class Transport(LocalTransport):
    """A host that is gone (every command fails) and forwards its libvirt socket to a fixed path."""

    def __init__(self, dead: bool) -> None:
        super().__init__("h1")
        self.dead = dead
        self.forwarded: list[str] = []

    def run(self, argv: Any, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        if self.dead:
            raise HostUnreachable("host h1 (root@10.0.0.11) is unreachable: timeout", host="h1")
        return subprocess.CompletedProcess(list(argv), 0, b"", b"")

    def forward_unix(self, remote: str) -> Path:
        self.forwarded.append(remote)
        return Path("/run/sandbox-ssh/k/fwd-1")


class Dom:
    def __init__(self) -> None:
        self.active = False

    def isActive(self) -> bool:
        return self.active

    def create(self) -> None:
        self.active = True

    def destroy(self) -> None:
        self.active = False

    def undefine(self) -> None:
        self.undefined = True


class Conn:
    """libvirt's connection, as far as create/start/destroy use it."""

    def __init__(self, alive: int) -> None:
        self.alive = alive
        self.defined: list[str] = []
        self.doms: dict[str, Dom] = {}

    def isAlive(self) -> int:
        return self.alive

    def lookupByName(self, name: str) -> Any:
        dom = self.doms.get(name)
        if dom is None or getattr(dom, "undefined", False):
            e = libvirt.libvirtError("no domain")
            e.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "no domain", 2, None, None, None, 0, 0)
            raise e
        return dom

    def defineXML(self, xml: str) -> None:
        self.defined.append(xml)
        self.doms[xml.split("<name>", 1)[1].split("</name>", 1)[0]] = Dom()


def remote(tmp_path: Path, dead: bool = False) -> RemoteLibvirt:
    ctx = BackendContext(
        workspace_id="w1",
        runtime=tmp_path / "rt",
        tmp=tmp_path / "tmp",
        network=Network(bridge="sbxtest0", subnet="10.213.0.0/24"),
        images=ImageAccess(ImageStore(tmp_path / "store"), lambda digest, sink: "sha256:" + "cd" * 32),
    )
    return RemoteLibvirt(ctx, HostAgent(Transport(dead)), "10.0.0.11")


def fail() -> None:
    e = libvirt.libvirtError("End of file while reading data: Input/output error")
    e.err = (libvirt.VIR_ERR_SYSTEM_ERROR, 0, "End of file while reading data", 2, None, None, None, 0, 0)
    raise e


def test_a_dead_hosts_libvirt_error_is_host_unreachable(tmp_path: Path) -> None:
    b = remote(tmp_path, dead=True)
    b._conn = Conn(alive=0)
    with pytest.raises(HostUnreachable) as e, b._calls("starting prod-0"):
        fail()
    assert e.value.host == "h1" and "h1" in e.value.message
    assert b._conn is None and b._uri is None  # the next call connects (and forwards) again


def test_a_live_hosts_libvirt_error_stays_a_backend_error_naming_the_host(tmp_path: Path) -> None:
    b = remote(tmp_path, dead=True)  # a probe would raise: there must be none
    conn = b._conn = Conn(alive=1)
    with pytest.raises(BackendError) as e, b._calls("starting prod-0"):
        fail()
    assert e.value.message.startswith("host h1: starting prod-0") and b._conn is conn


def test_the_domain_is_defined_with_the_hosts_paths_over_the_forwarded_socket(tmp_path: Path) -> None:
    b = remote(tmp_path)
    assert b.uri == "qemu+unix:///system?socket=/run/sandbox-ssh/k/fwd-1"
    assert b.agent.transport.forwarded == [LIBVIRT_SOCKET]  # type: ignore[attr-defined]
    calls: list[tuple[str, dict[str, Any]]] = []

    def agent_call(method: str, timeout: float | None = 300, **args: Any) -> Any:
        calls.append((method, args))
        return dict(GOOD) if method == "create" else None

    b._call = agent_call  # type: ignore[method-assign]
    conn = b._conn = Conn(alive=1)
    assert b.ships(DIGEST) == "sha256:" + "cd" * 32  # the VM flavour goes to the host
    spec = InstanceSpec(name="prod-0", env="prod", index=0, image=DIGEST, address="10.213.0.2", app_port=8000)
    b.create(spec)
    b.create(spec.__class__(**{**spec.__dict__, "name": "prod-1", "address": "10.213.0.3"}))
    assert [m for m, _ in calls] == ["prepare_image", "create", "create"]  # prepared once per command
    assert calls[0][1] == {"digest": DIGEST, "vm": "sha256:" + "cd" * 32}
    assert calls[1][1]["publish"] == {"port": 20002, "app_port": 8000}
    [xml, _] = conn.defined
    assert f'<source file="{GOOD["disk"]}"/>' in xml and f"<kernel>{GOOD['kernel']}</kernel>" in xml
    assert '<source bridge="sbxtest0"/>' in xml and '<domain type="qemu">' in xml
    assert b.published(spec) == "10.0.0.11:20002" and b.address("prod-0") == "10.0.0.11"
    for refused in (lambda: b.snapshot("prod-0", "s"), lambda: b.clone("prod-0", spec)):
        with pytest.raises(UnsupportedOperation):
            refused()
    assert not (tmp_path / "rt").exists()  # nothing of the VM's is made on this machine


def test_the_local_backend_makes_the_same_files_on_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LibvirtBackend (no hosts) with the same VmFiles: disks under its runtime dir, the domain
    defined with those paths, the address's neighbour entry flushed before a start."""
    need_tools()
    monkeypatch.setenv("SANDBOX_LIBVIRT_ACCEL", "tcg")
    flushed: list[list[str]] = []
    monkeypatch.setattr(vmfiles, "run", lambda argv, timeout=60: flushed.append(argv))
    store = ImageStore(tmp_path / "store")
    digest, vm = vm_image(store, tmp_path / "work", put_layer(store, make_tree(tmp_path / "vm", BOOT)))
    ctx = BackendContext(
        workspace_id="w1",
        runtime=tmp_path / "rt",
        tmp=tmp_path / "tmp",
        network=Network(bridge="sbxtest0", subnet="10.213.0.0/24"),
        images=ImageAccess(store, lambda _digest, _sink: vm),
    )
    b = LibvirtBackend(ctx)
    conn = b._conn = Conn(alive=1)
    b.create(InstanceSpec(name="dev-0", env="dev", index=0, image=digest, address="10.213.0.2"))
    root = tmp_path / "rt" / "libvirt"
    d = root / "instances" / "dev-0"
    [xml] = conn.defined
    assert f'<source file="{d / "disk.qcow2"}"/>' in xml and f'<source file="{d / "config.img"}"/>' in xml
    assert f"<kernel>{root / 'images' / vm[7:] / 'vmlinuz'}</kernel>" in xml
    assert b.images() == [digest] and b.address("dev-0") == "10.213.0.2"
    b.start("dev-0")
    assert flushed == [["ip", "neigh", "flush", "to", "10.213.0.2"]] and b.state("dev-0") == "running"
    assert b.logs_argv("dev-0", False, 5) == ["tail", "-n", "5", str(d / "console.log")]
    with pytest.raises(BackendError, match="already exists"):
        b.create(InstanceSpec(name="dev-0", env="dev", index=0, image=digest, address="10.213.0.2"))
    b.destroy("dev-0")
    assert not d.exists() and b.state("dev-0") == "missing"
    b.forget_image(digest)
    assert b.images() == [] and not (root / "images" / vm[7:]).exists()


# -- publishing: nat OUTPUT too, never for loopback -------------------------------------------------------


def test_published_ports_are_reached_from_the_host_itself_but_not_via_loopback() -> None:
    """The nat OUTPUT jump (a host reaching its own published port) excludes 127.0.0.0/8, beside the
    PREROUTING one, both made on a bare host in the same batch."""
    lines = publish.batch(publish.Tables(""), "prod-0", publish._rules("prod-0", 20002, "10.213.0.2", 8000))
    jumps = [line for line in lines.splitlines() if line.startswith(("-I OUTPUT", "-I PREROUTING"))]
    assert sorted(jumps) == [
        "-I OUTPUT 1 ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j SANDBOX-PUB",
        "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j SANDBOX-PUB",
    ]
