"""The libvirt backend on a production host: the same LibvirtBackend over the host's own libvirtd.

The host's libvirt socket (/var/run/libvirt/libvirt-sock) is forwarded by the same strict,
multiplexed ssh connection the host agent uses (`SshTransport.forward_unix`), and libvirt-python
connects to its local end, `qemu+unix:///system?socket=LOCAL`. So every domain call (define, start,
stop, state, the guest agent's exec and file writes) is the LibvirtBackend code of this machine. Why
not libvirt's own `qemu+ssh://`: docs/hosts.md (libvirt on hosts).

What needs the host's own files goes through the host agent (`HostVmFiles`, each method one call of
its `libvirt` op, sandbox/hostagent/libvirtops.py, which runs the same VmFiles as this machine): the
image's VM disk, kernel and initrd, made on the host from its own store (the VM flavour is derived
here and shipped by digest, sandbox/hosts/ship.py), each instance's overlay and config disk, the KVM
probe, the DNAT rule that publishes the app at HOST_ADDRESS:PORT, the serial console. The domain is
defined with the paths the host answers, checked first.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt

from sandbox.backends.base import Backend, BackendContext, BackendError, InstanceSpec, UnsupportedOperation
from sandbox.backends.libvirt import LibvirtBackend
from sandbox.backends.libvirtconn import _calls
from sandbox.backends.remote import OnHost
from sandbox.backends.vmfiles import LIBVIRT_SOCKET, VmInstance
from sandbox.hosts.agent import HostAgent
from sandbox.hosts.agentcall import AgentError

#: a path the host answers for a domain: absolute, printable, bounded (it goes into the domain XML)
HOST_PATH = re.compile(r"/[^\x00-\x1f\x7f]{1,4095}")


class HostVmFiles:
    """The VM files of one workspace on one host: every method one call of the host agent."""

    def __init__(self, backend: RemoteLibvirt) -> None:
        self.b = backend

    def check(self, bridge: bool) -> None:
        self.b._call("check", timeout=120)

    def make_instance(self, spec: InstanceSpec, disk_from: Path | None = None) -> VmInstance:
        if disk_from is not None:
            raise UnsupportedOperation(f"host {self.b.host}: VMs on hosts cannot be cloned")
        made = self.b._call("create", spec=self.b._spec(spec), publish=self.b._publish(spec), timeout=None)
        return vm_instance(made, self.b.host)

    def starting(self, name: str) -> None:
        self.b._call("start", name=name)

    def remove_instance(self, name: str) -> None:
        self.b._call("destroy", name=name)

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        return self.b._host_argv("libvirt-logs", name=name, follow=follow, lines=lines)

    def images(self) -> list[str]:
        return list(self.b._call("images"))

    def forget_image(self, digest: str) -> None:
        self.b._prepared.discard(digest)
        self.b._call("forget_image", digest=digest)

    def clean_stale(self) -> list[str]:
        return [f"{self.b.host}:{p}" for p in self.b._call("clean_stale")]


def vm_instance(answer: Any, host: str) -> VmInstance:
    """A host's answer to `create`, checked: the paths go into the domain's XML."""
    keys = ("kernel", "initrd", "disk", "config_disk", "console_log")
    ok = isinstance(answer, dict) and answer.get("domain_type") in ("kvm", "qemu")
    ok = ok and all(isinstance(answer.get(k), str) and HOST_PATH.fullmatch(answer[k]) for k in keys)
    if not ok:
        raise AgentError(f"host {host}: malformed answer to create: {str(answer)[:200]}", host=host)
    return VmInstance(**{k: str(answer[k]) for k in (*keys, "domain_type")})


class RemoteLibvirt(OnHost, LibvirtBackend):
    """VMs of one workspace on the libvirtd of one host (name: the host's name in the profile)."""

    name = "libvirt"
    capabilities = frozenset({"init", "logs", "static-address"})
    agent_op = "libvirt"

    def __init__(self, ctx: BackendContext, agent: HostAgent, host_address: str) -> None:
        super().__init__(ctx)
        self._on_host(agent, host_address)
        self.files = HostVmFiles(self)
        self._uri: str | None = None

    @property
    def uri(self) -> str:
        """The host's libvirtd through the socket forwarded by the ssh connection (made on first use)."""
        if self._uri is None:
            self._uri = f"qemu+unix:///system?socket={self._forwarded(LIBVIRT_SOCKET)}"
        return self._uri

    @contextlib.contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """As on this machine, and: when libvirt fails because the host is gone (the forwarded socket
        dies with the ssh connection, within its keep-alive of about 6 s), the error is the transport's
        HostUnreachable naming the host, so a promotion stops safely."""
        try:
            with _calls(f"host {self.host}: {what}"):
                yield
        except BackendError:
            if not self._alive():
                self._conn, self._uri = None, None  # the next call forwards the socket again
                self.agent.transport.run(["true"], timeout=30)  # raises HostUnreachable if the host is gone
            raise

    def _alive(self) -> bool:
        try:
            return self._conn is not None and self._conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def ships(self, digest: str) -> str:
        """What goes to the host for image `digest`: its VM flavour (built here once)."""
        return self._vm_digest(digest)

    def prepare_image(self, digest: str) -> None:
        # once per command: a promotion asks again for every instance it starts
        if digest not in self._prepared:
            self._call("prepare_image", digest=digest, vm=self._vm_digest(digest), timeout=None)
            self._prepared.add(digest)

    # snapshots and clones copy a VM's disk: not done on hosts yet (docs/hosts.md)
    def snapshot(self, name: str, snap: str) -> dict[str, str]:
        return Backend.snapshot(self, name, snap)

    def restore(self, name: str, snap: str) -> None:
        Backend.restore(self, name, snap)

    def delete_snapshot(self, name: str, snap: str) -> None:
        Backend.delete_snapshot(self, name, snap)

    def clone(self, src: str, spec: InstanceSpec) -> None:
        Backend.clone(self, src, spec)
