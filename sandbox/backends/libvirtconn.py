"""libvirt errors: every libvirtError becomes one BackendError with a hint, here and nowhere else."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import libvirt

from sandbox.backends.base import BackendError

# libvirt error codes → (what it means, how to fix it); everything else keeps libvirt's message
_HINTS: dict[str, tuple[str, str]] = {
    "VIR_ERR_NO_CONNECT": ("cannot connect to libvirtd", "start it: `libvirtd -d` (scripts/backends.sh)"),
    "VIR_ERR_AUTH_FAILED": ("libvirt refused the connection", "run sandbox as root, or check polkit"),
    "VIR_ERR_AUTH_CANCELLED": ("libvirt refused the connection", "run sandbox as root, or check polkit"),
    "VIR_ERR_OPERATION_DENIED": ("libvirt denied the operation", "run sandbox as root"),
    "VIR_ERR_DOM_EXIST": ("a domain of that name exists", "`sandbox gc` removes leftovers"),
    "VIR_ERR_AGENT_UNRESPONSIVE": (
        "the guest agent does not answer",
        "the VM may still be booting, or qemu-guest-agent failed: see `sandbox logs`",
    ),
    "VIR_ERR_NO_DOMAIN": ("no such domain", "`sandbox ls` shows what exists"),
}


def translate(e: Exception, what: str) -> BackendError:
    """The one place where a libvirtError becomes a BackendError with a hint."""
    code = e.get_error_code() if isinstance(e, libvirt.libvirtError) else None
    message = (e.get_error_message() if isinstance(e, libvirt.libvirtError) else None) or str(e)
    for name, (meaning, hint) in _HINTS.items():
        if code is not None and code == getattr(libvirt, name, None):
            return BackendError(f"{what}: {meaning} ({message})", hint=hint)
    if "Failed to connect socket" in message:
        return BackendError(
            f"{what}: cannot connect to libvirtd ({message})", hint=_HINTS["VIR_ERR_NO_CONNECT"][1]
        )
    if "Permission denied" in message:
        return BackendError(f"{what}: permission denied ({message})", hint="run sandbox as root")
    return BackendError(f"{what}: {message}", hint="see libvirtd's log; `virsh list --all` shows the domains")


@contextlib.contextmanager
def _calls(what: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as e:
        raise translate(e, what) from e
