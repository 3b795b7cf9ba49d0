"""Disks for VMs, made without root mounts or loop devices.

Per image (once): the VM flavour's root filesystem as a raw ext4 file
(`mkfs.ext4 -d`), with its kernel and initrd copied out of /boot beside it.
Per instance: a qcow2 overlay whose backing file is that raw disk (copy-on-
write), and a small read-only config disk (ext4, label `sbxconfig`) with the
instance's own files (instance.env, hostname), which the guest copies at boot.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import ToolMissing
from sandbox.events import Event, EventSink
from sandbox.imageformats.rootfs import flattened
from sandbox.imageformats.tools import ImageFormatError, run
from sandbox.saferoot import UnsafePath, copy_out_of_root, list_in_root
from sandbox.store import ImageStore

#: the label of the config disk each instance gets; the VM flavour's boot script looks for it
CONFIG_LABEL = "sbxconfig"
#: free space the root filesystem gets beyond the image's own size
HEADROOM = 1536 << 20
MIN_SIZE = 2 << 30


@dataclass(frozen=True)
class BootFiles:
    disk: Path  # raw ext4 root filesystem
    kernel: Path
    initrd: Path


def boot_files(d: Path) -> BootFiles:
    return BootFiles(d / "root.raw", d / "vmlinuz", d / "initrd.img")


def kernel_cmdline(address: str | None, subnet: str, gateway: str) -> str:
    """Root on the first virtio disk, console on the serial port, the static address via `ip=`."""
    parts = ["root=/dev/vda", "rw", "console=ttyS0", "loglevel=4", "net.ifnames=0", "panic=-1"]
    if address:
        mask = ipaddress.ip_network(subnet, strict=False).netmask
        parts.append(f"ip={address}::{gateway}:{mask}::eth0:off")
    return " ".join(parts)


def disk_size(used: int) -> int:
    """Size of the raw disk: the tree plus headroom, rounded up to 256 MiB, at least 2 GiB."""
    step = 256 << 20
    return max(MIN_SIZE, -(-(used + used // 4 + HEADROOM) // step) * step)


def make_ext4(src: Path, out: Path, size: int, label: str, seed: str, sde: int | None = None) -> None:
    """A raw ext4 file of `size` bytes holding the tree `src` (owners and modes kept).

    The UUID and directory hash seed come from `seed` and the timestamps from `sde`, so the
    same tree gives the same bytes.
    """
    fs_uuid = str(uuid.UUID(hashlib.sha256(seed.encode()).hexdigest()[:32]))
    with open(out, "wb") as f:
        f.truncate(size)
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, "-E", f"hash_seed={fs_uuid}"]
    argv += ["-d", str(src), str(out)]
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(sde)} if sde is not None else None
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    except FileNotFoundError as e:
        raise ToolMissing("mkfs.ext4 is not installed", hint="apt-get install e2fsprogs") from e
    if p.returncode != 0:
        raise ImageFormatError(f"mkfs.ext4 -d {src} failed: {p.stderr.strip()}")


def tree_size(root: Path) -> int:
    """Bytes of the regular files below `root` (hard links counted once)."""
    seen: set[int] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


#: a kernel or an initrd copied out of an image is at most this big (they are tens of MiB)
BOOT_FILE_LIMIT = 1 << 30


def newest(root: Path, prefix: str) -> str:
    """The image path of the newest /boot/PREFIX* of image root `root` (listed inside the image)."""
    found = [n for n in list_in_root(root, "boot") if n.startswith(prefix)]
    if not found:
        raise ImageFormatError(f"the VM image has no {prefix}* in /boot", hint="its VM flavour is incomplete")
    return f"boot/{found[-1]}"


def copy_boot_file(root: Path, prefix: str, dest: Path) -> None:
    """Copy the newest /boot/PREFIX* out of the image: a regular file inside it (links resolved in the
    image, never on the host), bounded, so a link planted in /boot cannot copy a host file out."""
    rel = newest(root, prefix)
    try:
        copy_out_of_root(root, rel, dest, BOOT_FILE_LIMIT, links="in_root")
    except (UnsafePath, FileNotFoundError) as e:
        raise ImageFormatError(
            f"cannot take /{rel} out of the VM image: {e}", hint="see its VM flavour"
        ) from e


def make_image_disk(store: ImageStore, vm_digest: str, dest: Path, tmp: Path, sink: EventSink) -> None:
    """Write root.raw, vmlinuz and initrd.img of VM image `vm_digest` into the new dir `dest`."""
    sde = int(store.manifest(vm_digest)["created"])
    files = boot_files(dest)
    with flattened(store, vm_digest, tmp) as root:
        sink(Event("progress", phase="up", message=f"making the VM disk of {vm_digest[7:19]}"))
        copy_boot_file(root, "vmlinuz-", files.kernel)
        copy_boot_file(root, "initrd.img-", files.initrd)
        make_ext4(root, files.disk, disk_size(tree_size(root)), "root", vm_digest, sde)
    for f in (files.disk, files.kernel, files.initrd):
        os.chmod(f, 0o644)


def make_overlay(backing: Path, out: Path) -> None:
    """A qcow2 file whose unwritten blocks read from the raw `backing` disk."""
    p = run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(backing), str(out)],
        check_tool="qemu-img",
    )
    if p.returncode != 0:
        raise ImageFormatError(f"qemu-img create {out.name} failed: {p.stderr.strip()}")


def copy_overlay(src: Path, out: Path) -> None:
    """A copy of an overlay that keeps the same backing file (a clone or a snapshot)."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".copy-") as d:  # private: no planted link
        tmp = Path(d) / out.name
        p = run(["cp", "--reflink=auto", "--sparse=always", "--", str(src), str(tmp)], timeout=600)
        if p.returncode != 0:
            raise ImageFormatError(f"cannot copy {src.name}: {p.stderr.strip()}")
        os.replace(tmp, out)


def make_config_disk(files: dict[str, str], out: Path) -> None:
    """The small read-only disk with an instance's own files."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".cfg-") as tmp:
        for rel, text in files.items():
            (Path(tmp) / rel).write_text(text)
        os.chmod(tmp, 0o755)
        make_ext4(Path(tmp), out, 4 << 20, CONFIG_LABEL, str(out))
    os.chmod(out, 0o644)
