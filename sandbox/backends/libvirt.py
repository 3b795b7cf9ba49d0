"""KVM (or TCG) virtual machines through libvirt (libvirt-python, imported only here).

Per image: its VM flavour (made by the env layer: the context's `derive_vm`) as
a raw ext4 disk plus the kernel and initrd from its /boot, under runtime/libvirt/images/.
Per instance: a qcow2 overlay on that disk, a config disk (those files: backends/vmfiles.py,
which a production host's agent runs too), a persistent domain named
`sbx-<workspace id>-<instance>` and tagged with sandbox metadata (backends/libvirtxml.py),
booted directly from the kernel with the instance's address on the kernel command line.
exec and files go through qemu-guest-agent (backends/guestagent.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from sandbox.backends import guestagent
from sandbox.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    ExecResult,
    InstanceSpec,
    UnsupportedOperation,
)
from sandbox.backends.hostsetup import gateway
from sandbox.backends.instancefiles import APP_ENV_FILE, INSTANCE_ENV_FILE, parse_env_file
from sandbox.backends.libvirtconn import _calls
from sandbox.backends.libvirtxml import DomainConfig, mac_for, render_domain_xml
from sandbox.backends.vmfiles import VmFiles, VmStorage
from sandbox.imageformats import vmdisk
from sandbox.imageformats.vmdisk import kernel_cmdline
from sandbox.saferoot import READ_LIMIT

DEFAULT_URI = "qemu:///system"
DEFAULT_MEMORY_MIB = 512
#: how long exec waits for the guest agent of a booting VM (TCG boots take ~45 s on 2 cores)
AGENT_WAIT = 300.0


class LibvirtBackend(Backend):
    name = "libvirt"
    capabilities = frozenset({"snapshot", "clone", "init", "logs", "static-address", "remote"})

    _conn: Any = None

    def __init__(self, ctx: BackendContext, remote: str | None = None) -> None:
        super().__init__(ctx, remote)
        #: this machine's VM files (disks, kernels, console logs); `files` is where the domains run
        self.vm = VmFiles(self.root, self.store, ctx.tmp, ctx.network, self.sink)
        self.files: VmStorage = self.vm

    @property
    def uri(self) -> str:
        return self.remote or os.environ.get("SANDBOX_LIBVIRT_URI") or DEFAULT_URI

    @property
    def root(self) -> Path:
        return self.ctx.runtime / "libvirt"

    def domain_name(self, name: str) -> str:
        return f"sbx-{self.ctx.workspace_id}-{name}"

    def _calls(self, what: str) -> contextlib.AbstractContextManager[None]:
        """A block of libvirt calls: a libvirtError becomes a BackendError saying what was done."""
        return _calls(what)

    def conn(self) -> Any:
        if self._conn is None:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
            with self._calls(f"connecting to {self.uri}"):
                self._conn = libvirt.open(self.uri)
        return self._conn

    def _domain(self, name: str) -> Any | None:
        with self._calls(f"looking up {name}"):
            try:
                return self.conn().lookupByName(self.domain_name(name))
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

    def _dom(self, name: str) -> Any:
        dom = self._domain(name)
        if dom is None:
            raise BackendError(f"instance {name} does not exist", hint="`sandbox ls` shows what exists")
        return dom

    # -- prerequisites -----------------------------------------------------
    def check(self) -> None:
        self.files.check(bridge=self.remote is None)
        self.conn()

    # -- images ------------------------------------------------------------
    def _vm_digest(self, digest: str) -> str:
        derive = self.ctx.images.derive_vm
        if derive is None:
            raise BackendError(
                "the libvirt backend was made without a way to build VM images",
                hint="this is a bug in sandbox: its backend context lacks derive_vm",
            )
        return derive(digest, self.sink)

    def prepare_image(self, digest: str) -> None:
        if self.vm.boot_files(digest) is None:
            self.vm.prepare(digest, self._vm_digest(digest))

    def forget_image(self, digest: str) -> None:
        self.files.forget_image(digest)

    def clean_stale(self) -> list[str]:
        return self.files.clean_stale()

    def images(self) -> list[str]:
        """Images (the env's digests, not their VM flavours) whose VM disk this backend keeps."""
        return self.files.images()

    # -- instances ---------------------------------------------------------
    def create(self, spec: InstanceSpec, disk_from: Path | None = None) -> None:
        if spec.mounts:
            raise UnsupportedOperation(
                f"the libvirt backend cannot share host folders with a VM ({len(spec.mounts)} mounts: "
                + ", ".join(m.dest for m in spec.mounts)
                + ")",
                hint="remove `mounts:` from the profile, or use the lxc, lxd or docker backend",
            )
        if spec.address is None:
            raise BackendError(f"instance {spec.name} has no address", hint="this is a bug in sandbox")
        self.prepare_image(spec.image)
        if self._domain(spec.name) is not None:
            raise BackendError(f"instance {spec.name} already exists", hint="`sandbox gc` removes leftovers")
        made = self.files.make_instance(spec, disk_from)
        net = self.ctx.network
        dom_name = self.domain_name(spec.name)
        cfg = DomainConfig(
            name=dom_name,
            instance=spec.name,
            workspace=self.ctx.workspace_id,
            env=spec.env,
            image=spec.image,
            domain_type=made.domain_type,
            memory_mib=int(spec.memory // (1 << 20)) if spec.memory else DEFAULT_MEMORY_MIB,
            vcpus=max(1, math.ceil(spec.cpus)) if spec.cpus else 1,
            kernel=made.kernel,
            initrd=made.initrd,
            cmdline=kernel_cmdline(spec.address, net.subnet, gateway(net.subnet)[0]),
            disk=made.disk,
            config_disk=made.config_disk,
            bridge=net.bridge,
            mac=mac_for(dom_name),
            console_log=made.console_log,
            address=spec.address,
        )
        with self._calls(f"defining the domain of {spec.name}"):
            self.conn().defineXML(render_domain_xml(cfg))

    def start(self, name: str) -> None:
        if self.remote is None:
            self.files.starting(name)
        dom = self._dom(name)
        with self._calls(f"starting {name}"):
            if not dom.isActive():
                dom.create()

    def stop(self, name: str, timeout: float = 10.0) -> None:
        dom = self._domain(name)
        if dom is None:
            return
        with self._calls(f"stopping {name}"):
            if dom.isActive():
                with contextlib.suppress(libvirt.libvirtError):
                    dom.shutdown()
                deadline = time.monotonic() + timeout
                while dom.isActive() and time.monotonic() < deadline:
                    time.sleep(0.2)
                if dom.isActive():
                    dom.destroy()

    def destroy(self, name: str) -> None:
        dom = self._domain(name)
        if dom is not None:
            with self._calls(f"removing {name}"):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        self.files.remove_instance(name)

    def state(self, name: str) -> str:
        dom = self._domain(name)
        if dom is None:
            return "missing"
        with self._calls(f"reading the state of {name}"):
            return "running" if dom.isActive() else "stopped"

    def address(self, name: str) -> str:
        addr = self.vm.meta(name).get("address")
        if not addr:
            raise BackendError(f"instance {name} has no recorded address")
        return addr

    # -- guest agent -------------------------------------------------------
    def _agent(self, name: str, wait: float = AGENT_WAIT) -> guestagent.Send:
        dom = self._dom(name)

        def send(cmd: str, timeout: int) -> str:
            with self._calls(f"guest agent of {name}"):
                reply: str = libvirt_qemu.qemuAgentCommand(dom, cmd, timeout, 0)
                return reply

        deadline = time.monotonic() + wait
        while not guestagent.ping(_quiet(send)):
            if not dom.isActive():
                raise BackendError(f"instance {name} is not running", hint=f"sandbox start {name}")
            if time.monotonic() > deadline:
                raise BackendError(
                    f"the guest agent of {name} did not answer within {wait:.0f}s",
                    hint="the VM may hang at boot: see `sandbox logs`",
                )
            time.sleep(1.0)
        return send

    def exec(
        self,
        name: str,
        argv: list[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        interactive: bool = False,
        timeout: float | None = None,
    ) -> ExecResult:
        if interactive and argv == ["/bin/bash", "-l"]:
            raise UnsupportedOperation(
                "the libvirt backend has no interactive shell (commands run through the guest agent)",
                hint="run single commands: sandbox exec ENV -- CMD; the serial console: sandbox logs ENV",
            )
        send = self._agent(name)
        # read in the guest (no host file is reachable there), but bounded: regular files only (a
        # FIFO would hang the agent) and at most READ_LIMIT bytes each (not /dev/zero's endless zeros)
        script = f'for f; do [ -f "$f" ] && head -c {READ_LIMIT} -- "$f"; echo; done 2>/dev/null'
        files = guestagent.guest_exec(
            send, ["/bin/sh", "-c", script, "sh", f"/{APP_ENV_FILE}", f"/{INSTANCE_ENV_FILE}"], timeout=30
        )
        environ = {**parse_env_file(files.stdout), **(env or {})}  # what the app sees, as on every backend
        r = guestagent.guest_exec(send, argv, user=user, env=environ, timeout=timeout, what=name)
        if interactive:  # no terminal through the agent: the output is shown when the command ends
            sys.stdout.write(r.stdout)
            sys.stdout.flush()
            sys.stderr.write(r.stderr)
            sys.stderr.flush()
        return r

    def put_file(self, name: str, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        guestagent.put_file(self._agent(name), path, data, mode, uid, gid, what=name)

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        """The serial console (boot messages and systemd's status lines)."""
        return self.files.logs_argv(name, follow, lines)

    # -- snapshots and clones ----------------------------------------------
    @contextlib.contextmanager
    def _paused(self, name: str) -> Iterator[None]:
        """The domain paused (qemu flushes its disk caches when it stops), resumed afterwards."""
        dom = self._dom(name)
        running = dom.isActive() and dom.info()[0] == libvirt.VIR_DOMAIN_RUNNING
        if running:
            with contextlib.suppress(BackendError):
                guestagent.guest_exec(self._agent(name, wait=5), ["sync"], timeout=30)
            with self._calls(f"pausing {name}"):
                dom.suspend()
        try:
            yield
        finally:
            if running:
                with self._calls(f"resuming {name}"):
                    dom.resume()

    def snapshot(self, name: str, snap: str) -> dict[str, str]:
        dest = self.vm.instance_dir(name) / "snaps" / f"{snap}.qcow2"
        if dest.exists():
            raise BackendError(f"snapshot {snap} of {name} exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._paused(name):
            vmdisk.copy_overlay(self.vm.instance_dir(name) / "disk.qcow2", dest)
        return {"path": str(dest)}

    def restore(self, name: str, snap: str) -> None:
        src = self.vm.instance_dir(name) / "snaps" / f"{snap}.qcow2"
        if not src.is_file():
            raise BackendError(f"instance {name} has no snapshot {snap}")
        was_running = self.state(name) == "running"
        if was_running:
            with self._calls(f"stopping {name}"):
                self._dom(name).destroy()  # the disk is replaced: nothing to shut down cleanly
        vmdisk.copy_overlay(src, self.vm.instance_dir(name) / "disk.qcow2")
        if was_running:
            self.start(name)

    def delete_snapshot(self, name: str, snap: str) -> None:
        (self.vm.instance_dir(name) / "snaps" / f"{snap}.qcow2").unlink(missing_ok=True)

    def clone(self, src: str, spec: InstanceSpec) -> None:
        tmp = self.root / "instances" / f".clone-{os.getpid()}-{spec.name}.qcow2"
        try:
            with self._paused(src):
                vmdisk.copy_overlay(self.vm.instance_dir(src) / "disk.qcow2", tmp)
            self.create(spec, disk_from=tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def instances(self) -> list[str]:
        prefix = self.domain_name("")
        with self._calls("listing domains"):
            names = [d.name() for d in self.conn().listAllDomains()]
        return sorted(n[len(prefix) :] for n in names if n.startswith(prefix))


def _quiet(send: guestagent.Send) -> guestagent.Send:
    """`send` with every error as an agent error (for pings while the VM boots)."""

    def wrapped(cmd: str, timeout: int) -> str:
        try:
            return send(cmd, timeout)
        except BackendError as e:
            return json.dumps({"error": {"desc": e.message}})

    return wrapped
