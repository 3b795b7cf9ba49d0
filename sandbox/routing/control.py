"""The client of an env router's control socket (templates/control.j2): set the routed backends of
the env's Lua balancer and the env's mode (maintenance, read-only: templates/modes.j2) without a
reload, and read each peer's requests in flight.

The socket lives in `PREFIX/control/` (or `/run/sandbox/ctl/` when that path is too long for a unix
socket: render.control_socket), a directory of root's with mode 0700: nginx's master (root)
binds it, so only root reaches it; the workers only inherit the listening socket.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.routing.nginx import RouterError
from sandbox.routing.render import mode_lines

_BACKEND = re.compile(r"^(?:(?P<v4>[0-9.]+)|\[(?P<v6>[0-9A-Fa-f:.]+)\]):(?P<port>[0-9]{1,5})$")


def check_backend(b: str) -> str:
    """`b` when it is ADDR:PORT (an IPv4 address or a bracketed IPv6 one, port 1-65535); else RouterError."""
    m = _BACKEND.match(b)
    ok = m is not None and 1 <= int(m["port"]) <= 65535
    if ok and m is not None:
        try:
            if m["v4"]:
                ipaddress.IPv4Address(m["v4"])
            else:
                ipaddress.IPv6Address(m["v6"])
        except ValueError:
            ok = False
    if not ok:
        raise RouterError(f"not a backend address: {b[:80]!r}", hint="a backend is IPV4:PORT or [IPV6]:PORT")
    return b


def check_mode(maintenance: Sequence[str] | None, readonly: bool) -> list[str]:
    """The `PUT /mode` lines of a mode (render.mode_lines), or RouterError for a value that is not
    an address/CIDR (netvalues.network), more than 256 of them, or a readonly that is not a bool."""
    try:
        return mode_lines(maintenance, readonly)
    except ValueError as e:
        raise RouterError(
            f"not a router mode: {e}",
            hint="the maintenance allowlist takes addresses and CIDRs (10.0.0.5, 10.0.0.0/8), at most 256",
        ) from None


@dataclass(frozen=True)
class BalancerState:
    """What the env's balancer serves now: the routed backends and each peer's requests in flight."""

    routed: tuple[str, ...]
    active: dict[str, int] = field(default_factory=dict)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except OSError:
            s.close()
            raise
        self.sock = s


class ControlSocket:
    def __init__(self, path: Path, env: str) -> None:
        self.path = path
        self.env = env

    def prepare(self) -> None:
        """The socket's directory: root's, mode 0700 (made or fixed); a stale socket file removed."""
        d = self.path.parent
        d.mkdir(parents=True, exist_ok=True)
        st = os.lstat(d)
        if not os.path.isdir(d) or os.path.islink(d):
            raise RouterError(f"{d} is not a directory", hint="remove it; sandbox makes it again")
        if st.st_uid != os.getuid():
            os.chown(d, os.getuid(), os.getgid())
        os.chmod(d, 0o700)

    def remove_stale(self) -> None:
        """Before nginx binds the socket anew (nginx leaves it behind when it is killed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _request(self, method: str, path: str, body: bytes | None, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            conn = _UnixConnection(self.path, timeout=max(0.5, min(5.0, timeout)))
            try:
                conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
                r = conn.getresponse()
                text = r.read().decode(errors="replace")
                status = r.status
                break
            except (ConnectionRefusedError, FileNotFoundError) as e:
                if time.monotonic() >= deadline:  # not bound yet (nginx starting) or no such router
                    raise RouterError(
                        f"the control socket of router {self.env} does not answer: {e}",
                        hint=f"is its nginx running? ({self.path})",
                    ) from e
                time.sleep(0.02)
            except OSError as e:
                raise RouterError(
                    f"the control socket of router {self.env} failed: {e}", hint=str(self.path)
                ) from e
            finally:
                conn.close()
        if status != 200:
            what = path.lstrip("/")
            raise RouterError(
                f"router {self.env} refused the {what}: {status} {text.strip()[:200]}",
                hint=f"the router keeps its previous {what}",
            )
        return text

    def _call(self, method: str, body: bytes | None, timeout: float) -> BalancerState:
        text = self._request(method, "/backends", body, timeout)
        routed: list[str] = []
        active: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "routed":
                routed.append(parts[1])
            elif len(parts) == 3 and parts[0] == "active":
                active[parts[1]] = int(parts[2])
        return BalancerState(tuple(routed), active)

    def set_backends(self, backends: Sequence[str], timeout: float = 5.0) -> BalancerState:
        """Route exactly `backends` from the next request on; returns what the balancer then serves."""
        body = "".join(check_backend(b) + "\n" for b in backends).encode()
        state = self._call("PUT", body, timeout)
        if state.routed != tuple(backends):
            raise RouterError(
                f"router {self.env} serves {list(state.routed)} after being given {list(backends)}",
                hint=f"see {self.path.parent.parent}/logs/error.log",
            )
        return state

    def set_mode(self, maintenance: Sequence[str] | None, readonly: bool, timeout: float = 5.0) -> None:
        """Switch the env's maintenance page (None: off; else the addresses/CIDRs that still get
        through) and read-only mode, from the next request on; checks that the router then serves it."""
        lines = check_mode(maintenance, readonly)
        text = self._request("PUT", "/mode", "".join(line + "\n" for line in lines).encode(), timeout)
        if text.splitlines() != lines:
            raise RouterError(
                f"router {self.env} serves the mode {text.splitlines()} after being given {lines}",
                hint=f"see {self.path.parent.parent}/logs/error.log",
            )

    def mode(self, timeout: float = 5.0) -> list[str]:
        """The mode the router serves now, as `PUT /mode` lines (["unset"] before it was ever set)."""
        return self._request("GET", "/mode", None, timeout).splitlines()

    def serve(
        self, backends: Sequence[str], maintenance: Sequence[str] | None, readonly: bool, timeout: float = 5.0
    ) -> None:
        """Set the backends and the mode (what `apply` does after the file is written). A mode that
        restricts is switched before the backends change, one that lets everyone through after."""
        check_mode(maintenance, readonly)  # before anything changes
        if maintenance is not None or readonly:
            self.set_mode(maintenance, readonly, timeout)
            self.set_backends(backends, timeout)
        else:
            self.set_backends(backends, timeout)
            self.set_mode(maintenance, readonly, timeout)

    def state(self, timeout: float = 5.0) -> BalancerState:
        return self._call("GET", None, timeout)

    def drain(self, backend: str, timeout: float) -> bool:
        """Wait until `backend` has no request in flight (it must no longer be routed); False on timeout.

        A worker that read the backend list just before the update may count its request a moment
        later, so the count must read 0 twice, 50 ms apart.
        """
        deadline = time.monotonic() + timeout
        zero_since: float | None = None
        while True:
            st = self.state(timeout=max(0.5, deadline - time.monotonic()))
            now = time.monotonic()
            if st.active.get(backend, 0) <= 0 and backend not in st.routed:
                zero_since = zero_since if zero_since is not None else now
                if now - zero_since >= 0.05:
                    return True
            else:
                zero_since = None
            if now >= deadline:
                return False
            time.sleep(0.02)
