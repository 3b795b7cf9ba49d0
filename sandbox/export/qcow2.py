"""The qcow2 export: the image's VM flavour as a disk qemu boots, with its kernel and initrd beside it.

The disk is the VM flavour's root filesystem (ext4, no partition table) converted
to qcow2; the VM boots directly from the kernel, as the libvirt backend does, so
three files come out:

    web-<id>.qcow2  web-<id>.qcow2.vmlinuz  web-<id>.qcow2.initrd.img

and qemu needs `-kernel`, `-initrd` and `-append "root=/dev/vda rw console=ttyS0
net.ifnames=0 ip=ADDR::GW:MASK::eth0:off"` (the exporter returns the whole
command line for qemu's user-mode network). A disk with its own bootloader
(a partition table and GRUB written without loop mounts) is not built.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from sandbox.build.vmflavour import vm_flavour
from sandbox.events import Event, EventSink
from sandbox.export import ExportError, final_path
from sandbox.imageformats.tools import run
from sandbox.imageformats.vmdisk import boot_files, kernel_cmdline, make_image_disk
from sandbox.store import ImageStore
from sandbox.workspace import Workspace

#: qemu's user-mode network: the guest's address and gateway
USER_NET = ("10.0.2.15", "10.0.2.0/24", "10.0.2.2")


def qemu_argv(disk: Path, kernel: Path, initrd: Path, host_port: int, guest_port: int) -> list[str]:
    """A qemu command line that boots the export (TCG) and forwards 127.0.0.1:host_port to the app."""
    addr, subnet, gw = USER_NET
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64", "-m", "512", "-nodefaults",
        "-display", "none", "-serial", "stdio",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", kernel_cmdline(addr, subnet, gw),
        "-drive", f"file={disk},format=qcow2,if=virtio",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip


def export_qcow2(
    ws: Workspace, store: ImageStore, digest: str, path: Path, sink: EventSink
) -> dict[str, Any]:
    vm = vm_flavour(ws, digest, sink)
    final = final_path(path)
    # written beside the temp image (a private dir), moved beside the final one with it
    kernel, initrd = path.with_name(path.name + ".vmlinuz"), path.with_name(path.name + ".initrd.img")
    ws.tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ws.tmp, prefix="export-qcow2-") as tmp:
        made = boot_files(ws.runtime / "libvirt" / "images" / vm.removeprefix("sha256:"))
        if not made.disk.is_file():  # not made by the libvirt backend yet
            made = boot_files(Path(tmp))
            make_image_disk(store, vm, Path(tmp), ws.tmp, sink)
        sink(Event("progress", phase="export", message="converting the disk to qcow2"))
        p = run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(made.disk), str(path)], timeout=1200)
        if p.returncode != 0:
            raise ExportError(f"qemu-img convert failed: {p.stderr.strip()}")
        try:
            shutil.copyfile(made.kernel, kernel)
            shutil.copyfile(made.initrd, initrd)
        except OSError as e:
            raise ExportError(f"cannot write {e.filename}: {e.strerror}") from e
    app = store.manifest(digest).get("app") or {}
    return {
        "vm_image": vm,
        "kernel": str(final_path(kernel)),
        "initrd": str(final_path(initrd)),
        "cmdline": kernel_cmdline(*USER_NET),
        "qemu": qemu_argv(final, final_path(kernel), final_path(initrd), 8080, int(app.get("port") or 80)),
    }
