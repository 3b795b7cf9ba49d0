"""The lxc backend's one place where host tools (lxc-*, cp, ip) are run and their failures translated.

lxd, docker and libvirt map their SDK's errors to a BackendError in one place; for lxc the
"SDK" is the lxc-* tools, so every call goes through `lxc_tool` (or runs inside `lxc_errors`),
and a failing tool reaches the user as one BackendError that names the instance, the tool and
what it printed, with a hint, never as a traceback of CalledProcessError or OSError.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sandbox.backends.base import BackendError

#: what to try when a tool fails, by tool (the default: leftovers of a crash)
HINTS = {
    "lxc-start": "`lxc-checkconfig` shows missing kernel features",
    "lxc-attach": "is the instance running? `sandbox status` shows it",
    "lxc-freeze": "is the instance running? `sandbox status` shows it",
    "lxc-unfreeze": "`sandbox stop` then `sandbox start` recovers a frozen instance",
    "cp": "is the disk full? `df -h` on the runtime dir",
}
DEFAULT_HINT = "`sandbox gc` removes leftovers of a crash"
#: the Debian package of each tool
PACKAGES = {"cp": "coreutils", "ip": "iproute2"}


def _hint(tool: str, log: Path | None) -> str:
    hint = HINTS.get(tool, DEFAULT_HINT)
    if log is not None and log.exists():
        hint += f"; the log: {log}"
    return hint


def _stderr(text: str | bytes | None, lines: int = 12) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _log_errors(log: Path, lines: int = 12) -> str:
    """The last ERROR lines of an lxc log file (what lxc-start itself says on stderr is little)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([ln for ln in text.splitlines() if " ERROR " in ln][-lines:])


def _tool(argv: object) -> str:
    if isinstance(argv, (list, tuple)) and argv:
        return Path(str(argv[0])).name
    return Path(str(argv)).name if argv else "the tool"


@contextmanager
def lxc_errors(instance: str, what: str, log: Path | None = None) -> Iterator[None]:
    """Inside the block, every failed tool (and OSError) becomes a BackendError about `instance`.

    `what` says what was being done ("starting", "unpacking image 1a2b3c"), for the message.
    """
    try:
        yield
    except BackendError:
        raise
    except subprocess.CalledProcessError as e:
        tool = _tool(e.cmd)
        err = _stderr(e.stderr) or _stderr(e.stdout) or f"exit status {e.returncode}"
        if tool == "lxc-start" and log is not None:
            err = f"{err}\n{_log_errors(log)}".rstrip()
        raise BackendError(f"{tool} failed {what} {instance}: {err}", hint=_hint(tool, log)) from e
    except subprocess.TimeoutExpired as e:
        tool = _tool(e.cmd)
        raise BackendError(
            f"{tool} timed out after {e.timeout:g}s {what} {instance}", hint=_hint(tool, log)
        ) from e
    except FileNotFoundError as e:
        if e.filename is not None and "/" not in str(e.filename):  # the tool itself is missing
            tool = str(e.filename)
            pkg = PACKAGES.get(tool, "lxc")
            raise BackendError(
                f"{tool} is not installed (needed {what} {instance})", hint=f"apt-get install {pkg}"
            ) from e
        raise BackendError(f"{what} {instance}: {e.filename}: {e.strerror}", hint=DEFAULT_HINT) from e
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        hint = HINTS["cp"] if e.errno in (errno.ENOSPC, errno.EDQUOT) else DEFAULT_HINT
        raise BackendError(f"{what} {instance}: {where}{e.strerror or e}", hint=hint) from e


def lxc_tool(
    argv: Sequence[str],
    *,
    instance: str,
    what: str,
    log: Path | None = None,
    timeout: float | None = 60,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a host tool for `instance`; with `check`, a non-zero exit is a BackendError (see lxc_errors)."""
    with lxc_errors(instance, what, log):
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
        if check and p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, list(argv), p.stdout, p.stderr)
    return p


TOOLS = ("lxc-start", "lxc-stop", "lxc-attach", "lxc-info", "lxc-freeze", "lxc-unfreeze")


def host_prerequisites() -> None:
    """What the lxc backend needs of this host before anything else: the tools, root, user
    namespaces and overlayfs (each its own error with what to do)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BackendError(f"LXC is not installed (missing {', '.join(missing)})", hint="apt-get install lxc")
    if os.geteuid() != 0:
        raise BackendError(
            "the lxc backend needs root (it creates a bridge and overlay mounts)",
            hint="run sandbox as root (sudo)",
        )
    if not Path("/proc/self/ns/user").exists():
        raise BackendError(
            "the kernel has no user namespaces", hint="enable CONFIG_USER_NS (see `lxc-checkconfig`)"
        )
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            raise BackendError("the kernel has no overlayfs", hint="modprobe overlay")


def cgroup_v2() -> bool:
    return Path("/sys/fs/cgroup/cgroup.controllers").exists()
