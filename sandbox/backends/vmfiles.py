"""The files of libvirt's VMs on the machine that runs them.

Per image: its VM flavour's disk (a raw ext4 file) with the kernel and initrd from its /boot, made
once from the store's blobs by the checked unpacker (imageformats/vmdisk.py), under
ROOT/images/<vm digest>/, and ROOT/images/<image digest>.vm naming that flavour. Per instance
(ROOT/instances/NAME/): a qcow2 overlay on that disk, a config disk with the instance's own files,
the serial console and sandbox.json. The local libvirt backend uses `VmFiles` directly; on a
production host the host agent runs the same class (sandbox/hostagent/libvirtops.py) and the control
machine defines the domains with the paths it answers (sandbox/backends/remotelibvirt.py). Nothing
here imports libvirt: the host agent runs on the host's own python3.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandbox.backends.base import BackendError, InstanceSpec, remove_stale_temps, run
from sandbox.backends.hostsetup import ensure_bridge
from sandbox.backends.instancefiles import INSTANCE_ENV_FILE, instance_files, instance_meta
from sandbox.backends.vmaccel import choose_accel
from sandbox.events import Event, EventSink
from sandbox.fsutil import file_lock, remove_tree
from sandbox.imageformats import vmdisk
from sandbox.settings import Network
from sandbox.store import ImageStore

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: libvirtd's socket (qemu:///system); on a production host it is forwarded to the control machine
LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"
#: config disk file → the instance file it carries (the guest's sandbox-instance.service copies them)
CONFIG_FILES = {"instance.env": INSTANCE_ENV_FILE, "hostname": "etc/hostname", "hosts": "etc/hosts"}


@dataclass(frozen=True)
class VmInstance:
    """What an instance's domain is made of: paths on the machine that runs it, and KVM or TCG."""

    kernel: str
    initrd: str
    disk: str  # qcow2 overlay
    config_disk: str
    console_log: str
    domain_type: str  # "kvm" or "qemu" (TCG)


class VmStorage(Protocol):
    """The VM files of one workspace where its domains run: this machine (`VmFiles`), or a production
    host through its agent (`remotelibvirt.HostVmFiles`)."""

    def check(self, bridge: bool) -> None: ...

    def make_instance(self, spec: InstanceSpec, disk_from: Path | None = None) -> VmInstance: ...

    def starting(self, name: str) -> None: ...

    def remove_instance(self, name: str) -> None: ...

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]: ...

    def images(self) -> list[str]: ...

    def forget_image(self, digest: str) -> None: ...

    def clean_stale(self) -> list[str]: ...


