"""What both router drivers share: nginx's binary, a master process whose workers a reload
replaces, and the drain of old workers."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.errors import SandboxError

if TYPE_CHECKING:
    from sandbox.routing.control import ControlSocket


class RouterError(SandboxError):
    """nginx refused the config or could not start."""


def port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def abort_connections(backends: Sequence[str]) -> None:
    """Abort this machine's TCP connections to `backends` ("ADDR:PORT", checked): for backends on a
    host that died. nginx then sees its requests in flight to them fail at once and retries the
    idempotent ones on another backend (at once, not after proxy_read_timeout); a POST in flight
    fails either way. Needs the kernel's socket destroy (INET_DIAG_DESTROY); without it, nothing."""
    for b in backends:
        addr, _, port = b.rpartition(":")
        ipaddress.IPv4Address(addr)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not ADDR:PORT: {b!r}")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["ss", "-K", "dst", f"{addr}:{int(port)}"], capture_output=True, timeout=10, check=False
            )


class NginxMaster:
    """What both kinds share: a master process whose workers are replaced by a reload."""

    env: str

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def error_log(self) -> Path | str:
        raise NotImplementedError

    def signal_reload(self, master: int) -> None:
        """HUP the master and wait until the new config serves."""
        before = set(self._workers(master, shutting_down=False))
        os.kill(master, signal.SIGHUP)
        self._wait_reloaded(master, before)

    def _wait_reloaded(self, master: int, before: set[int], timeout: float = 10.0) -> None:
        """Wait until the new config serves: new workers up, every old one shutting down.

        Until then an old worker may still accept connections with the old config, so
        the caller must not, say, stop an instance it has just taken out.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = set(self._workers(master, shutting_down=False))
            if live and not (live & before):
                return
            time.sleep(0.01)
        raise RouterError(
            f"nginx of {self.env} did not apply its new config within {timeout:.0f}s",
            hint=f"see {self.error_log}",
        )

    def draining_workers(self) -> list[int]:
        """Pids of the old workers still finishing requests after a reload."""
        master = self.pid
        return [] if master is None else self._workers(master, shutting_down=True)

    @staticmethod
    def _workers(master: int, shutting_down: bool) -> list[int]:
        """The master's worker processes, old (shutting down) or current.

        Polled every few ms during a reload and a drain, so it reads the master's own
        children list rather than every process in /proc (a busy host has thousands).
        """
        try:
            children = [int(x) for x in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
        except (OSError, ValueError):
            children = []
        out = []
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"worker process" in cmdline and (b"shutting down" in cmdline) == shutting_down:
                out.append(pid)
        return out

    def control(self) -> ControlSocket:
        raise NotImplementedError

    def abort(self, backends: Sequence[str]) -> None:
        """Abort this nginx's connections to `backends` on a host that died (abort_connections)."""
        abort_connections(backends)

    def drain(self, timeout: float, backend: str | None = None) -> bool:
        """Wait until `backend` (unrouted) has no request in flight and no old worker (of a reload) is
        left; False if `timeout` passed."""
        deadline = time.monotonic() + timeout
        while self.draining_workers():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        if backend is None or self.pid is None:
            return True
        return self.control().drain(backend, max(0.0, deadline - time.monotonic()))


# the values a rendered config starts its shared dict with: the routed backends (balancer.j2) and the
# mode (modes.j2); the control socket sets both, so a config that differs only there needs no reload
_DYNAMIC = re.compile(r'dict:add\("(?:backends|mode)", "[^"\n]*"\)')


def same_but_dynamic(a: str | None, b: str | None) -> bool:
    """Whether two rendered configs differ at most in the backends and the mode written as the shared
    dict's initial values (which serve only until the control socket sets them, after a restart of
    nginx): such a change needs no check and no reload."""
    if a is None or b is None:
        return a is b
    return _DYNAMIC.sub("", a) == _DYNAMIC.sub("", b)


def is_our_nginx(pid: int, prefix: Path | None = None, binary: str | None = None) -> bool:
    """Whether `pid` is an nginx master and, with `prefix`, the one started with `-p PREFIX`.

    A pid file outlives its process (a reboot, a crash): before any signal to a pid read from
    one, the process must be nginx (its /proc/PID/exe is the nginx binary) and, for a router of
    our own, carry our prefix on its command line. Otherwise it is a stranger's process.
    """
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")  # an upgraded nginx
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    try:
        want = os.path.realpath(binary or nginx_binary())
    except RouterError:
        return False
    if os.path.realpath(exe) != want:
        return False
    if prefix is None:
        return True
    # nginx rewrites its argv to "nginx: master process /usr/sbin/nginx -p PREFIX -c CONF"
    words = cmdline.replace(b"\0", b" ").decode(errors="replace").split()
    return any(a == "-p" and b.rstrip("/") == str(prefix).rstrip("/") for a, b in itertools.pairwise(words))


def nginx_binary() -> str:
    path = shutil.which("nginx")
    if path is None:
        raise RouterError("nginx is not installed", hint="apt-get install nginx-light")
    return path
