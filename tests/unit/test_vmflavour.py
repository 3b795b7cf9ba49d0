"""The VM flavour's pure parts: which packages a resolution adds, the VM lock, disk sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.build.hostapt import PackageRecord
from sandbox.build.vmflavour import VM_PACKAGES, VmLock, extra_packages, packages_digest, read_vm_lock
from sandbox.errors import LockError
from sandbox.imageformats.vmdisk import MIN_SIZE, disk_size


def test_extra_packages_are_what_the_image_lacks() -> None:
    image = {"libc6": "2.36-9", "systemd": "252.39-1"}
    installs = [
        ("libc6", "2.36-9", "amd64"),
        ("udev", "252.39-1", "amd64"),
        ("kmod", "30+20221128-1", "amd64"),
    ]
    assert extra_packages(installs, image) == [("kmod", "30+20221128-1"), ("udev", "252.39-1")]


def test_an_image_package_at_another_version_is_an_error() -> None:
    with pytest.raises(LockError, match=r"libc6 2\.36-10, but the image has 2\.36-9"):
        extra_packages([("libc6", "2.36-10", "amd64")], {"libc6": "2.36-9"})


def test_vm_lock_round_trip(tmp_path: Path) -> None:
    rec = PackageRecord("udev", "252.39-1", "amd64", "a" * 64, 10, "udev_252.39-1_amd64.deb")
    lock = VmLock(packages_digest({"libc6": "2.36-9"}), VM_PACKAGES, (rec,))
    path = tmp_path / "web.vm.lock"
    path.write_text(lock.to_json())
    again = read_vm_lock(path)
    assert again == lock and again.digest == lock.digest
    assert read_vm_lock(tmp_path / "none.vm.lock") is None
    path.write_text("{}")
    with pytest.raises(LockError, match="malformed VM lock"):
        read_vm_lock(path)


def test_packages_digest_ignores_order() -> None:
    assert packages_digest({"a": "1", "b": "2"}) == packages_digest({"b": "2", "a": "1"})


def test_disk_size_has_headroom_and_a_floor() -> None:
    assert disk_size(10 << 20) == MIN_SIZE
    big = disk_size(3 << 30)
    assert big >= (3 << 30) + (1 << 30) and big % (256 << 20) == 0