class VmFiles:
    """VM files below `root` (the workspace's runtime dir / libvirt), from the images of `store`."""

    def __init__(self, root: Path, store: ImageStore, tmp: Path, network: Network, sink: EventSink) -> None:
        self.root = root
        self.store = store
        self.tmp = tmp
        self.network = network
        self.sink = sink

    def check(self, bridge: bool) -> None:
        for tool, pkg in (("qemu-img", "qemu-utils"), ("mkfs.ext4", "e2fsprogs")):
            if shutil.which(tool) is None:
                raise BackendError(f"{tool} is not installed", hint=f"apt-get install {pkg}")
        if bridge:
            ensure_bridge(self.network.bridge, self.network.subnet)

    # -- images --------------------------------------------------------------------------------
    def _image_dir(self, vm_digest: str) -> Path:
        return self.root / "images" / vm_digest.removeprefix("sha256:")

    def _flavour_file(self, digest: str) -> Path:
        return self.root / "images" / f"{digest.removeprefix('sha256:')}.vm"

    def flavour(self, digest: str) -> str | None:
        """The VM flavour recorded for image `digest` (a digest, or None)."""
        try:
            vm = self._flavour_file(digest).read_text().strip()
        except OSError:
            return None
        return vm if DIGEST.fullmatch(vm) else None

    def boot_files(self, digest: str) -> vmdisk.BootFiles | None:
        """The disk, kernel and initrd of image `digest`, if they are made."""
        vm = self.flavour(digest)
        files = vmdisk.boot_files(self._image_dir(vm)) if vm is not None else None
        return files if files is not None and files.disk.is_file() else None

    def prepare(self, digest: str, vm: str) -> vmdisk.BootFiles:
        """Make the disk of image `digest` from its VM flavour `vm` (in the store), once."""
        d = self._image_dir(vm)
        d.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / "images" / ".lock"):
            if not vmdisk.boot_files(d).disk.is_file():
                t0 = time.monotonic()
                tmp = d.with_name(f".disk-{os.getpid()}-{d.name}")
                remove_tree(tmp)
                tmp.mkdir(mode=0o755)
                try:
                    vmdisk.make_image_disk(self.store, vm, tmp, self.tmp, self.sink)
                    os.rename(tmp, d)
                except BaseException:
                    remove_tree(tmp)
                    raise
                self.sink(Event("log", phase="up", message=f"VM disk made in {time.monotonic() - t0:.1f}s"))
            self._flavour_file(digest).write_text(vm + "\n")
        return vmdisk.boot_files(d)

    def images(self) -> list[str]:
        """Images (the env's digests, not their VM flavours) whose VM disk is kept here."""
        d = self.root / "images"
        return sorted("sha256:" + p.name.removesuffix(".vm") for p in d.glob("*.vm")) if d.is_dir() else []

    def forget_image(self, digest: str) -> None:
        vm = self.flavour(digest)
        if vm is not None:
            remove_tree(self._image_dir(vm))
        self._flavour_file(digest).unlink(missing_ok=True)

    def clean_stale(self) -> list[str]:
        """Half-made VM disks and clone copies of processes that died."""
        return remove_stale_temps([self.root / "images", self.root / "instances"], ("disk", "clone"))

    def accel(self, kernel: Path) -> str:
        accel, why = choose_accel(self.root / "accel.json", kernel)
        self.sink(Event("log", phase="up", message=f"libvirt: {accel} ({why})"))
        return accel

    # -- instances -----------------------------------------------------------------------------
    def instance_dir(self, name: str) -> Path:
        return self.root / "instances" / name

    def meta(self, name: str) -> dict[str, str]:
        return instance_meta(self.instance_dir(name))

    def make_instance(self, spec: InstanceSpec, disk_from: Path | None = None) -> VmInstance:
        """The instance's dir: its disk (an overlay on the image's disk, or a copy of `disk_from`),
        its config disk and sandbox.json. The image's disk must be made (`prepare`)."""
        boot = self.boot_files(spec.image)
        if boot is None:
            raise BackendError(
                f"image {spec.image[7:19]} has no VM disk here yet", hint="this is a bug in sandbox"
            )
        d = self.instance_dir(spec.name)
        if d.exists():
            raise BackendError(f"instance {spec.name} already exists", hint="`sandbox gc` removes leftovers")
        d.mkdir(parents=True, mode=0o755)
        disk = d / "disk.qcow2"
        if disk_from is not None:
            vmdisk.copy_overlay(disk_from, disk)
        else:
            vmdisk.make_overlay(boot.disk, disk)
        files = instance_files(spec)
        vmdisk.make_config_disk({flat: files[rel] for flat, rel in CONFIG_FILES.items()}, d / "config.img")
        meta = {"image": spec.image, "env": spec.env, "address": spec.address, "index": str(spec.index)}
        (d / "sandbox.json").write_text(json.dumps(meta))
        return VmInstance(
            kernel=str(boot.kernel),
            initrd=str(boot.initrd),
            disk=str(disk),
            config_disk=str(d / "config.img"),
            console_log=str(d / "console.log"),
            domain_type="kvm" if self.accel(boot.kernel) == "kvm" else "qemu",
        )

    def starting(self, name: str) -> None:
        """Before the domain starts: its address may have belonged to an instance removed moments
        ago, so this machine forgets that MAC."""
        address = self.meta(name).get("address")
        if address:
            run(["ip", "neigh", "flush", "to", address], timeout=10)

    def remove_instance(self, name: str) -> None:
        if self.instance_dir(name).exists():
            remove_tree(self.instance_dir(name))

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        """The serial console (boot messages and systemd's status lines)."""
        log = self.instance_dir(name) / "console.log"
        return ["tail", "-n", str(lines), *(["-F"] if follow else []), str(log)]
