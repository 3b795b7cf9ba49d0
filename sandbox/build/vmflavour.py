"""The VM flavour of an image: the image plus a kernel, udev, the guest agent and boot-time setup.

    image (base + app layers) ─▶ + vm layer ─▶ VM image (its own manifest, `flavour: vm`)

The extra packages are pinned like the image's own: `recipes/NAME.vm.lock`
holds them (version + .deb sha256), resolved once against the image's exact
package versions. The vm layer is made by installing exactly those .debs from
a local `file://` repository (the builder's package cache) into an overlay of
the flattened image, with SOURCE_DATE_EPOCH set, then writing the overlay's
upper dir as a normal layer. A VM image is cached by (image, vm lock), so it is
built once per image; the libvirt backend and the qcow2 export ask for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox.build.debcache import PackageCache
from sandbox.build.hostapt import PackageRecord, PrivateApt, host_sources
from sandbox.build.lock import LOCK_VERSION, Lock
from sandbox.build.normalize import clean_rootfs, write_layer
from sandbox.build.overlay import build_ids, overlay
from sandbox.build.rootfs import run_in_root
from sandbox.errors import BuildError, LockError
from sandbox.events import Event, EventSink, null_sink
from sandbox.fsutil import atomic_write, remove_tree
from sandbox.imageformats.rootfs import flattened
from sandbox.imageformats.vmdisk import CONFIG_LABEL
from sandbox.saferoot import (
    UnsafePath,
    list_in_root,
    mkdirs_in_root,
    remove_in_root,
    symlink_in_root,
    write_in_root,
)
from sandbox.store import ImageStore
from sandbox.store.layers import merge_indexes
from sandbox.workspace import Workspace

#: bump when the vm layer's bytes change for the same inputs
VM_FORMAT = 5
#: what a VM needs beyond a container image: a kernel (with its initramfs), udev (device nodes,
#: module loading, the guest agent's virtio port) and the guest agent (exec, files)
VM_PACKAGES = ("linux-image-cloud-amd64", "udev", "qemu-guest-agent")

# boot-time setup of a VM: the network from the kernel's `ip=` (systemd-network-generator ->
# systemd-networkd), the root filesystem read-write, and the per-instance files from the config disk
VM_FILES: dict[str, str] = {
    "etc/fstab": "/dev/vda / ext4 defaults,noatime 0 1\n",
    "etc/systemd/system/sandbox-instance.service": (
        "[Unit]\n"
        "Description=sandbox: this instance's files from its config disk\n"
        "DefaultDependencies=no\n"
        "ConditionPathExists=/dev/vdb\n"
        "After=systemd-remount-fs.service\n"
        "Before=sandbox-app.service systemd-networkd.service sysinit.target\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        "ExecStart=/usr/local/sbin/sandbox-instance\n"
        "[Install]\n"
        "WantedBy=sysinit.target\n"
    ),
    "usr/local/sbin/sandbox-instance": (
        "#!/bin/sh\n"
        "# copy instance.env and the hostname from the instance's config disk (read-only, vdb)\n"
        "set -e\n"
        "m=/run/sandbox-config\n"
        f'[ "$(blkid -o value -s LABEL /dev/vdb)" = {CONFIG_LABEL} ] || exit 0\n'
        "mkdir -p $m /etc/sandbox\n"
        "mount -o ro /dev/vdb $m\n"
        "[ -f $m/instance.env ] && install -m 0600 $m/instance.env /etc/sandbox/instance.env\n"
        "[ -f $m/hosts ] && install -m 0644 $m/hosts /etc/hosts\n"
        "if [ -f $m/hostname ]; then install -m 0644 $m/hostname /etc/hostname; "
        'hostname "$(cat /etc/hostname)"; fi\n'
        "umount $m\n"
    ),
}
VM_LINKS: dict[str, str] = {
    "etc/systemd/system/sysinit.target.wants/sandbox-instance.service": "../sandbox-instance.service",
    "etc/systemd/system/multi-user.target.wants/systemd-networkd.service": (
        "/lib/systemd/system/systemd-networkd.service"
    ),
    "etc/systemd/system/sockets.target.wants/systemd-networkd.socket": (
        "/lib/systemd/system/systemd-networkd.socket"
    ),
    "etc/systemd/system/sysinit.target.wants/systemd-network-generator.service": (
        "/lib/systemd/system/systemd-network-generator.service"
    ),
    # not needed in a VM whose disk is made fresh: e2scrub scans LVM snapshots (slow under TCG)
    "etc/systemd/system/e2scrub_reap.service": "/dev/null",
    # no login prompts on virtual terminals nobody sees (each costs seconds under TCG)
    "etc/systemd/system/getty-static.service": "/dev/null",
    "etc/systemd/system/getty@.service": "/dev/null",
    # the console on ttyS0 needs no getty to be useful, and the serial getty waits for a device
    "etc/systemd/system/serial-getty@ttyS0.service": "/dev/null",
}


@dataclass(frozen=True)
class VmLock:
    image_packages: str  # digest of the image's package versions this lock was resolved against
    requested: tuple[str, ...]
    packages: tuple[PackageRecord, ...]

    def to_json(self) -> str:
        doc = {
            "lock_version": LOCK_VERSION,
            "flavour": "vm",
            "image_packages": self.image_packages,
            "requested": list(self.requested),
            "packages": [asdict(p) for p in sorted(self.packages, key=lambda p: p.name)],
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def packages_digest(versions: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()


def read_vm_lock(path: Path) -> VmLock | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return VmLock(
            str(doc["image_packages"]),
            tuple(str(p) for p in doc["requested"]),
            tuple(PackageRecord(**p) for p in doc["packages"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise LockError(f"{path}: malformed VM lock ({e})", hint=f"delete {path}; it is re-resolved") from e


def extra_packages(installs: list[tuple[str, str, str]], image: dict[str, str]) -> list[tuple[str, str]]:
    """The packages a resolution adds to the image; an image package at another version is an error."""
    extra = []
    for name, version, _arch in installs:
        have = image.get(name)
        if have is None:
            extra.append((name, version))
        elif have != version:
            raise LockError(
                f"the VM packages need {name} {version}, but the image has {have}",
                hint="re-lock the recipe (`sandbox lock`) and build again",
            )
    return sorted(extra)


class VmFlavour:
    def __init__(self, ws: Workspace, sink: EventSink = null_sink) -> None:
        self.ws = ws
        self.sink = sink
        self.store = ImageStore(ws.images)
        self.packages = PackageCache(ws.cache / "debs")

    def lock_path(self, recipe: str) -> Path:
        return self.ws.recipes / f"{recipe}.vm.lock"

    def _apt(self, manifest: dict[str, Any]) -> PrivateApt:
        base = manifest["base"]
        apt = PrivateApt(
            self.ws.cache / "apt" / f"{base['suite']}-{base['architecture']}",
            base["suite"],
            base["architecture"],
            host_sources(base["suite"]),
        )
        apt.prepare()
        return apt

    def vm_lock(self, manifest: dict[str, Any], *, locked: bool = False) -> VmLock:
        """The VM lock for this image's packages: read, or resolved and written."""
        versions: dict[str, str] = manifest["packages"]
        want = packages_digest(versions)
        path = self.lock_path(manifest["recipe"]["name"])
        lock = read_vm_lock(path)
        if lock is not None and lock.image_packages == want and lock.requested == VM_PACKAGES:
            return lock
        if locked:
            raise LockError(
                f"{path.name} is missing or does not match the image's packages, and --locked was given",
                hint="build once without --locked to resolve the VM packages",
            )
        self.sink(Event("progress", phase="lock", message="resolving the VM packages (kernel, agent)"))
        apt = self._apt(manifest)
        apt.update()
        installs, missing = apt.simulate(
            [f"{n}={v}" for n, v in sorted(versions.items())] + list(VM_PACKAGES)
        )
        if missing:
            raise LockError(
                f"VM packages not found: {', '.join(missing)}", hint="check the host's apt sources"
            )
        pins = extra_packages(installs, versions)
        records = apt.records(pins)
        lock = VmLock(want, VM_PACKAGES, tuple(sorted(records, key=lambda p: p.name)))
        atomic_write(path, lock.to_json().encode())
        return lock

    def build(self, digest: str, *, locked: bool = False) -> str:
        """The digest of the VM flavour of image `digest` (built once, then cached)."""
        manifest = self.store.manifest(digest)
        if manifest.get("flavour") == "vm":
            return digest
        vlock = self.vm_lock(manifest, locked=locked)
        key = hashlib.sha256(f"{digest} {vlock.digest} {VM_FORMAT}".encode()).hexdigest()
        cached = self.store.cache_get("vm", key)
        if cached is not None and self.store.manifest_path(cached).is_file():
            return cached
        base = manifest["base"]
        sde = int(manifest["created"])
        plock = Lock(
            recipe=manifest["recipe"]["name"],
            inputs=vlock.image_packages,
            suite=base["suite"],
            variant=base["variant"],
            architecture=base["architecture"],
            source_date_epoch=sde,
            packages=vlock.packages,
        )
        if self.packages.missing(plock):
            self.sink(Event("progress", phase="fetch", message="downloading the VM packages"))
            self.packages.fetch(plock, lambda: self._apt(manifest))
        self.sink(Event("phase-start", phase="vm", message=f"making the VM flavour of {digest[7:19]}"))
        self.ws.tmp.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.ws.tmp, prefix=f"build-{os.getpid()}-vm-"))
        try:
            with (
                flattened(self.store, digest, self.ws.tmp) as lower,
                overlay(lower, work / "ov", build_ids(self.ws)) as (merged, upper),
            ):
                self._install(merged, plock, sde)
                clean_rootfs(merged)
                layer, _size, index = self.store.put_blob(
                    lambda f: write_layer(upper, f, sde, overlay_upper=True)
                )
                self.store.put_layer_index(layer, index)
        finally:
            remove_tree(work)
        vm = self._manifest(manifest, digest, vlock, layer)
        self.store.cache_put("vm", key, vm)
        self.sink(Event("phase-end", phase="vm", message=f"VM flavour {vm[7:19]}"))
        return vm

    def _install(self, root: Path, plock: Lock, sde: int) -> None:
        """Install the VM packages from a local repo inside the image, then write VM_FILES/VM_LINKS.

        Everything here is written through saferoot: /run must be a plain directory of the image
        (no link), the repo is a fresh directory (mkdir, so nothing was planted in it) that is used
        through its fd, and the files and links resolve their parents inside the image only."""
        name = "sbx-repo"  # a fixed name: the VM layer's bytes must not depend on it
        try:
            run_fd = mkdirs_in_root(root, "run", 0o755, 0, 0)
        except UnsafePath as e:
            raise BuildError(f"cannot make the VM flavour: {e.message}", hint=e.hint) from e
        try:
            try:
                os.mkdir(name, 0o755, dir_fd=run_fd)  # fresh: nothing can have been planted in it
            except FileExistsError as e:
                raise BuildError(
                    f"the image already has /run/{name}, which the VM flavour uses for its packages",
                    hint=f"remove /run/{name} from the recipe",
                ) from e
            repo_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=run_fd)
            try:
                repo = Path(f"/proc/self/fd/{repo_fd}")  # the directory just made, whatever its path
                source = self.packages.make_repo(plock, repo).replace(f"file://{repo}", f"file:///run/{name}")
            finally:
                os.close(repo_fd)
        finally:
            os.close(run_fd)
        try:
            # no fd of the image is held open meanwhile: the jail remounts the build overlay
            self._apt_install(root, plock, sde, source)
        finally:
            run_fd = mkdirs_in_root(root, "run", 0o755, 0, 0)
            try:
                shutil.rmtree(name, dir_fd=run_fd)  # fd-based: never follows a link planted meanwhile
            finally:
                os.close(run_fd)
        write_vm_files(root)
        boot = list_in_root(root, "boot")
        if not any(n.startswith("vmlinuz-") for n in boot) or not any(
            n.startswith("initrd.img-") for n in boot
        ):
            raise BuildError("the VM packages left no kernel and initrd in /boot", hint="see the VM lock")

    def _apt_install(self, root: Path, plock: Lock, sde: int, source: str) -> None:
        try:
            write_in_root(root, "run/sbx-sources.list", (source + "\n").encode())
        except UnsafePath as e:
            raise BuildError(f"cannot make the VM flavour: {e.message}", hint=e.hint) from e
        opts = [
            "-o", "Dir::Etc::SourceList=/run/sbx-sources.list",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", "APT::Install-Recommends=false",
            "-o", "Dpkg::Options::=--force-unsafe-io",
        ]  # fmt: skip
        env = {"SOURCE_DATE_EPOCH": str(sde), "INITRD": "Yes"}
        names = [p.name for p in plock.packages]
        try:
            for argv in (["apt-get", *opts, "update"], ["apt-get", *opts, "install", "-y", *names]):
                p = run_in_root(root, argv, env)
                if p.returncode != 0:
                    raise BuildError(
                        f"installing the VM packages failed ({argv[-1]}):\n"
                        + "\n".join((p.stderr + p.stdout).strip().splitlines()[-15:])
                    )
        finally:
            remove_in_root(root, "run/sbx-sources.list")

    def _manifest(self, manifest: dict[str, Any], digest: str, vlock: VmLock, layer: str) -> str:
        layers = [
            *manifest["layers"],
            {"kind": "vm", "digest": layer, "size": self.store.blob_path(layer).stat().st_size},
        ]
        files = merge_indexes([self.store.layer_index(x["digest"]) for x in layers])
        vm = {
            **manifest,
            "flavour": "vm",
            "derives_from": digest,
            "vm_lock": {"digest": vlock.digest, "format": VM_FORMAT},
            "layers": layers,
            "packages": {**manifest["packages"], **{p.name: p.version for p in vlock.packages}},
            "files": files,
        }
        return self.store.put_manifest(vm)


def write_vm_files(root: Path) -> None:
    """VM_FILES and VM_LINKS into image root `root` (through saferoot: parents resolve in the image)."""
    try:
        for rel, text in VM_FILES.items():
            mode = 0o755 if "/sbin/" in rel else 0o644
            write_in_root(root, rel, text.encode(), mode, 0, 0, links="in_root", parents=(0o755, 0, 0))
        for rel, target in VM_LINKS.items():
            symlink_in_root(root, rel, target, 0, 0, links="in_root", parents=(0o755, 0, 0))
    except UnsafePath as e:
        raise BuildError(f"cannot make the VM flavour: {e.message}", hint=e.hint) from e


def vm_flavour(ws: Workspace, digest: str, sink: EventSink = null_sink) -> str:
    """The VM flavour of image `digest`, built if needed (for the libvirt backend and qcow2 export)."""
    return VmFlavour(ws, sink).build(digest)
