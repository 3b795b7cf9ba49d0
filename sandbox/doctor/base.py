"""The doctor's result type and its view of the host (every path under an injectable root)."""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "warn", "fail"]
#: the backends, the default first; `all` tags what every backend needs (build, router, ids, disk)
BACKENDS = ("lxc", "lxd", "docker", "libvirt")
DEFAULT_BACKEND = "lxc"
#: root's PATH has the sbin dirs (nginx is in /usr/sbin); a user's often has not
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
SOCKET_TIMEOUT = 0.25


@dataclass(frozen=True)
class Check:
    """One requirement: `found` says what the host has; a problem carries `fix` (what to do or
    install) and, where one command does it, `command` (exact, to copy)."""

    name: str
    backend: str  # one of BACKENDS, or "all"
    status: Status
    found: str
    fix: str | None = None
    command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _which(tool: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN])
    return shutil.which(tool, path=path)


def _import(module: str) -> str:
    """The module's version (or "installed"); raises ImportError (or anything a broken SDK raises)."""
    mod = importlib.import_module(module)
    return str(getattr(mod, "__version__", None) or getattr(mod, "version", None) or "installed")


@dataclass
class Host:
    """What the checks read: files under `root` (tests give a fake tree), tools via `which`,
    SDKs via `importer`, the effective uid."""

    root: Path = Path("/")
    which: Callable[[str], str | None] = _which
    importer: Callable[[str], str] = _import
    euid: int = field(default_factory=os.geteuid)
    release: str = field(default_factory=lambda: os.uname().release)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def read(self, absolute: str) -> str | None:
        """The file's text; None when it does not exist or cannot be read."""
        try:
            return self.path(absolute).read_text(errors="replace")
        except OSError:
            return None

    def sysctl(self, key: str) -> int | None:
        """A numeric sysctl (`fs.inotify.max_user_watches`) from /proc/sys; None if absent."""
        text = self.read("/proc/sys/" + key.replace(".", "/"))
        try:
            return int(text.split()[0]) if text else None
        except ValueError:
            return None

    def ask(self, sock: str, request: bytes | None) -> str:
        """Connect to a unix socket (and send `request`, returning the first line of the answer).
        Raises OSError (refused, absent, permission, timeout)."""
        import socket  # not at the top: the CLI imports this module for BACKENDS at every start

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(SOCKET_TIMEOUT)
            s.connect(str(self.path(sock)))
            if request is None:
                return "connected"
            s.sendall(request)
            data = b""
            while b"\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def problem(
    name: str,
    backend: str,
    found: str,
    fix: str,
    command: str | None = None,
    *,
    required: bool,
    soft: bool = False,
) -> Check:
    """A check that found a problem: fail when its backend is required and it is not `soft`."""
    return Check(name, backend, "fail" if required and not soft else "warn", found, fix, command)


def ok(name: str, backend: str, found: str) -> Check:
    return Check(name, backend, "ok", found)


def apt(*packages: str) -> str:
    return "apt-get install -y " + " ".join(packages)


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"
