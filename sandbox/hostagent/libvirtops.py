"""libvirt's VMs on a host: `libvirt` (one method per call, JSON in and out) and `libvirt-logs` (the
serial console, streamed to the caller through ssh).

The control machine defines, starts and stops the domains itself, over this host's libvirt socket
forwarded by its ssh connection (sandbox/backends/remotelibvirt.py). What needs this host's files is
done here, by the same VmFiles as on the control machine (sandbox/backends/vmfiles.py): the VM disk,
kernel and initrd of an image, made from this host's own store (its VM flavour, shipped by digest and
sha256-verified on arrival, unpacked by the checked unpacker: no path in a layer is trusted), each
instance's qcow2 overlay and config disk, the KVM probe, publishing each app on the host's address,
and what gc lists. The methods are a fixed table and every value is checked first (instancereq.py).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from sandbox.backends.vmfiles import LIBVIRT_SOCKET, VmFiles
from sandbox.errors import SandboxError
from sandbox.hostagent import instancereq as req
from sandbox.hostagent.main import op


class VmImageMissing(SandboxError):
    """The VM flavour of an image is not in this host's store (it is shipped before it is used)."""


class LibvirtdMissing(SandboxError):
    """libvirtd does not listen on its socket on this host."""


class HostLibvirt(req.HostOps):
    """The VM files of one workspace on this host, plus publishing of each instance's app."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        super().__init__()
        self.ctx = req.host_context(ctx, self._sink)
        self.files = self.keeper = VmFiles(
            self.ctx.runtime / "libvirt", self.ctx.images.store, self.ctx.tmp, self.ctx.network, self._sink
        )
        self.publishing = req.Publishing(self.files.instance_dir)

    # -- the methods -------------------------------------------------------------------------------
    def check(self, args: dict[str, Any]) -> None:
        self.files.check(bridge=True)
        if not Path(LIBVIRT_SOCKET).is_socket():
            raise LibvirtdMissing(
                f"libvirtd is not running on this host (no {LIBVIRT_SOCKET})",
                hint="`sandbox host prepare PROFILE` installs and starts it (libvirt-daemon-system)",
            )

    def prepare_image(self, args: dict[str, Any]) -> None:
        """The VM disk of image `digest` from `vm`, its VM flavour in this host's store."""
        digest, vm = req.str_arg(args, "digest", req.DIGEST), req.str_arg(args, "vm", req.DIGEST)
        if self.files.flavour(digest) == vm and self.files.boot_files(digest) is not None:
            return
        store = self.ctx.images.store
        if not store.manifest_path(vm).is_file():
            raise VmImageMissing(
                f"the VM image {vm[7:19]} is not in this host's store",
                hint="it is shipped first: run `up` again",
            )
        manifest = store.manifest(vm)
        if manifest.get("flavour") != "vm" or manifest.get("derives_from") != digest:
            raise req.BadRequest(f"image {vm[7:19]} is not the VM flavour of {digest[7:19]}")
        self.files.prepare(digest, vm)

    def create(self, args: dict[str, Any]) -> dict[str, Any]:
        spec = req.spec_arg(args, self.ctx.network.subnet)
        self.publishing.checked(args)  # before anything is made
        made = self.files.make_instance(spec)
        self.publishing.remember(spec.name, args, str(spec.address))
        return dataclasses.asdict(made)

    def start(self, args: dict[str, Any]) -> None:
        name = req.str_arg(args, "name", req.INSTANCE)
        self.files.starting(name)
        self.publishing.start(name)

    def destroy(self, args: dict[str, Any]) -> None:
        name = req.str_arg(args, "name", req.INSTANCE)
        self.publishing.stop(name)
        self.files.remove_instance(name)


METHODS = req.method_table(
    HostLibvirt, ("check", "prepare_image", "create", "start", "destroy", *req.GC_METHODS)
)


@op("libvirt")
def libvirt_op(argv: list[str]) -> Any:
    return req.dispatch(METHODS, HostLibvirt)


@op("libvirt-logs")
def libvirt_logs(argv: list[str]) -> Any:
    """An instance's serial console (followed with `follow`), streamed to ssh's stdout."""
    ctx, args = req.tty_request(argv)
    host = HostLibvirt(ctx)
    cmd = host.files.logs_argv(
        req.str_arg(args, "name", req.INSTANCE), bool(args.get("follow")), req.int_arg(args, "lines", 100)
    )
    os.execvp(cmd[0], cmd)
