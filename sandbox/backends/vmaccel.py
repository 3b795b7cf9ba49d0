"""KVM or TCG: can this host's KVM actually boot a Linux kernel?

`/dev/kvm` may exist and still be useless: under nested virtualization the
kernel can hang silently (and `-cpu host` aborts). So the answer comes from a
real probe: qemu with `-accel kvm` boots the VM kernel without a root disk,
which panics and (with `panic=-1 -no-reboot`) exits within seconds when KVM
works; a hang past the timeout means it does not, and sandbox falls back to
TCG (libvirt domain type `qemu`). The answer is kept per host boot.
`SANDBOX_LIBVIRT_ACCEL=kvm|tcg` skips the probe.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from sandbox.backends.base import BackendError

PROBE_TIMEOUT = 25.0


def kvm_device_usable(dev: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def kvm_boots(kernel: Path, timeout: float = PROBE_TIMEOUT) -> bool:
    """Boot `kernel` under KVM with no root disk; True if it reached its panic in time."""
    with tempfile.TemporaryDirectory(prefix="sbx-kvm-probe-") as tmp:
        log = Path(tmp) / "serial.log"
        argv = [
            "qemu-system-x86_64", "-accel", "kvm", "-cpu", "qemu64", "-m", "256", "-nodefaults",
            "-display", "none", "-no-reboot", "-serial", f"file:{log}", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 root=/dev/sbx-none",
        ]  # fmt: skip
        try:
            p = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return False
        except FileNotFoundError as e:
            raise BackendError("qemu is not installed", hint="apt-get install qemu-system-x86") from e
        text = log.read_text(errors="replace") if log.exists() else ""
        return p.returncode == 0 and ("Kernel panic" in text or "VFS:" in text)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def choose_accel(
    cache: Path,
    kernel: Path,
    *,
    env: Mapping[str, str] = os.environ,
    device_ok: Callable[[], bool] = kvm_device_usable,
    probe: Callable[[Path], bool] = kvm_boots,
    boot: Callable[[], str] = boot_id,
) -> tuple[str, str]:
    """("kvm" | "tcg", why): forced by SANDBOX_LIBVIRT_ACCEL, remembered for this boot, or probed."""
    forced = env.get("SANDBOX_LIBVIRT_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced, "SANDBOX_LIBVIRT_ACCEL"
    if forced:
        raise BackendError(
            f"SANDBOX_LIBVIRT_ACCEL={forced!r} is not kvm or tcg", hint="unset it to let sandbox probe"
        )
    if not device_ok():
        return "tcg", "/dev/kvm is missing or not accessible"
    bid = boot()
    try:
        doc = json.loads(cache.read_text())
        if doc.get("boot_id") == bid and doc.get("accel") in ("kvm", "tcg"):
            return str(doc["accel"]), str(doc.get("why", "probed"))
    except (OSError, ValueError, AttributeError):
        pass
    if probe(kernel):
        accel, why = "kvm", "KVM booted a test kernel"
    else:
        accel, why = "tcg", "KVM cannot boot a kernel here (nested?): using TCG"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"boot_id": bid, "accel": accel, "why": why}))
    return accel, why
